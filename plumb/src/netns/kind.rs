//! Is a handle a network namespace, and whose? ([`Netns::kind_check`]): for
//! callers that must never wire the host itself as a container — the CNI
//! plugin, netd's API. A handle outside nsfs is refused without being opened
//! or ioctl'd; inside nsfs `NS_GET_NSTYPE` tells its kind; (st_dev, st_ino)
//! against /proc/self/ns/net and /proc/1/ns/net tells whose it is.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{nsfs_dev, Netns};
use crate::error::Error;

/// The kinds of namespace a handle in nsfs can be (`NS_GET_NSTYPE`'s answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    /// CLONE_NEWNET: links, addresses, routes, firewall.
    Network,
    /// CLONE_NEWNS: the mount table.
    Mount,
    /// CLONE_NEWUSER: user and group id mappings.
    User,
    /// CLONE_NEWPID: process ids.
    Pid,
    /// CLONE_NEWUTS: host and domain name.
    Uts,
    /// CLONE_NEWIPC: System V IPC and POSIX message queues.
    Ipc,
    /// CLONE_NEWCGROUP: the cgroup root.
    Cgroup,
    /// CLONE_NEWTIME: boot and monotonic clock offsets.
    Time,
    /// A kind this code does not know by name: the CLONE_NEW* flag.
    Other(i32),
}

impl NamespaceKind {
    fn from_clone_flag(flag: i32) -> NamespaceKind {
        match flag {
            libc::CLONE_NEWNET => NamespaceKind::Network,
            libc::CLONE_NEWNS => NamespaceKind::Mount,
            libc::CLONE_NEWUSER => NamespaceKind::User,
            libc::CLONE_NEWPID => NamespaceKind::Pid,
            libc::CLONE_NEWUTS => NamespaceKind::Uts,
            libc::CLONE_NEWIPC => NamespaceKind::Ipc,
            libc::CLONE_NEWCGROUP => NamespaceKind::Cgroup,
            // CLONE_NEWTIME: libc lacks it on some targets.
            0x80 => NamespaceKind::Time,
            other => NamespaceKind::Other(other),
        }
    }
}

impl std::fmt::Display for NamespaceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamespaceKind::Network => f.write_str("network"),
            NamespaceKind::Mount => f.write_str("mount"),
            NamespaceKind::User => f.write_str("user"),
            NamespaceKind::Pid => f.write_str("PID"),
            NamespaceKind::Uts => f.write_str("UTS"),
            NamespaceKind::Ipc => f.write_str("IPC"),
            NamespaceKind::Cgroup => f.write_str("cgroup"),
            NamespaceKind::Time => f.write_str("time"),
            NamespaceKind::Other(flag) => write!(f, "unknown (type {flag:#x})"),
        }
    }
}

/// Who a network namespace handle points at, compared by (st_dev, st_ino)
/// with the caller's own namespace and the initial one. Made by
/// [`Netns::kind_check`] / [`Netns::kind_check_fd`], for callers that must
/// not wire the host itself as a container (the CNI plugin, netd's API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsIdentity {
    /// nsfs device: equal for two handles on one namespace.
    pub dev: u64,
    /// nsfs inode: with `dev`, the namespace's identity.
    pub ino: u64,
    /// The calling process's own network namespace (`/proc/self/ns/net`).
    pub is_callers: bool,
    /// The initial network namespace (PID 1's, `/proc/1/ns/net`); `None`
    /// when PID 1's handle cannot be read (no permission to inspect PID 1).
    /// Inside a PID namespace "PID 1" is that namespace's init.
    pub is_initial: Option<bool>,
}

impl NetnsIdentity {
    /// The caller's own namespace or the initial one, as far as can be told:
    /// what must never be treated as a container's.
    pub fn is_host(&self) -> bool {
        self.is_callers || self.is_initial == Some(true)
    }
}

/// Why a handle is not a usable network namespace. Each names the handle.
#[derive(Debug, thiserror::Error)]
pub enum NetnsCheckError {
    /// Nothing at that path (or the process is gone).
    #[error("namespace handle {handle} does not exist")]
    NotFound {
        /// The path or label of the handle.
        handle: String,
    },
    /// A regular file, directory, device, … — anything outside nsfs.
    #[error("{handle} is not a namespace handle (it is {what}); expected e.g. /proc/PID/ns/net or /run/netns/NAME")]
    NotANamespace {
        /// The path or label of the handle.
        handle: String,
        /// What it is instead ("a regular file", "a directory", …).
        what: &'static str,
    },
    /// A namespace, but of another kind (mount, user, …).
    #[error("{handle} is a {kind} namespace, not a network namespace")]
    NotNetwork {
        /// The path or label of the handle.
        handle: String,
        /// The kind it is.
        kind: NamespaceKind,
    },
    /// stat or the ioctl failed for another reason (permissions, …).
    #[error("cannot inspect namespace handle {handle}: {source}")]
    Io {
        /// The path or label of the handle.
        handle: String,
        /// What the system call said.
        #[source]
        source: std::io::Error,
    },
}

impl From<NetnsCheckError> for Error {
    fn from(e: NetnsCheckError) -> Error {
        let why = e.to_string();
        match e {
            NetnsCheckError::NotFound { handle } => Error::NamespaceNotFound(handle),
            NetnsCheckError::Io { handle, source } => {
                Error::io(format!("inspect namespace handle {handle}"), source)
            }
            NetnsCheckError::NotANamespace { handle, .. }
            | NetnsCheckError::NotNetwork { handle, .. } => {
                Error::invalid("network namespace", handle, why)
            }
        }
    }
}

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn file_type_words(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not in nsfs"
    }
}

