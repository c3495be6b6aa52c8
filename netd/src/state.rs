//! netd's persistent state: the containers it attached and the addresses it
//! reserved, in one JSON file in the state directory.
//!
//! Every change is a transaction: take an exclusive `flock` on
//! `<state-dir>/state.lock`, read `state.json`, change it, write a temporary
//! file, fsync it, rename it over `state.json`, unlock.
//! Readers and writers in other processes (a second netd, CNI plugin
//! invocations in standalone mode) see either the old or the new file, never a
//! half-written one, and never hand out the same address twice.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use plumb::firewall::PublishedPort;
use plumb::MacAddr;
use serde::{Deserialize, Serialize};

use crate::ipam::Reservations;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "state.lock";
/// The format of state.json; bumped when it changes incompatibly.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {dir}: {source} — check --state-dir / WEFT_STATE_DIR and that netd runs as root")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("state file {path} is corrupt ({source}); move it aside to start from an empty state")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "state file {path} has format version {found}, this netd reads version {STATE_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
}

/// A process that is part-way through changing an endpoint. Its start time
/// tells a live owner from a dead one whose PID was reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerProcess {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start: u64,
}

impl OwnerProcess {
    pub fn current() -> OwnerProcess {
        let pid = std::process::id();
        OwnerProcess {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    /// True while the process that recorded this is still running.
    pub fn is_alive(&self) -> bool {
        process_start(self.pid) == Some(self.start)
    }
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // A zombie (killed, not yet reaped by its parent) no longer runs.
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Where an endpoint is in its life. Attaching and detaching record the
/// process doing it, so that after a crash reconcile can roll back the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    Attaching { owner: OwnerProcess },
    Attached,
    Detaching { owner: OwnerProcess },
}

/// One container's connection to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The container id (the CNI container id, or what `netd attach --id` gave).
    pub id: String,
    /// A unique human name.
    pub name: String,
    /// The container's namespace, as a path.
    pub netns: PathBuf,
    /// The namespace's inode: tells the same namespace from a new one at the same path.
    pub netns_inode: u64,
    /// The interface inside the container.
    pub ifname: String,
    /// The veth end on the host (a hash of the id), a port of the bridge.
    pub host_ifname: String,
    /// The container interface's MAC; the kernel's choice unless one was asked for.
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// Addresses with the subnet's prefix length.
    pub ips: Vec<IpNetwork>,
    pub gateways: Vec<IpAddr>,
    /// Published ports, bound to the container's addresses.
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    #[serde(flatten)]
    pub phase: Phase,
}

/// Everything in state.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    /// Endpoints by container id.
    pub endpoints: BTreeMap<String, Endpoint>,
    pub ipam: Reservations,
}

impl Default for State {
    fn default() -> State {
        State {
            version: STATE_VERSION,
            endpoints: BTreeMap::new(),
            ipam: Reservations::default(),
        }
    }
}

impl State {
    /// The endpoint whose id or name is `key`.
    pub fn find(&self, key: &str) -> Option<&Endpoint> {
        self.endpoints
            .get(key)
            .or_else(|| self.endpoints.values().find(|e| e.name == key))
    }
}

