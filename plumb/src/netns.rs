//! Network namespaces by name, path or PID, and running code inside them.
//!
//! A socket belongs to the namespace it was opened in, so work that must happen
//! inside a namespace runs on a short-lived dedicated thread that has entered
//! it (`Netns::run`). The calling thread, and with it any async runtime worker,
//! never changes namespace.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open handle on a network namespace. Cloning is cheap and shares the handle.
#[derive(Clone, Debug)]
pub struct Netns {
    /// Set at open, except for `current()`, whose name is looked up in
    /// /run/netns only when a message needs it (that costs a stat per entry).
    label: Arc<std::sync::OnceLock<String>>,
    path: PathBuf,
    file: Arc<File>,
}

impl Netns {
    /// The namespace this process runs in, labelled with its /run/netns name
    /// when it has one (so errors say where), or "host" otherwise.
    pub fn current() -> Result<Netns> {
        let file = File::open("/proc/self/ns/net")
            .map_err(|e| Error::io("open the current namespace", e))?;
        Ok(Netns {
            label: Arc::default(),
            path: PathBuf::from("/proc/self/ns/net"),
            file: Arc::new(file),
        })
    }

    /// The /run/netns name of this namespace, or "host" when it has none.
    fn find_name(&self) -> String {
        let (inode, dev) = (self.inode(), self.dev());
        for name in Self::list_named().unwrap_or_default() {
            let path = Path::new(NETNS_RUN_DIR).join(&name);
            if std::fs::metadata(&path).is_ok_and(|m| m.ino() == inode && m.dev() == dev) {
                return name;
            }
        }
        "host".to_string()
    }

    /// A namespace created by `ip netns add NAME` (a bind mount in /run/netns).
    pub fn named(name: &str) -> Result<Netns> {
        validate_name(name)?;
        Self::open_path(name, &Path::new(NETNS_RUN_DIR).join(name))
    }

    /// A namespace given as a path, e.g. /proc/1234/ns/net or a runtime's bind mount.
    pub fn path(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        Self::open_path(&path.display().to_string(), path)
    }

    /// The namespace process `pid` runs in.
    pub fn pid(pid: u32) -> Result<Netns> {
        Self::open_path(
            &format!("of process {pid}"),
            &PathBuf::from(format!("/proc/{pid}/ns/net")),
        )
    }

    /// Reads a user's words: an absolute path, a PID (all digits) or a name.
    pub fn resolve(spec: &str) -> Result<Netns> {
        if spec.starts_with('/') {
            Self::path(spec)
        } else if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
            let pid = spec
                .parse()
                .map_err(|_| Error::invalid("PID", spec, "out of range"))?;
            Self::pid(pid)
        } else {
            Self::named(spec)
        }
    }

    fn open_path(label: &str, path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NamespaceNotFound(label.to_string()),
            _ => Error::io(format!("open namespace {label}"), e),
        })?;
        // A named namespace whose bind mount is gone leaves an empty regular file
        // behind: that is not a namespace (entering it fails with EINVAL).
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("stat namespace {label}"), e))?;
        if meta.dev() != nsfs_dev()? {
            return Err(Error::NamespaceNotFound(label.to_string()));
        }
        Ok(Netns {
            label: Arc::new(label.to_string().into()),
            path: path.to_path_buf(),
            file: Arc::new(file),
        })
    }

    /// Creates a named namespace the way `ip netns add` does, so `ip netns` sees it.
    pub fn create(name: &str) -> Result<Netns> {
        validate_name(name)?;
        let dir = Path::new(NETNS_RUN_DIR);
        make_shared_mount_dir(dir)?;
        let path = dir.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EEXIST) => Error::NamespaceExists(name.to_string()),
                _ => Error::io(format!("create {}", path.display()), e),
            })?;
        let bind_target = path.clone();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::io("unshare a new network namespace", std::io::Error::from(e))
            })?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &bind_target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                Error::io(
                    format!("bind mount namespace onto {}", bind_target.display()),
                    std::io::Error::from(e),
                )
            })
        })
        .join()
        .map_err(|_| Error::Other("namespace creation thread panicked".into()))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Self::named(name)
    }

    /// Removes a named namespace. Its links vanish with it once nothing holds it open.
    pub fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::io(
                    format!("unmount namespace {name}"),
                    std::io::Error::from(e),
                ))
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NamespaceNotFound(name.to_string()))
            }
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    /// Names of the namespaces in /run/netns.
    pub fn list_named() -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("list {NETNS_RUN_DIR}"), e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Renames the namespace for messages (e.g. after the container it belongs to).
    pub fn set_label(&mut self, label: String) {
        self.label = Arc::new(label.into());
    }

    /// How errors and listings name this namespace.
    pub fn label(&self) -> &str {
        self.label.get_or_init(|| self.find_name())
    }

    pub fn path_buf(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity: two handles with the same inode are one namespace.
    pub fn inode(&self) -> u64 {
        self.file.metadata().map(|m| m.ino()).unwrap_or(0)
    }

    /// (device, inode): unique among live namespaces.
    pub fn identity(&self) -> (u64, u64) {
        (self.dev(), self.inode())
    }

    pub fn is_same(&self, other: &Netns) -> bool {
        self.inode() == other.inode()
    }

    /// True when the calling thread is in this namespace.
    fn is_current_thread(&self) -> bool {
        std::fs::metadata("/proc/thread-self/ns/net")
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity())
    }

    fn dev(&self) -> u64 {
        self.file.metadata().map(|m| m.dev()).unwrap_or(0)
    }

    /// Runs `f` inside this namespace: on a dedicated thread that has entered
    /// it, or right here when the calling thread is in it already. Sockets
    /// opened by `f` stay in this namespace after it returns.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        // Already here (a daemon's own namespace): no thread to start and
        // enter, which costs about a tenth of a millisecond.
        // A panic in `f` becomes the same error either way.
        let panicked = || Error::Other(format!("a thread in namespace {} panicked", self.label()));
        if self.is_current_thread() {
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .map_err(|_| panicked());
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(
                            format!("enter namespace {}", self.label()),
                            std::io::Error::from(e),
                        )
                    })?;
                    Ok(f())
                })
                .join()
                .map_err(|_| panicked())?
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Names are file names in /run/netns: no slashes, no dot entries.
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::invalid(
            "namespace name",
            name,
            "must be a non-empty file name without '/'",
        ));
    }
    Ok(())
}