fn identity_of(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Netns {
    /// Checks that `path` is a handle on a network namespace and says whose.
    ///
    /// The path is `stat`ed first and opened only when it lies in nsfs, so a
    /// FIFO or a device is never opened (that could block or act).
    pub fn kind_check(path: impl AsRef<Path>) -> Result<NetnsIdentity, NetnsCheckError> {
        let path = path.as_ref();
        let handle = path.display().to_string();
        let io = |source: std::io::Error| NetnsCheckError::Io {
            handle: handle.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NetnsCheckError::NotFound {
                handle: handle.clone(),
            },
            _ => io(e),
        })?;
        let nsfs = nsfs_dev().map_err(|_| {
            io(std::io::Error::other(
                "cannot stat /proc/self/ns/net (is /proc mounted?)",
            ))
        })?;
        if meta.dev() != nsfs {
            return Err(NetnsCheckError::NotANamespace {
                handle,
                what: file_type_words(&meta),
            });
        }
        let file = File::open(path).map_err(io)?;
        Self::kind_check_fd(file.as_fd(), &handle)
    }

    /// [`Netns::kind_check`] on an open descriptor (`handle` names it in errors).
    pub fn kind_check_fd(
        fd: BorrowedFd<'_>,
        handle: &str,
    ) -> Result<NetnsIdentity, NetnsCheckError> {
        let io = |source: std::io::Error| NetnsCheckError::Io {
            handle: handle.to_string(),
            source,
        };
        let file = File::from(fd.try_clone_to_owned().map_err(io)?);
        let meta = file.metadata().map_err(io)?;
        let nsfs = nsfs_dev().map_err(|_| {
            io(std::io::Error::other(
                "cannot stat /proc/self/ns/net (is /proc mounted?)",
            ))
        })?;
        if meta.dev() != nsfs {
            // Checked before the ioctl: on a device an unknown ioctl could act.
            return Err(NetnsCheckError::NotANamespace {
                handle: handle.to_string(),
                what: file_type_words(&meta),
            });
        }
        // SAFETY: `file` is an open descriptor we own for the whole call, it
        // lies in nsfs (checked above), and NS_GET_NSTYPE takes no argument.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let kind = NamespaceKind::from_clone_flag(kind);
        if kind != NamespaceKind::Network {
            return Err(NetnsCheckError::NotNetwork {
                handle: handle.to_string(),
                kind,
            });
        }
        let id = (meta.dev(), meta.ino());
        Ok(NetnsIdentity {
            dev: id.0,
            ino: id.1,
            is_callers: identity_of("/proc/self/ns/net") == Some(id),
            is_initial: identity_of("/proc/1/ns/net").map(|init| init == id),
        })
    }

    /// [`Netns::kind_check_fd`] on this handle.
    pub fn kind_check_open(&self) -> Result<NetnsIdentity, NetnsCheckError> {
        Self::kind_check_fd(self.file.as_fd(), self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{unshare, CloneFlags};

    #[test]
    fn kind_check_tells_own_initial_and_other_kinds() {
        let own = Netns::kind_check("/proc/self/ns/net").unwrap();
        assert!(own.is_callers && own.is_host(), "{own:?}");
        assert_eq!(Some(own), Netns::current().unwrap().kind_check_open().ok());
        // Readable by root only; where it is, the initial namespace is host.
        if let Ok(init) = Netns::kind_check("/proc/1/ns/net") {
            assert_eq!(init.is_initial, Some(true));
            assert!(init.is_host());
        }
        for (path, kind) in [
            ("/proc/self/ns/mnt", NamespaceKind::Mount),
            ("/proc/self/ns/user", NamespaceKind::User),
            ("/proc/self/ns/uts", NamespaceKind::Uts),
        ] {
            match Netns::kind_check(path) {
                Err(NetnsCheckError::NotNetwork { kind: k, handle }) => {
                    assert_eq!((k, handle.as_str()), (kind, path))
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        let e = Netns::kind_check("/proc/self/status").unwrap_err();
        assert!(
            matches!(
                e,
                NetnsCheckError::NotANamespace {
                    what: "a regular file",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("/proc/self/status"), "{e}");
        assert!(matches!(
            Netns::kind_check("/nonexistent/ns").unwrap_err(),
            NetnsCheckError::NotFound { .. }
        ));
        assert!(matches!(
            Netns::kind_check("/dev/null").unwrap_err(),
            NetnsCheckError::NotANamespace {
                what: "a device",
                ..
            }
        ));
        let fifo_dir =
            std::env::temp_dir().join(format!("plumb-netns-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&fifo_dir).unwrap();
        let fifo = fifo_dir.join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
        // Refused without being opened (opening a FIFO would block).
        let e = Netns::kind_check(&fifo).unwrap_err();
        std::fs::remove_dir_all(&fifo_dir).unwrap();
        assert!(
            matches!(e, NetnsCheckError::NotANamespace { what: "a FIFO", .. }),
            "{e:?}"
        );
    }

    #[test]
    fn another_network_namespace_is_not_host() {
        // A thread of our own in a fresh namespace (needs CAP_SYS_ADMIN).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let made = unshare(CloneFlags::CLONE_NEWNET);
            tx.send(made.map(|()| nix::unistd::gettid())).unwrap();
            let _ = done_rx.recv();
        });
        let tid = match rx.recv().unwrap() {
            Ok(tid) => tid,
            Err(e) => {
                done_tx.send(()).unwrap();
                t.join().unwrap();
                panic!("this test needs root to make a network namespace: unshare: {e}");
            }
        };
        let id = Netns::kind_check(format!("/proc/self/task/{tid}/ns/net"));
        done_tx.send(()).unwrap();
        t.join().unwrap();
        let id = id.unwrap();
        assert!(!id.is_callers && !id.is_host(), "{id:?}");
        assert_ne!(id.is_initial, Some(true));
    }
}
