//! The API server on the unix socket, and the metrics endpoint on TCP.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use super::Daemon;
use crate::api::ErrorBody;
use crate::endpoints::{AttachRequest, CheckExpected};
use crate::error::{Error, ErrorKind, Result};
use crate::ports::PortsRequest;

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

/// Serves the API until `shutdown` turns true.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let daemon = daemon.clone();
                        async move { Ok::<_, Infallible>(handle(&daemon, req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!("API connection: {e}");
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
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
fn status_of(kind: ErrorKind) -> StatusCode {
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

fn error(e: &Error) -> Answer {
    let kind = e.kind();
    json(status_of(kind), &ErrorBody::new(kind, e.to_string()))
}

fn answer<T: Serialize>(result: Result<T>) -> Answer {
    match result {
        Ok(body) => json(StatusCode::OK, &body),
        Err(e) => error(&e),
    }
}

async fn handle(daemon: &Daemon, req: Request<Incoming>) -> Answer {
    let network = daemon.network();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // `?wait=1` on DELETE: answer only once the veth pair is gone and the
    // addresses are released, not as soon as the container is cut off.
    let wait = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "wait=1" || kv == "wait=true"));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(&Error::InvalidInput(format!(
                "reading the request body: {e}"
            )))
        }
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    tracing::debug!(%method, %path, "API request");
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => answer(daemon.status()),
        (&Method::GET, ["v1", "containers"]) => answer(network.list()),
        (&Method::POST, ["v1", "containers"]) => match parse::<AttachRequest>(&body) {
            Ok(req) => answer(daemon.attach(req).await),
            Err(e) => error(&e),
        },
        (&Method::GET, ["v1", "containers", key]) => match network.get(key) {
            Ok(Some(result)) => json(StatusCode::OK, &result),
            Ok(None) => error(&Error::NotFound(format!(
                "container {key} is not attached"
            ))),
            Err(e) => error(&e),
        },
        (&Method::GET, ["v1", "containers", key, "check"]) => answer(
            network
                .check(key)
                .await
                .map(|()| serde_json::json!({"ok": true})),
        ),
        (&Method::POST, ["v1", "containers", key, "check"]) => match parse::<CheckExpected>(&body) {
            Ok(expected) => answer(
                network
                    .check_expecting(key, &expected)
                    .await
                    .map(|()| serde_json::json!({"ok": true})),
            ),
            Err(e) => error(&e),
        },
        (&Method::DELETE, ["v1", "containers", key]) => {
            let report = daemon.detach(key).await;
            if wait && report.is_ok() {
                daemon.reaped().await;
            }
            answer(report)
        }
        (&Method::POST, ["v1", "containers", key, "ports"]) => match parse::<PortsRequest>(&body) {
            Ok(req) => answer(daemon.publish(key, &req.ports).await),
            Err(e) => error(&e),
        },
        (&Method::DELETE, ["v1", "containers", key, "ports"]) => match parse::<PortsRequest>(&body)
        {
            Ok(req) => answer(daemon.unpublish(key, &req.ports).await),
            Err(e) => error(&e),
        },
        (&Method::POST, ["v1", "reconcile"]) => answer(daemon.reconcile().await),
        (&Method::GET, ["v1", "names"]) => match daemon.names() {
            Some(names) => json(StatusCode::OK, &names),
            None => error(&Error::NotFound(
                "names are off; enable them with names = true in netd.toml (or --names true)"
                    .into(),
            )),
        },
        (&Method::GET, ["v1", "peers"]) => match daemon.peers() {
            Some(peers) => json(StatusCode::OK, &peers),
            None => error(&Error::NotFound(
                "the overlay is off; enable it with [overlay] enabled = true in netd.toml (or --overlay true)".into(),
            )),
        },
        _ => error(&Error::NotFound(format!(
            "no such API call: {method} {path}"
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidInput(format!("bad request body: {e}")))
}