/// The device number of nsfs, where every namespace handle lives.
fn nsfs_dev() -> Result<u64> {
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.dev())
        .map_err(|e| Error::io("stat /proc/self/ns/net", e))
}

/// /run/netns must be a shared mount point so that namespace bind mounts made
/// here propagate to other mount namespaces, as iproute2 arranges it.
fn make_shared_mount_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|_| mount(None::<&str>, dir, Some("none"), shared, None::<&str>))
            .map_err(|e| {
                Error::io(
                    format!("make {} a shared mount", dir.display()),
                    std::io::Error::from(e),
                )
            })
        }
        Err(e) => Err(Error::io(
            format!("make {} a shared mount", dir.display()),
            std::io::Error::from(e),
        )),
    }
}

/// The kinds of namespace a handle in nsfs can be (`NS_GET_NSTYPE`'s answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    Network,
    Mount,
    User,
    Pid,
    Uts,
    Ipc,
    Cgroup,
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
    /// nsfs device and inode: equal for two handles on one namespace.
    pub dev: u64,
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
    #[error("namespace handle {handle} does not exist")]
    NotFound { handle: String },
    /// A regular file, directory, device, … — anything outside nsfs.
    #[error("{handle} is not a namespace handle (it is {what}); expected e.g. /proc/PID/ns/net or /run/netns/NAME")]
    NotANamespace { handle: String, what: &'static str },
    #[error("{handle} is a {kind} namespace, not a network namespace")]
    NotNetwork { handle: String, kind: NamespaceKind },
    #[error("cannot inspect namespace handle {handle}: {source}")]
    Io {
        handle: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<NetnsCheckError> for Error {
    fn from(e: NetnsCheckError) -> Error {
        match e {
            NetnsCheckError::NotFound { handle } => Error::NamespaceNotFound(handle),
            NetnsCheckError::Io { handle, source } => {
                Error::io(format!("inspect namespace handle {handle}"), source)
            }
            other
            @ (NetnsCheckError::NotANamespace { .. } | NetnsCheckError::NotNetwork { .. }) => {
                Error::invalid(
                    "network namespace",
                    other.to_string(),
                    "not a network namespace",
                )
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

    #[test]
    fn resolve_reads_names_paths_and_pids() {
        assert!(matches!(
            Netns::resolve("no-such-ns-plumb-test"),
            Err(Error::NamespaceNotFound(n)) if n == "no-such-ns-plumb-test"
        ));
        assert!(matches!(
            Netns::resolve("/nonexistent/ns"),
            Err(Error::NamespaceNotFound(_))
        ));
        assert!(matches!(
            Netns::resolve("4294967295"),
            Err(Error::NamespaceNotFound(_))
        ));
        assert!(matches!(Netns::named("a/b"), Err(Error::Invalid { .. })));
    }

    #[test]
    fn current_namespace_is_itself() {
        let a = Netns::current().unwrap();
        let b = Netns::resolve(&std::process::id().to_string()).unwrap();
        assert!(a.is_same(&b));
    }

    #[test]
    fn run_in_the_threads_own_namespace_runs_inline_and_catches_panics() {
        let here = Netns::current().unwrap();
        let caller = std::thread::current().id();
        assert_eq!(here.run(|| std::thread::current().id()).unwrap(), caller);
        let err = here.run(|| -> u32 { panic!("on purpose") }).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }

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