/// The state directory. Cheap to clone; holds no file open between calls.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Dir {
                dir: dir.clone(),
                source,
            })?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn lock(&self, arg: FlockArg) -> Result<Flock<File>, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "open lock file",
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, arg).map_err(|(_, errno)| StoreError::Io {
            action: "lock",
            path,
            source: std::io::Error::from(errno),
        })
    }

    /// Reads the state under a shared lock.
    pub fn read(&self) -> Result<State, StoreError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        self.load()
    }

    /// Runs `change` on the state under an exclusive lock and saves the result
    /// when it returns Ok. On Err nothing is written.
    pub fn update<T, E>(&self, change: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let mut state = self.load()?;
        let out = change(&mut state)?;
        self.save(&state)?;
        Ok(out)
    }

    fn load(&self) -> Result<State, StoreError> {
        let path = self.state_path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let state: State = serde_json::from_slice(&text).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Version {
                path,
                found: state.version,
            });
        }
        Ok(state)
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.state_path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io = |action: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io {
                action,
                path: p,
                source,
            }
        };
        let text = serde_json::to_vec_pretty(state).expect("state serializes");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        file.write_all(&text).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        // The directory is not fsynced: the rename is atomic for every reader
        // at once, and only a power loss could undo it — which also takes
        // every veth and namespace with it, so the state reconciliation finds
        // after a reboot is right either way (stale entries are removed).
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::IpamError;

    #[derive(Debug)]
    enum TestError {
        #[allow(dead_code)] // read through Debug when a test fails
        Store(StoreError),
        Ipam(IpamError),
    }
    impl From<StoreError> for TestError {
        fn from(e: StoreError) -> Self {
            TestError::Store(e)
        }
    }
    impl From<IpamError> for TestError {
        fn from(e: IpamError) -> Self {
            TestError::Ipam(e)
        }
    }

    fn subnet() -> IpNetwork {
        "10.66.0.0/24".parse().unwrap()
    }

    #[test]
    fn reservations_survive_a_round_trip_and_failed_changes_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("state")).unwrap();
        assert_eq!(store.read().unwrap(), State::default());
        let a = store
            .update(|s| {
                s.ipam
                    .allocate(subnet(), "c1", None)
                    .map_err(TestError::Ipam)
            })
            .unwrap();
        let again = Store::open(dir.path().join("state")).unwrap();
        let state = again.read().unwrap();
        assert_eq!(state.ipam.held_by("c1"), vec![a]);
        let failed: Result<(), TestError> = again.update(|s| {
            s.ipam.allocate(subnet(), "c2", None)?;
            s.ipam.allocate(subnet(), "c3", Some(a))?;
            Ok(())
        });
        assert!(matches!(
            failed,
            Err(TestError::Ipam(IpamError::Taken { .. }))
        ));
        assert_eq!(again.read().unwrap().ipam.owners().len(), 1);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(again.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn concurrent_stores_never_hand_out_one_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        // Each thread opens its own lock file description, as separate
        // processes would: flock excludes them from one another.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    (0..25)
                        .map(|i| {
                            store
                                .update(|s| {
                                    s.ipam
                                        .allocate(subnet(), &format!("t{t}-{i}"), None)
                                        .map_err(TestError::Ipam)
                                })
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(all.len(), 200);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 200, "an address was handed out twice");
        let state = Store::open(&path).unwrap().read().unwrap();
        assert_eq!(state.ipam.usage(subnet()).in_use, 201);
    }

    const WORKER_ENV: &str = "WEFT_TEST_IPAM_WORKER_DIR";

    /// Several processes (this test binary re-run as workers) allocate from
    /// one state directory at once: flock keeps every address unique.
    #[test]
    fn concurrent_processes_never_hand_out_one_address_twice() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "state::tests::ipam_worker",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env(WORKER_ENV, dir.path())
                    .env("WEFT_TEST_IPAM_WORKER_ID", w.to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for worker in workers {
            let out = worker.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "the worker did not run: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let state = Store::open(dir.path()).unwrap().read().unwrap();
        let pool = &state.ipam.pools[&subnet().to_string()];
        assert_eq!(pool.reserved.len(), 100, "addresses were lost or shared");
        for w in 0..4 {
            let held = pool
                .reserved
                .values()
                .filter(|o| o.starts_with(&format!("w{w}-")))
                .count();
            assert_eq!(held, 25);
        }
    }

    /// The worker half of the test above; does nothing unless run by it.
    #[test]
    #[ignore = "run by concurrent_processes_never_hand_out_one_address_twice"]
    fn ipam_worker() {
        let Some(dir) = std::env::var_os(WORKER_ENV) else {
            return;
        };
        let id = std::env::var("WEFT_TEST_IPAM_WORKER_ID").unwrap();
        let store = Store::open(dir).unwrap();
        for i in 0..25 {
            store
                .update(|s| {
                    s.ipam
                        .allocate(subnet(), &format!("w{id}-{i}"), None)
                        .map_err(TestError::Ipam)
                })
                .unwrap();
        }
    }

    #[test]
    fn a_corrupt_state_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        let err = Store::open(dir.path()).unwrap().read().unwrap_err();
        assert!(err.to_string().contains("state.json is corrupt"), "{err}");
    }

    #[test]
    fn owner_processes_are_told_apart_by_start_time() {
        let me = OwnerProcess::current();
        assert!(me.is_alive());
        assert!(me.start > 0);
        let reused = OwnerProcess {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!reused.is_alive());
    }
}
