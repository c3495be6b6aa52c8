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

mod kind;
pub use kind::{NamespaceKind, NetnsCheckError, NetnsIdentity};

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

    /// The path the namespace was opened from (/run/netns/NAME, /proc/PID/ns/net, …).
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

    /// True when both handles are the same namespace (same inode).
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
}
