//! netd's persistent state: the containers it attached and the addresses it
//! reserved, in the state directory:
//!
//! - `state.json`: a snapshot of the whole state;
//! - `state.log`: a journal, one JSON line per transaction since the
//!   snapshot, holding only what that transaction changed;
//! - `state.lock`: the `flock` every transaction takes.
//!
//! A transaction (`Store::update`) takes the exclusive lock, catches up with
//! the journal lines other processes appended since it last looked (a second
//! netd, CNI plugin invocations in standalone mode), runs the change on its
//! cached copy, and appends what changed as one line with one write(2). So a
//! transaction costs the same with 1 or 1,000 containers, and no process
//! hands out an address another one holds.
//!
//! Crash safety. A process killed at any point (kill -9) leaves either the
//! whole line or a torn one, which readers ignore and the next writer cuts
//! off: the transaction happened completely or not at all, and every other
//! process sees it at once (it is in the page cache). Appends are not
//! fsynced: only a power loss or a kernel crash could lose them, and those
//! also take every veth, namespace and nft rule with them, so the state
//! reconciliation finds after a reboot is right either way (it removes the
//! endpoints whose namespaces are gone). The fsync is paid where it keeps a
//! file whole: when the journal has grown past 64 KiB and past the snapshot,
//! the state is written as a new snapshot (temporary file, fsync, rename)
//! and the journal removed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use plumb::firewall::PublishedPort;
use plumb::MacAddr;
use serde::{Deserialize, Serialize};

use crate::ipam::Reservations;

mod endpoints;
mod journal;

pub use endpoints::{EndpointMut, Endpoints};

const STATE_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "state.log";
const LOCK_FILE: &str = "state.lock";
/// The journal is folded into a new snapshot once it is longer than this and
/// than the snapshot: the whole-state write is paid once per many records.
const COMPACT_AFTER: u64 = 64 * 1024;
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

    #[error("state journal {path} is corrupt at byte {offset} ({source}); move it aside to fall back to state.json")]
    CorruptJournal {
        path: PathBuf,
        offset: u64,
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

#[cfg(test)]
impl Endpoint {
    /// An attached endpoint for unit tests: container `id` called `name`, in
    /// the namespace with `inode`, at 10.66.0.2/16 with `ports` published
    /// (`[hostip:]hostport:ctrport[/proto]`).
    pub(crate) fn for_tests(id: &str, name: &str, inode: u64, ports: &[&str]) -> Endpoint {
        let ip = "10.66.0.2".parse().unwrap();
        Endpoint {
            id: id.into(),
            name: name.into(),
            netns: format!("/run/netns/{id}").into(),
            netns_inode: inode,
            ifname: "eth0".into(),
            host_ifname: format!("wv{id}"),
            mac: None,
            mtu: None,
            ips: vec!["10.66.0.2/16".parse().unwrap()],
            gateways: vec![],
            ports: ports
                .iter()
                .map(|spec| PublishedPort::parse(spec, ip).unwrap())
                .collect(),
            phase: Phase::Attached,
        }
    }
}

/// Everything in state.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    /// Endpoints by container id.
    /// Shared between the store's copies: an unchanged endpoint is the same
    /// allocation in both.
    pub endpoints: Endpoints,
    pub ipam: Reservations,
}

impl Default for State {
    fn default() -> State {
        State {
            version: STATE_VERSION,
            endpoints: Endpoints::default(),
            ipam: Reservations::default(),
        }
    }
}

impl State {
    /// The endpoint `id`, to change: copied first if the store's other copy
    /// still shares it.
    pub fn endpoint_mut(&mut self, id: &str) -> Option<EndpointMut<'_>> {
        self.endpoints.get_mut(id)
    }

    /// The endpoint whose id or name is `key`.
    pub fn find(&self, key: &str) -> Option<&Endpoint> {
        self.endpoints
            .get(key)
            .or_else(|| self.endpoints.named(key))
            .map(|e| &**e)
    }

    /// Forgets what the last transaction touched: this copy matches the files.
    fn settle(&mut self) {
        self.endpoints.settle();
        self.ipam.settle();
    }

    /// Undoes what was touched since the last `settle`, from `persisted`.
    fn revert_to(&mut self, persisted: &State) {
        self.endpoints.revert_to(&persisted.endpoints);
        self.ipam.revert_to(&persisted.ipam);
    }
}

