//! netd's one error type. Each module has its own enum; they gather here with
//! `#[from]`, and every message says what failed, for which container or
//! namespace, and how to fix it.

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

    /// A kernel operation failed; `context` says for which container and what step.
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: Box<plumb::Error>,
    },

    /// The request is malformed or names something that does not exist.
    #[error("{0}")]
    Invalid(String),

    /// The request clashes with what is already there (a name, an address, a port).
    #[error("{0}")]
    Conflict(String),

    /// The daemon's API could not be reached or answered with an error.
    #[error("{0}")]
    Api(String),

    /// The daemon could not set itself up: its socket, metrics listener or signals.
    #[error("{0}")]
    Daemon(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is, for the API's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    Internal,
}

impl Error {
    pub fn kernel(context: impl Into<String>, source: plumb::Error) -> Error {
        Error::Kernel {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::Config(_) => ErrorKind::BadRequest,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Ipam(e) => match e {
                IpamError::OutsideSubnet { .. }
                | IpamError::NotAssignable { .. }
                | IpamError::BadSubnet { .. }
                | IpamError::BadRange { .. } => ErrorKind::BadRequest,
                IpamError::Taken { .. } | IpamError::Full { .. } | IpamError::RangeFull { .. } => {
                    ErrorKind::Conflict
                }
            },
            Error::Kernel { source, .. }
                if matches!(**source, plumb::Error::NamespaceNotFound(_)) =>
            {
                ErrorKind::NotFound
            }
            Error::Kernel { source, .. } if matches!(**source, plumb::Error::Invalid { .. }) => {
                ErrorKind::BadRequest
            }
            _ => ErrorKind::Internal,
        }
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
