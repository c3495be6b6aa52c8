//! One error type for plumb. Every variant names the object and the namespace it
//! concerns, and kernel errnos are turned into sentences a user can act on.

use std::io;

/// Where an operation happened and on what, carried into every kernel error.
#[derive(Debug, Clone)]
pub struct Target {
    /// What was being done: "create", "delete", "set MTU of", …
    pub action: String,
    /// The object in the user's words: "link eth1", "address 10.0.0.2/24 on eth1".
    pub object: String,
    /// The namespace's label: its name, path or "the host namespace".
    pub namespace: String,
}

/// Everything plumb can fail with; each message names the object, the
/// action and the namespace, and says how to fix it where it can.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EEXIST: the object is already there.
    #[error("{} already exists in namespace {}", .0.object, .0.namespace)]
    AlreadyExists(Target),

    /// ENODEV, ENOENT, ESRCH or EADDRNOTAVAIL: the object is not there.
    #[error("{}: {} does not exist in namespace {}", .0.action, .0.object, .0.namespace)]
    NotFound(Target),

    #[error(
        "{} {} in namespace {}: permission denied — plumb needs root (CAP_NET_ADMIN)",
        .0.action, .0.object, .0.namespace
    )]
    /// EPERM or EACCES: plumb needs CAP_NET_ADMIN.
    PermissionDenied(Target),

    #[error(
        "{} {} in namespace {}: the device is busy (in use by another link, or it is a bridge port)",
        .0.action, .0.object, .0.namespace
    )]
    /// EBUSY: the link is in use (a bridge port, another link's lower device).
    Busy(Target),

    #[error(
        "{} {} in namespace {}: not supported by this kernel (is the module for it loaded?)",
        .0.action, .0.object, .0.namespace
    )]
    /// EOPNOTSUPP: the kernel lacks the feature or its module.
    Unsupported(Target),

    /// EXFULL from plugging a link into a bridge: Docker's "exchange full".
    #[error(
        "{} {} in namespace {}: the bridge has no free port (a Linux bridge takes at most {BRIDGE_MAX_PORTS})",
        .0.action, .0.object, .0.namespace
    )]
    BridgeFull(Target),

    /// Any other errno, with the kernel's text for it.
    #[error("{} {} in namespace {}: {message} (errno {errno})", .target.action, .target.object, .target.namespace)]
    Kernel {
        /// What was being done, to what, where.
        target: Target,
        /// The errno (positive).
        errno: i32,
        /// strerror's text for it.
        message: String,
    },

    /// A firewall tool (nft, iptables-restore, …) refused a change or a query;
    /// `message` carries what it printed on stderr.
    #[error("{action} in namespace {namespace}: {tool} failed: {message}")]
    Firewall {
        /// The tool's name: "nft", "iptables-restore", ….
        tool: &'static str,
        /// What was being done ("publish 8080/tcp", …).
        action: String,
        /// The namespace, as its label reads.
        namespace: String,
        /// What the tool printed on stderr.
        message: String,
    },

    /// No namespace by this name, path or PID.
    #[error("namespace {0} not found — is the container still running?")]
    NamespaceNotFound(String),

    /// A namespace by this name already exists in /run/netns.
    #[error("namespace {0} already exists")]
    NamespaceExists(String),

    /// Bad input, refused before anything was changed.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        /// What kind of value ("interface name", "MAC", …).
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong with it, and what would be right.
        why: String,
    },

    /// A system call outside netlink failed (opening a namespace, a sysctl, …).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and to what.
        context: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Anything else, with a message that says what and where.
    #[error("{0}")]
    Other(String),
}

/// A result with plumb's [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Ports a Linux bridge takes (port numbers are 10 bits, 0 is reserved).
pub const BRIDGE_MAX_PORTS: u32 = 1023;

impl Error {
    /// Turns a kernel errno (positive) into the variant a user can act on.
    pub fn from_errno(errno: i32, target: Target) -> Error {
        match errno {
            libc::EEXIST => Error::AlreadyExists(target),
            libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL => {
                Error::NotFound(target)
            }
            libc::EPERM | libc::EACCES => Error::PermissionDenied(target),
            libc::EBUSY => Error::Busy(target),
            libc::EOPNOTSUPP => Error::Unsupported(target),
            libc::EXFULL => Error::BridgeFull(target),
            _ => Error::Kernel {
                target,
                errno,
                message: io::Error::from_raw_os_error(errno).to_string(),
            },
        }
    }

    /// An [`Error::Invalid`]: `what` kind of value, the `value` given, `why` it
    /// is refused.
    pub fn invalid(what: &'static str, value: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            value: value.into(),
            why: why.into(),
        }
    }

    /// An [`Error::Io`] with `context` saying what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error says the object is absent: teardown treats that as done.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_) | Error::NamespaceNotFound(_))
    }

    /// True when the object was already there (EEXIST): setup may treat that as done.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            action: "create".into(),
            object: "link eth1".into(),
            namespace: "c1".into(),
        }
    }

    #[test]
    fn errno_sentences_name_object_and_namespace() {
        let e = Error::from_errno(libc::EEXIST, target());
        assert_eq!(e.to_string(), "link eth1 already exists in namespace c1");
        let e = Error::from_errno(libc::EPERM, target());
        assert!(e.to_string().contains("needs root"), "{e}");
        let e = Error::from_errno(libc::ENODEV, target());
        assert_eq!(
            e.to_string(),
            "create: link eth1 does not exist in namespace c1"
        );
        assert!(e.is_not_found());
        let e = Error::from_errno(libc::EBUSY, target());
        assert!(e.to_string().contains("busy"), "{e}");
        let e = Error::from_errno(libc::EXFULL, target());
        assert!(e.to_string().contains("no free port"), "{e}");
        let e = Error::from_errno(libc::ERANGE, target());
        assert!(e.to_string().contains("errno 34"), "{e}");
    }
}