/// The state directory. Cheap to clone (clones share one cache); holds no
/// file open between calls.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

/// The state as this process last read it, and where in the files that was.
#[derive(Debug, Default)]
struct Cache {
    /// Exactly what the files hold, as of `seen`.
    persisted: State,
    /// A copy a transaction changes; equal to `persisted` between transactions.
    working: State,
    seen: Option<Seen>,
}

/// Which files the cache was read from, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    snapshot: Option<FileId>,
    snapshot_len: u64,
    journal: Option<u64>,
    journal_len: u64,
}

/// A file's identity: inode and change time, which every rename into place renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    ctime: (i64, i64),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Metadata of `path`, None when it does not exist.
fn stat(path: &Path) -> Result<Option<std::fs::Metadata>, StoreError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            action: "stat",
            path: path.to_path_buf(),
            source,
        }),
    }
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
        Ok(Store {
            dir,
            cache: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    fn lock(&self, arg: FlockArg) -> Result<Flock<File>, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open lock file", &path))?;
        Flock::lock(file, arg).map_err(|(_, errno)| StoreError::Io {
            action: "lock",
            path,
            source: std::io::Error::from(errno),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| {
            // A transaction panicked half-way: forget what it left behind.
            let mut cache = poisoned.into_inner();
            cache.seen = None;
            cache
        })
    }

    /// Reads the state under a shared lock.
    pub fn read(&self) -> Result<State, StoreError> {
        self.read_with(State::clone)
    }

    /// Looks at the state under a shared lock without copying it.
    pub fn read_with<T>(&self, look: impl FnOnce(&State) -> T) -> Result<T, StoreError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let mut cache = self.cache();
        self.catch_up(&mut cache, false)?;
        Ok(look(&cache.persisted))
    }

    /// Runs `change` on the state under an exclusive lock and saves the result
    /// when it returns Ok. On Err nothing is written.
    pub fn update<T, E>(&self, change: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let mut guard = self.cache();
        let cache = &mut *guard;
        self.catch_up(cache, true)?;
        let out = match change(&mut cache.working) {
            Ok(out) => out,
            Err(e) => {
                cache.working.revert_to(&cache.persisted);
                return Err(e);
            }
        };
        let record = journal::diff(&cache.persisted, &cache.working);
        if record.is_empty() {
            cache.working.settle();
            return Ok(out);
        }
        if let Err(e) = self.append(cache, &record) {
            cache.working.revert_to(&cache.persisted);
            return Err(e.into());
        }
        cache.working.settle();
        journal::apply(&mut cache.persisted, &record);
        cache.persisted.settle();
        let seen = cache.seen.expect("caught up above");
        if seen.journal_len > COMPACT_AFTER.max(seen.snapshot_len) {
            self.compact(cache)?;
        }
        Ok(out)
    }

    /// Brings the cache up to date with the files: the new journal records
    /// only, unless the snapshot or the journal was replaced since.
    fn catch_up(&self, cache: &mut Cache, exclusive: bool) -> Result<(), StoreError> {
        let state_path = self.state_path();
        let journal_path = self.journal_path();
        let snapshot = stat(&state_path)?;
        let journal = stat(&journal_path)?;
        let snapshot_id = snapshot.as_ref().map(|m| FileId {
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
        });
        let journal_ino = journal.as_ref().map(|m| m.ino());
        let journal_len = journal.as_ref().map_or(0, |m| m.len());
        let from = match cache.seen {
            Some(seen)
                if seen.snapshot == snapshot_id
                    && seen.journal.is_none_or(|ino| Some(ino) == journal_ino)
                    && journal_len >= seen.journal_len =>
            {
                seen.journal_len
            }
            _ => {
                cache.persisted = self.load()?;
                cache.working = cache.persisted.clone();
                0
            }
        };
        cache.seen = Some(Seen {
            snapshot: snapshot_id,
            snapshot_len: snapshot.as_ref().map_or(0, |m| m.len()),
            journal: journal_ino,
            journal_len: from,
        });
        if journal_len == from {
            return Ok(());
        }
        let mut file = File::open(&journal_path).map_err(io("open", &journal_path))?;
        file.seek(SeekFrom::Start(from))
            .map_err(io("read", &journal_path))?;
        let mut text = Vec::with_capacity((journal_len - from) as usize);
        file.read_to_end(&mut text)
            .map_err(io("read", &journal_path))?;
        let (records, used, torn) = match journal::parse(&text) {
            journal::Tail::Clean(records, used) => (records, used, false),
            journal::Tail::Torn(records, used) => (records, used, true),
            journal::Tail::Corrupt { offset, source } => {
                return Err(StoreError::CorruptJournal {
                    path: journal_path,
                    offset: from + offset as u64,
                    source,
                })
            }
        };
        for record in &records {
            journal::apply(&mut cache.persisted, record);
            journal::apply(&mut cache.working, record);
        }
        cache.persisted.settle();
        cache.working.settle();
        let end = from + used as u64;
        if torn && exclusive {
            // What a writer killed mid-write left: never part of a transaction.
            tracing::warn!(path = %journal_path.display(), offset = end, "cutting a torn record off the state journal");
            OpenOptions::new()
                .write(true)
                .open(&journal_path)
                .and_then(|f| f.set_len(end))
                .map_err(io("truncate", &journal_path))?;
        }
        if let Some(seen) = cache.seen.as_mut() {
            seen.journal_len = end;
        }
        Ok(())
    }

    /// Appends one record to the journal: a single write, visible to every
    /// process at once and surviving the death of this one. Not fsynced (see
    /// the module docs).
    fn append(&self, cache: &mut Cache, record: &journal::Change) -> Result<(), StoreError> {
        let path = self.journal_path();
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        file.write_all(&line).map_err(io("append to", &path))?;
        let ino = file.metadata().map_err(io("stat", &path))?.ino();
        let seen = cache.seen.as_mut().expect("caught up before appending");
        seen.journal = Some(ino);
        seen.journal_len += line.len() as u64;
        Ok(())
    }

    /// Writes the whole state as a new snapshot and starts an empty journal.
    /// A crash between the two steps leaves the new snapshot with the old
    /// journal, whose records it already holds: replaying them changes nothing.
    fn compact(&self, cache: &mut Cache) -> Result<(), StoreError> {
        self.save(&cache.persisted)?;
        let journal = self.journal_path();
        match std::fs::remove_file(&journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    action: "remove",
                    path: journal,
                    source,
                })
            }
        }
        let snapshot = stat(&self.state_path())?;
        cache.seen = Some(Seen {
            snapshot: snapshot.as_ref().map(|m| FileId {
                ino: m.ino(),
                ctime: (m.ctime(), m.ctime_nsec()),
            }),
            snapshot_len: snapshot.map_or(0, |m| m.len()),
            journal: None,
            journal_len: 0,
        });
        Ok(())
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

    /// Writes the snapshot: a temporary file, fsynced, renamed into place.
    fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.state_path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
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
        assert_eq!(pool.len(), 100, "addresses were lost or shared");
        for w in 0..4 {
            let held = pool
                .iter()
                .filter(|(_, o)| o.starts_with(&format!("w{w}-")))
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

    fn attached(id: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            name: format!("name-{id}"),
            netns: format!("/run/netns/{id}").into(),
            netns_inode: 1,
            ifname: "eth0".into(),
            host_ifname: crate::endpoints::host_ifname(id),
            mac: None,
            mtu: None,
            ips: vec![],
            gateways: vec![],
            ports: vec![],
            phase: Phase::Attached,
        }
    }

    /// Attaches `id` the way an attach records it: endpoint and address in one transaction.
    fn add(store: &Store, id: &str) {
        store
            .update(|s| -> Result<(), TestError> {
                let ip = s.ipam.allocate("10.66.0.0/16".parse().unwrap(), id, None)?;
                let mut ep = attached(id);
                ep.ips = vec![IpNetwork::new(ip, 16).unwrap()];
                s.endpoints.insert(id.into(), ep.into());
                Ok(())
            })
            .unwrap();
    }

    fn journal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(JOURNAL_FILE)).map_or(0, |m| m.len())
    }

    #[test]
    fn stores_see_each_others_records_and_the_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        assert!(b.read().unwrap().endpoints.is_empty());
        for i in 0..600 {
            add(&a, &format!("c{i}"));
            if i % 97 == 0 {
                // b caught up from its cache, across compactions too.
                assert_eq!(b.read_with(|s| s.endpoints.len()).unwrap(), i + 1);
            }
        }
        b.update(|s| -> Result<(), StoreError> {
            s.endpoints.remove("c5");
            s.ipam.release_owner("c5");
            Ok(())
        })
        .unwrap();
        let snapshot = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .len();
        assert!(snapshot > 0, "600 records never compacted");
        assert!(
            journal_len(dir.path()) <= COMPACT_AFTER.max(snapshot) + 4096,
            "the journal grew past its bound: {} bytes",
            journal_len(dir.path())
        );
        let fresh = Store::open(dir.path()).unwrap().read().unwrap();
        assert_eq!(fresh, a.read().unwrap());
        assert_eq!(fresh.endpoints.len(), 599);
        assert!(fresh.ipam.held_by("c5").is_empty());
        assert_eq!(fresh.ipam.owners().len(), 599);
    }

    #[test]
    fn a_transaction_appends_as_much_with_many_containers_as_with_few() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let appended = |id: &str| {
            let before = journal_len(dir.path());
            add(&store, id);
            journal_len(dir.path()).checked_sub(before)
        };
        for i in 0..3 {
            add(&store, &format!("c{i}"));
        }
        let few = appended("few").unwrap();
        for i in 3..400 {
            add(&store, &format!("c{i}"));
        }
        // The next record right after a compaction would start a new journal.
        let many = (0..3)
            .filter_map(|i| appended(&format!("many{i}")))
            .min()
            .unwrap();
        assert!(
            many <= few + 16,
            "a record grew with the state: {few} → {many} bytes"
        );
    }

    #[test]
    fn a_torn_record_is_ignored_then_cut_off_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add(&store, "a");
        let whole = journal_len(dir.path());
        // A writer killed half-way through its line.
        let mut journal = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        journal
            .write_all(br#"{"endpoints":{"b":{"id":"b","#)
            .unwrap();
        let other = Store::open(dir.path()).unwrap();
        assert_eq!(other.read().unwrap().endpoints.len(), 1);
        add(&other, "c");
        let state = Store::open(dir.path()).unwrap().read().unwrap();
        assert_eq!(
            state.endpoints.keys().collect::<Vec<_>>(),
            vec!["a", "c"],
            "the torn record was not cut off before the next one"
        );
        assert!(journal_len(dir.path()) > whole);
        assert_eq!(store.read().unwrap(), state);
    }

    #[test]
    fn a_corrupt_journal_line_in_the_middle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        add(&store, "a");
        let path = dir.path().join(JOURNAL_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("not json\n{text}")).unwrap();
        let err = Store::open(dir.path()).unwrap().read().unwrap_err();
        assert!(
            err.to_string().contains("state journal") && err.to_string().contains("at byte 0"),
            "{err}"
        );
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
