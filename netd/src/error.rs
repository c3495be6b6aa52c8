//! netd's one error type. Each module has its own enum or variant; they
//! gather here with `#[from]`, and every message says what failed, for which
//! container or namespace, and how to fix it.
//!
//! Callers branch on [`Error::kind`], never on the message. The kind crosses
//! the API in the error body (`{"error": "…", "kind": "not_found"}`), and the
//! API client turns it back into an [`Error`] of the same kind, so a caller
//! of the daemon matches on the same kinds as a caller of the library.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::ipam::IpamError;
use crate::state::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(transparent)]
    Ipam(#[from] IpamError),

    #[error(transparent)]
    Store(#[from] StoreError),

    /// The cluster store or membership (`[cluster]`, `netd cluster …`).
    #[error("cluster: {0}")]
    Cluster(#[from] ::overlay::cluster::ClusterError),

    /// A kernel operation failed; `context` says for which container and what step.
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: Box<plumb::Error>,
    },

    /// The overlay device refused a change (a peer, a key); `context` says which.
    #[error("{context}: {source}")]
    Overlay {
        context: String,
        #[source]
        source: Box<::overlay::DeviceError>,
    },

    /// The request is malformed: a bad id, port, MTU, address or body.
    #[error("{0}")]
    InvalidInput(String),

    /// The request names something that does not exist (a container, a namespace).
    #[error("{0}")]
    NotFound(String),

    /// The request clashes with what is already there (a name, an address, a port).
    #[error("{0}")]
    Conflict(String),

    /// What the request names is being changed right now; try again when that is done.
    #[error("{0}")]
    Busy(String),

    /// The daemon's socket does not answer.
    #[error("cannot reach netd at {socket}: {source} — is `netd run` running? (set --socket or WEFT_SOCKET)")]
    Unreachable {
        socket: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The daemon answered with an error; `kind` is the one it reported.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },

    /// The conversation with the daemon broke off, or its answer was unreadable.
    #[error("{0}")]
    Protocol(String),

    /// The daemon could not set itself up: its socket, metrics listener,
    /// signals, the overlay's key directory.
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is: what a caller branches on, the API's
/// status code, and the `kind` of the API's error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request (or the configuration) is malformed; fix it and retry.
    InvalidInput,
    /// What the request names does not exist.
    NotFound,
    /// It clashes with something already there (a name, an address, a port, a full pool).
    Conflict,
    /// What it names is being attached or detached right now; retry later.
    Busy,
    /// The kernel (or the overlay device) refused an operation.
    Kernel,
    /// netd's state could not be read or written.
    Storage,
    /// The daemon's socket does not answer.
    Unreachable,
    /// Anything else: netd itself failed.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Busy => "busy",
            ErrorKind::Kernel => "kernel",
            ErrorKind::Storage => "storage",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Internal => "internal",
        })
    }
}

impl Error {
    pub fn kernel(context: impl Into<String>, source: plumb::Error) -> Error {
        Error::Kernel {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn overlay(context: impl Into<String>, source: ::overlay::DeviceError) -> Error {
        Error::Overlay {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) | Error::Config(_) => ErrorKind::InvalidInput,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Busy(_) => ErrorKind::Busy,
            Error::Ipam(e) => match e {
                IpamError::OutsideSubnet { .. }
                | IpamError::NotAssignable { .. }
                | IpamError::BadSubnet { .. }
                | IpamError::BadRange { .. } => ErrorKind::InvalidInput,
                IpamError::Taken { .. } | IpamError::Full { .. } | IpamError::RangeFull { .. } => {
                    ErrorKind::Conflict
                }
            },
            Error::Store(_) => ErrorKind::Storage,
            Error::Kernel { source, .. } => match **source {
                plumb::Error::NamespaceNotFound(_) => ErrorKind::NotFound,
                plumb::Error::Invalid { .. } => ErrorKind::InvalidInput,
                _ => ErrorKind::Kernel,
            },
            Error::Overlay { .. } => ErrorKind::Kernel,
            Error::Cluster(e) => {
                use ::overlay::cluster::ClusterError as C;
                match e {
                    C::NoConfig { .. } | C::UnknownHost { .. } | C::NotJoined => {
                        ErrorKind::NotFound
                    }
                    C::ConfigMismatch { .. }
                    | C::HostAlive { .. }
                    | C::RangeFull { .. }
                    | C::CannotHonour { .. }
                    | C::ReservationLost { .. } => ErrorKind::Conflict,
                    C::Contention { .. } => ErrorKind::Busy,
                    C::BadConfig { .. } => ErrorKind::InvalidInput,
                    C::Store { .. } | C::ConfigUnreadable { .. } | C::Identity { .. } => {
                        ErrorKind::Storage
                    }
                }
            }
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::Remote { kind, .. } => *kind,
            Error::Protocol(_) | Error::Setup(_) => ErrorKind::Internal,
        }
    }

    /// True when the daemon answered this error (it came through the API).
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote { .. })
    }
}

/// Adds "what we were doing" to a plumb result: `nl.add_bridge(..).ctx(|| "create bridge weft0")`.
pub trait KernelContext<T> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> KernelContext<T> for plumb::Result<T> {
    fn ctx<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::kernel(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_travel_as_snake_case_names() {
        let text = serde_json::to_string(&ErrorKind::InvalidInput).unwrap();
        assert_eq!(text, "\"invalid_input\"");
        let back: ErrorKind = serde_json::from_str("\"not_found\"").unwrap();
        assert_eq!(back, ErrorKind::NotFound);
    }

    #[test]
    fn a_missing_namespace_is_not_found_and_a_store_failure_is_storage() {
        let e = Error::kernel(
            "open the namespace netd manages",
            plumb::Error::NamespaceNotFound("/run/netns/x".into()),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let remote = Error::Remote {
            kind: ErrorKind::Busy,
            message: "container c1 is being attached right now".into(),
        };
        assert_eq!(remote.kind(), ErrorKind::Busy);
        assert!(remote.is_remote());
    }
}
