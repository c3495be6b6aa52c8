//! The API server on the unix socket, and the metrics endpoint on TCP.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use super::route::{route, Call, ClusterCall};
use super::Daemon;
use crate::api::ErrorBody;
use crate::config::ApiLimits;
use crate::error::{Error, ErrorKind, Result};

type Answer = Response<Full<Bytes>>;

/// Binds the socket: its directory is created 0700 when missing, a stale
/// socket file left by a dead netd is replaced, a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let io = |what: &str, e: std::io::Error| {
        Error::Setup(format!(
            "{what} {}: {e} — check --socket / WEFT_SOCKET",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create the directory of", e))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Conflict(format!(
                "another netd is already serving on {}; stop it or choose another --socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| io("remove the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("set mode 0600 on", e))?;
    Ok(listener)
}

/// Serves the API until `shutdown` turns true, within `daemon`'s `[api]`
/// limits: at most `max_connections` at once (the next gets 503 and is
/// closed), headers within `header_timeout` (else closed), bodies of at most
/// `max_body_bytes` (else 413) within `body_timeout` (else 408).
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = daemon.network().config().api.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refuse_connection(stream, limits.max_connections);
                    continue;
                };
                let daemon = daemon.clone();
                let header_timeout = limits.header_timeout;
                tokio::spawn(async move {
                    let _slot = slot;
                    let service = hyper::service::service_fn(move |req| {
                        let daemon = daemon.clone();
                        async move { Ok::<_, Infallible>(handle(daemon, req).await) }
                    });
                    match hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .without_shutdown()
                        .await
                    {
                        Ok(parts) => linger_close(parts.io.into_inner()).await,
                        Err(e) => tracing::debug!("API connection: {e}"),
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Closes a connection whose client may still be sending (a body refused
/// with 413 is left unread): the write side first, so the client reads the
/// answer and then its end, then what still arrives is read and dropped for
/// a moment. Closing a unix socket with unread data instead makes the
/// client's next read fail with ECONNRESET, before it sees the answer.
async fn linger_close(mut stream: UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = vec![0u8; 64 * 1024];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    // Bounded: a client that never stops sending is cut off after this.
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long [`linger_close`] reads what a client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// One connection too many: a 503 if the socket takes it at once, then closed.
fn refuse_connection(stream: UnixStream, max: usize) {
    tracing::debug!(max, "API: connection refused, {max} already open");
    let body = serde_json::to_string(&ErrorBody::new(
        ErrorKind::Busy,
        format!("netd already serves {max} API connections ([api] max_connections); try again"),
    ))
    .expect("answers serialize");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Never waits: a client that does not read gets nothing but the close.
    let _ = stream.try_write(answer.as_bytes());
}

/// Serves `GET /metrics` on TCP until `shutdown` turns true.
pub async fn serve_metrics(
    daemon: Arc<Daemon>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let daemon = daemon.clone();
                        async move {
                            let answer = if req.uri().path() == "/metrics" {
                                match daemon.render_metrics() {
                                    Ok(body) => text(StatusCode::OK, body),
                                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                                }
                            } else {
                                text(StatusCode::NOT_FOUND, "only /metrics is served here\n".into())
                            };
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn text(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Answer {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("answers serialize"),
        )))
        .expect("valid response")
}

/// The status a kind of error answers with.
pub(super) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Busy => StatusCode::CONFLICT,
        ErrorKind::Unreachable => StatusCode::BAD_GATEWAY,
        ErrorKind::Kernel | ErrorKind::Storage | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

pub(super) fn error(e: &Error) -> Answer {
    let kind = e.kind();
    json(status_of(kind), &ErrorBody::new(kind, e.to_string()))
}

fn answer<T: Serialize>(result: Result<T>) -> Answer {
    match result {
        Ok(body) => json(StatusCode::OK, &body),
        Err(e) => error(&e),
    }
}

/// An answer after which the connection closes: what is left of the
/// request is not read.
fn closing(mut answer: Answer) -> Answer {
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
}

fn too_large(max: usize) -> Answer {
    closing(json(
        StatusCode::PAYLOAD_TOO_LARGE,
        &ErrorBody::new(
            ErrorKind::InvalidInput,
            format!("the request body is larger than {max} bytes ([api] max_body_bytes)"),
        ),
    ))
}

/// Reads the body within the limits, or the answer that refuses it.
async fn read_body(body: Incoming, limits: &ApiLimits) -> std::result::Result<Bytes, Answer> {
    let limited = Limited::new(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(limits.max_body_bytes))
        }
        Ok(Err(e)) => Err(closing(error(&Error::InvalidInput(format!(
            "reading the request body: {e}"
        ))))),
        Err(_) => Err(closing(json(
            StatusCode::REQUEST_TIMEOUT,
            &ErrorBody::new(
                ErrorKind::InvalidInput,
                format!(
                    "the request body did not arrive within {} ms ([api] body_timeout_ms)",
                    limits.body_timeout.as_millis()
                ),
            ),
        ))),
    }
}

async fn handle(daemon: Arc<Daemon>, req: Request<Incoming>) -> Answer {
    let limits = &daemon.network().config().api;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        return too_large(limits.max_body_bytes);
    }
    let body = match read_body(req.into_body(), limits).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    tracing::debug!(%method, %path, "API request");
    match route(&method, &path, query.as_deref(), &body) {
        Ok(call) => dispatch(daemon, call).await,
        Err(e) => error(&e),
    }
}

/// Runs an operation that changes the host as a task of its own: a client
/// that hangs up drops the request's future, and that must not cancel the
/// operation half-way. Once netd has taken it, it finishes or rolls back.
async fn owned<T: Send + 'static>(
    daemon: &Daemon,
    operation: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let counted = daemon.operation();
    tokio::spawn(async move {
        let _counted = counted;
        operation.await
    })
    .await
    .unwrap_or_else(|e| {
        Err(Error::Setup(format!(
            "the operation's task ended abnormally: {e}"
        )))
    })
}

async fn dispatch(daemon: Arc<Daemon>, call: Call) -> Answer {
    let network = daemon.network();
    let d = daemon.clone();
    match call {
        Call::Status => answer(daemon.status()),
        Call::List => answer(network.list()),
        Call::Attach(req) => answer(owned(&daemon, async move { d.attach(*req).await }).await),
        Call::Get(key) => match network.get(&key) {
            Ok(Some(result)) => json(StatusCode::OK, &result),
            Ok(None) => error(&Error::NotFound(format!(
                "container {key} is not attached"
            ))),
            Err(e) => error(&e),
        },
        Call::Check(key) => answer(
            network
                .check(&key)
                .await
                .map(|()| serde_json::json!({"ok": true})),
        ),
        Call::CheckExpecting { key, expected } => answer(
            network
                .check_expecting(&key, &expected)
                .await
                .map(|()| serde_json::json!({"ok": true})),
        ),
        Call::Detach { key, wait } => answer(
            owned(&daemon, async move {
                let report = d.detach(&key).await;
                if wait && report.is_ok() {
                    d.reaped().await;
                }
                report
            })
            .await,
        ),
        Call::Publish { key, ports } => {
            answer(owned(&daemon, async move { d.publish(&key, &ports).await }).await)
        }
        Call::Unpublish { key, ports } => {
            answer(owned(&daemon, async move { d.unpublish(&key, &ports).await }).await)
        }
        Call::Reconcile => answer(owned(&daemon, async move { d.reconcile().await }).await),
        Call::Names => match daemon.names() {
            Some(names) => json(StatusCode::OK, &names),
            None => error(&Error::NotFound(
                "names are off; enable them with names = true in netd.toml (or --names true)"
                    .into(),
            )),
        },
        Call::Cluster(call) => cluster_call(&daemon, call).await,
        Call::Peers => match daemon.peers() {
            Some(peers) => json(StatusCode::OK, &peers),
            None => error(&Error::NotFound(
                "the overlay is off; enable it with [overlay] enabled = true in netd.toml (or --overlay true)".into(),
            )),
        },
    }
}

/// `/v1/cluster/{status,hosts,leave,forget}`: the cluster part's calls.
async fn cluster_call(daemon: &Daemon, call: ClusterCall) -> Answer {
    let Some(cluster) = daemon.cluster() else {
        return error(&Error::NotFound(
            "this netd runs without a cluster store; start it with --store etcd://HOST:2379".into(),
        ));
    };
    match call {
        ClusterCall::Status => json(StatusCode::OK, &cluster.status()),
        ClusterCall::Hosts => json(StatusCode::OK, &cluster.hosts()),
        ClusterCall::Leave => answer(cluster.leave().await),
        ClusterCall::Forget(req) => answer(cluster.forget(&req.host, req.force).await),
        ClusterCall::RotateKey => match daemon.overlay() {
            Some(overlay) => answer(cluster.rotate_key(overlay).await),
            None => error(&Error::NotFound(
                "this netd runs without an overlay device: no key to rotate".into(),
            )),
        },
    }
}
