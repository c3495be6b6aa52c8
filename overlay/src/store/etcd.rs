//! The etcd backend, on the `etcd-client` crate (v3 API over gRPC; etcd 3.4
//! serves everything used here). Connects lazily and again after a transport
//! error, so a store that is down at start or restarts later is picked up by
//! the next call.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client as etcd;
use tokio::sync::Mutex;

use super::{
    ttl_seconds, Compare, KeyValue, Lease, LeaseId, Listing, Operation, Revision, Store,
    StoreError, Txn, TxnOutcome, Watch, WatchEvent,
};

/// TLS client settings: the CA that signed the servers' certificates, and
/// optionally this client's certificate and key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM), for servers that require one.
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM); required with `cert`.
    pub key: Option<PathBuf>,
}

/// How to reach an etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs (`http://198.18.0.9:2379`, `https://…` with TLS); several for a cluster.
    pub endpoints: Vec<String>,
    /// TLS settings; the endpoints then use `https://`.
    pub tls: Option<EtcdTls>,
    /// User name and password, when etcd's authentication is on.
    pub user: Option<(String, String)>,
    /// The bound on each request (and on connecting).
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// Plain endpoints, no TLS or user, 5 s per request.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            tls: None,
            user: None,
            request_timeout: Duration::from_secs(5),
        }
    }

    fn options(&self) -> Result<etcd::ConnectOptions, StoreError> {
        let mut options = etcd::ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            // HTTP/2 pings find a dead connection (a partition) while a watch
            // idles. Not more often than etcd's --grpc-keepalive-min-time (5 s
            // by default): it closes the connection of a client pinging faster.
            .with_keep_alive(Duration::from_secs(10), self.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user, password);
        }
        if let Some(tls) = &self.tls {
            let read = |path: &PathBuf, what: &str| {
                std::fs::read(path).map_err(|e| {
                    StoreError::Config(format!("read the store's {what} {}: {e}", path.display()))
                })
            };
            let mut config = etcd::TlsOptions::new().ca_certificate(etcd::Certificate::from_pem(
                read(&tls.ca, "CA certificate")?,
            ));
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    config = config.identity(etcd::Identity::from_pem(
                        read(cert, "client certificate")?,
                        read(key, "client key")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Config(
                        "a client certificate needs its key and a key its certificate: give both or neither".into(),
                    ))
                }
            }
            options = options.with_tls(config);
        }
        Ok(options)
    }
}

/// A store on etcd.
pub struct EtcdStore {
    config: EtcdConfig,
    label: String,
    client: Mutex<Option<etcd::Client>>,
    /// The open keep-alive stream of the last lease kept alive (usually the only one).
    keeper: Mutex<Option<(etcd::LeaseKeeper, etcd::LeaseKeepAliveStream)>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({})", self.label)
    }
}

