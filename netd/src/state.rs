//! netd's persistent state: the containers it attached and the addresses it
//! reserved, in the state directory:
//!
//! - `state.json`: a snapshot of the whole state, with the sequence number
//!   of the last transaction it holds and a checksum;
//! - `state.log`: a journal, one line per transaction since the snapshot,
//!   holding only what that transaction changed, with its sequence number
//!   and a checksum;
//! - `state.lock`: the `flock` every transaction takes, holding the head:
//!   the sequence number of the last committed transaction.
//!
//! A transaction (`Store::update`) takes the exclusive lock, catches up with
//! the journal lines other processes appended since it last looked (a second
//! netd, CNI plugin invocations in standalone mode), runs the change on its
//! cached copy, and appends what changed as one line with one write(2). So a
//! transaction costs the same with 1 or 1,000 containers, and no process
//! hands out an address another one holds.
//!
//! Crash safety. A process killed at any point (kill -9) leaves either the
//! whole line or a torn one not counted by the head, which readers ignore
//! and the next writer cuts off: the transaction happened completely or not at all, and every other
//! process sees it at once (it is in the page cache). Appends are not
//! fsynced: only a power loss or a kernel crash could lose them, and those
//! also take every veth, namespace and nft rule with them, so the state
//! reconciliation finds after a reboot is right either way (it removes the
//! endpoints whose namespaces are gone). The fsync is paid where it keeps a
//! file whole: when the journal has grown past 64 KiB and past the snapshot,
//! the state is written as a new snapshot (temporary file, fsync, rename)
//! and the journal removed.
//!
//! Damage (a flipped bit, a file cut short or overwritten) is told from a
//! crash by the checksums, the sequence numbers and the head (see
//! `format.rs` and `Store::catch_up`): a damaged state is refused with
//! `StoreError::Damaged`, never guessed at, and `netd recover` rebuilds it
//! from the kernel.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::ports::mapping::PublishedPort;
use ipnetwork::IpNetwork;
use plumb::MacAddr;
use serde::{Deserialize, Serialize};

use crate::ipam::Reservations;

mod endpoints;
mod format;
mod journal;
mod salvage;
mod snapshot;
mod store;

pub use endpoints::{EndpointMut, Endpoints};
pub use format::FORMAT;
pub use salvage::{Replaced, Salvage};
pub use store::Store;

/// netd's exit status when it refuses to run on damaged state files: the
/// service unit does not restart it on this one (`RestartPreventExitStatus=`).
pub const EXIT_DAMAGED_STATE: i32 = 65;

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

    /// A state file is not what netd wrote: a record fails its checksum or
    /// does not parse, the sequence has a hole, the journal is shorter than
    /// what was committed, or the snapshot fails its checksum.
    #[error("state file {path} is damaged: {problem}. netd does not act on a state it would have to guess at (it could cut live containers off or bring back detached ones): stop netd and run `netd recover`, which rebuilds the state from the containers' links in the kernel (`netd recover --dry-run` shows what it would do first)")]
    Damaged { path: PathBuf, problem: String },

    #[error(
        "state file {path} has format version {found}, this netd reads version {STATE_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
}

impl StoreError {
    /// True for damaged state files, which `netd recover` repairs.
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Damaged { .. })
    }
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
    /// Routes on `ifname` beside the default ones (a delegated IPAM's).
    /// Absent from state written before they existed: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ContainerRoute>,
    /// Addresses this endpoint needs on the bridge beside netd's own
    /// gateways (a delegated IPAM's gateways); one goes when no endpoint
    /// needs it any more. Absent from older state: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_addresses: Vec<IpNetwork>,
    /// The names the network's DNS server answers for it, the primary one
    /// (PTR's answer) first, lowercase; empty: none. Absent in older state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(flatten)]
    pub phase: Phase,
}

/// A route in a container's namespace, out of its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRoute {
    /// The destination prefix, its host bits zero.
    pub dst: IpNetwork,
    /// The next hop; none for a route straight out of the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// The route's priority; the kernel's default when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// The routing table; main when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
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
            routes: vec![],
            bridge_addresses: vec![],
            dns_names: vec![],
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

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod full_disk_tests;
#[cfg(test)]
mod tests;