impl EtcdStore {
    /// A store on `config`'s endpoints. Checks the configuration (files,
    /// endpoints) now; connects on first use, so etcd may still be down.
    pub fn new(config: EtcdConfig) -> Result<EtcdStore, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint given".into()));
        }
        for endpoint in &config.endpoints {
            let scheme_ok = if config.tls.is_some() {
                endpoint.starts_with("https://")
            } else {
                endpoint.starts_with("http://")
            };
            if !scheme_ok {
                return Err(StoreError::Config(format!(
                    "endpoint {endpoint}: expected {}://host:port",
                    if config.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    }
                )));
            }
        }
        config.options()?;
        Ok(EtcdStore {
            label: config.endpoints.join(","),
            config,
            client: Mutex::new(None),
            keeper: Mutex::new(None),
        })
    }

    /// The endpoints, comma-separated, as errors name them.
    pub fn endpoints(&self) -> &str {
        &self.label
    }

    async fn client(&self, operation: &'static str) -> Result<etcd::Client, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let connect = etcd::Client::connect(&self.config.endpoints, Some(self.config.options()?));
        let client = tokio::time::timeout(self.config.request_timeout, connect)
            .await
            .map_err(|_| self.timed_out(operation))?
            .map_err(|e| self.error(operation, e))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops the connection after a transport error so the next call connects afresh.
    async fn reset(&self, error: &StoreError) {
        if matches!(error, StoreError::Unavailable { .. }) {
            *self.client.lock().await = None;
            // keep_alive holds the keeper while it opens a stream through
            // `call`, which resets on failure: waiting for the lock there
            // would wait for ourselves (and stall every later call). A
            // holder clears a failed stream itself.
            if let Ok(mut keeper) = self.keeper.try_lock() {
                *keeper = None;
            }
        }
    }

    /// Runs one bounded request, resetting the connection when it fails in transport.
    async fn call<T, F, Fut>(&self, operation: &'static str, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(etcd::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd::Error>>,
    {
        let client = self.client(operation).await?;
        let result = match tokio::time::timeout(self.config.request_timeout, request(client)).await
        {
            Ok(result) => result.map_err(|e| self.error(operation, e)),
            Err(_) => Err(self.timed_out(operation)),
        };
        if let Err(e) = &result {
            self.reset(e).await;
        }
        result
    }

    fn timed_out(&self, operation: &'static str) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.label.clone(),
            operation,
            reason: format!("no answer within {:?}", self.config.request_timeout),
        }
    }

    fn error(&self, operation: &'static str, error: etcd::Error) -> StoreError {
        use tonic::Code;
        let unavailable = |reason: String| StoreError::Unavailable {
            endpoints: self.label.clone(),
            operation,
            reason,
        };
        match error {
            etcd::Error::GRpcStatus(status) => match status.code() {
                Code::NotFound if status.message().contains("lease not found") => {
                    StoreError::LeaseNotFound { lease: 0 }
                }
                Code::OutOfRange if status.message().contains("compacted") => {
                    StoreError::Compacted {
                        compact_revision: 0,
                    }
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted => unavailable(with_causes(status.message(), &status)),
                _ => StoreError::Rejected {
                    operation,
                    reason: status.message().to_string(),
                },
            },
            etcd::Error::TransportError(e) => unavailable(with_causes(&e.to_string(), &e)),
            etcd::Error::IoError(e) => unavailable(e.to_string()),
            etcd::Error::WatchError(e) | etcd::Error::LeaseKeepAliveError(e) => unavailable(e),
            other => StoreError::Rejected {
                operation,
                reason: other.to_string(),
            },
        }
    }
}

/// `message` followed by every cause under `error` (tonic hides the useful one deep down).
fn with_causes(message: &str, error: &dyn std::error::Error) -> String {
    let mut text = message.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn key_value(kv: &etcd::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    }
}

fn header_revision(header: Option<&etcd::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

fn compare(compare: Compare) -> etcd::Compare {
    match compare {
        Compare::Absent(key) => etcd::Compare::create_revision(key, etcd::CompareOp::Equal, 0),
        Compare::ModRevision(key, revision) => {
            etcd::Compare::mod_revision(key, etcd::CompareOp::Equal, revision)
        }
        Compare::ValueEquals(key, value) => {
            etcd::Compare::value(key, etcd::CompareOp::Equal, value)
        }
    }
}

fn operation(op: Operation) -> etcd::TxnOp {
    match op {
        Operation::Put { key, value, lease } => etcd::TxnOp::put(
            key,
            value,
            lease.map(|id| etcd::PutOptions::new().with_lease(id)),
        ),
        Operation::Delete(key) => etcd::TxnOp::delete(key, None),
    }
}

impl Store for EtcdStore {
    type Watch = EtcdWatch;

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_string();
        let response = self
            .call("list", |mut c| async move {
                c.get(prefix, Some(etcd::GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let mut entries: Vec<KeyValue> = response.kvs().iter().map(key_value).collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing {
            revision: header_revision(response.header()),
            entries,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        // etcd's "lease not found" does not say which: name the one this transaction uses.
        let lease = txn
            .on_success
            .iter()
            .chain(&txn.on_failure)
            .find_map(|op| match op {
                Operation::Put { lease, .. } => *lease,
                Operation::Delete(_) => None,
            })
            .unwrap_or(0);
        let request = etcd::Txn::new()
            .when(txn.compares.into_iter().map(compare).collect::<Vec<_>>())
            .and_then(
                txn.on_success
                    .into_iter()
                    .map(operation)
                    .collect::<Vec<_>>(),
            )
            .or_else(
                txn.on_failure
                    .into_iter()
                    .map(operation)
                    .collect::<Vec<_>>(),
            );
        let response = self
            .call("transaction", |mut c| async move { c.txn(request).await })
            .await
            .map_err(|e| match e {
                StoreError::LeaseNotFound { .. } => StoreError::LeaseNotFound { lease },
                e => e,
            })?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let seconds = ttl_seconds(ttl);
        let response = self
            .call("grant lease", |mut c| async move {
                c.lease_grant(seconds, None).await
            })
            .await?;
        Ok(Lease {
            id: response.id(),
            ttl: Duration::from_secs(response.ttl().max(0) as u64),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut slot = self.keeper.lock().await;
        if slot.as_ref().is_some_and(|(k, _)| k.id() != lease) {
            *slot = None;
        }
        if slot.is_none() {
            let opened = self
                .call("keep lease alive", |mut c| async move {
                    c.lease_keep_alive(lease).await
                })
                .await?;
            *slot = Some(opened);
        }
        let (keeper, stream) = slot.as_mut().expect("opened above");
        let exchange = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let answer = match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => {
                *slot = None;
                return Err(StoreError::Unavailable {
                    endpoints: self.label.clone(),
                    operation: "keep lease alive",
                    reason: "the keep-alive stream closed".into(),
                });
            }
            Ok(Err(e)) => {
                *slot = None;
                let error = self.error("keep lease alive", e);
                drop(slot);
                self.reset(&error).await;
                return Err(error);
            }
            Err(_) => {
                *slot = None;
                return Err(self.timed_out("keep lease alive"));
            }
        };
        if answer.ttl() <= 0 {
            *slot = None;
            return Err(StoreError::LeaseNotFound { lease });
        }
        Ok(Duration::from_secs(answer.ttl() as u64))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .call("revoke lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::LeaseNotFound { .. }) => Err(StoreError::LeaseNotFound { lease }),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<EtcdWatch, StoreError> {
        let key = prefix.to_string();
        let stream = self
            .call("watch", |mut c| async move {
                c.watch(
                    key,
                    Some(
                        etcd::WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(from),
                    ),
                )
                .await
            })
            .await?;
        Ok(EtcdWatch {
            stream,
            prefix: prefix.to_string(),
            label: self.label.clone(),
        })
    }
}

/// A watch on an [`EtcdStore`].
pub struct EtcdWatch {
    stream: etcd::WatchStream,
    prefix: String,
    label: String,
}

impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Err(StoreError::WatchEnded {
                        prefix: self.prefix.clone(),
                        reason: format!("{} closed the stream", self.label),
                    })
                }
                Err(e) => {
                    return Err(StoreError::WatchEnded {
                        prefix: self.prefix.clone(),
                        reason: format!("{}: {e}", self.label),
                    })
                }
            };
            if response.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    compact_revision: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(StoreError::WatchEnded {
                    prefix: self.prefix.clone(),
                    reason: format!(
                        "{} cancelled the watch: {}",
                        self.label,
                        response.cancel_reason()
                    ),
                });
            }
            let events: Vec<WatchEvent> = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(match event.event_type() {
                        etcd::EventType::Put => WatchEvent::Put(key_value(kv)),
                        etcd::EventType::Delete => WatchEvent::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            revision: kv.mod_revision(),
                        },
                    })
                })
                .collect();
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}
