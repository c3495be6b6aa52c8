//! The cluster: hosts that share one flat container network, coordinated
//! through a [`Store`](crate::store::Store) (etcd in production).
//!
//! - [`records`]: the key layout under `/weft/v1/` and the JSON records.
//! - [`HostId`]: a host's random identity, kept in its state directory.
//! - [`Snapshot`]: the whole cluster in one listing, what a start reads.
//! - [`Member`]: this host's side — `init` the config once, `join` (find
//!   or take a subnet), stay alive on a short lease, publish a new key,
//!   `leave`; `forget` another host; reclaim dead hosts' expired reservations.
//! - [`PeerWatcher`]: everyone else — list, then watch, then list again after
//!   compaction or a disconnect; a typed [`PeerView`] and its [`ViewDiff`]
//!   against the previous view, bad data ignored and counted.
//!
//! Liveness is apart from the reservation: a host whose lease ends is shown
//! dead, and keeps its subnet until it leaves, is forgotten, or its
//! reservation expires (24 h by default). See docs/cluster.md.
//! Nothing here knows about netd or CNI: the caller applies the view.

#![warn(missing_docs)]

mod admin;
pub mod checks;
mod identity;
mod liveness;
mod membership;
mod reclaim;
pub mod records;
mod snapshot;
mod view;
mod watcher;

#[cfg(test)]
mod tests;

pub use admin::{forget, init, read_config};
pub use identity::{HostId, HOST_ID_FILE};
pub use liveness::{LivenessCounters, LivenessTask};
pub use membership::{Clock, HostAdvert, KeptSubnets, Member, SystemClock, Timing};
pub use records::{ClusterConfig, HostRecord};
pub use snapshot::Snapshot;
pub use view::{BadDataReason, HostChange, HostField, HostView, PeerView, Rejection, ViewDiff};
pub use watcher::{PeerWatcher, StoreStatus, ViewUpdate, WatcherSettings};

use crate::store::StoreError;

/// Errors of the cluster's membership; each names the key or host concerned
/// and, where there is one, the way out.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A store call failed; `doing` says what the cluster was doing.
    #[error("{doing}: {source}")]
    Store {
        /// What the cluster was doing.
        doing: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// No config in the store yet.
    #[error("no cluster config at {key}: run `netd cluster init` first")]
    NoConfig {
        /// The config's key.
        key: &'static str,
    },
    /// `init` met a different config already in the store.
    #[error("the store already holds a different cluster config: existing {existing}, wanted {wanted}; a cluster's config is not changed in place")]
    ConfigMismatch {
        /// The stored config (JSON).
        existing: String,
        /// The config asked for (JSON).
        wanted: String,
    },
    /// A config that makes no sense.
    #[error("bad cluster config: {reason}")]
    BadConfig {
        /// What is wrong.
        reason: String,
    },
    /// The stored config cannot be read.
    #[error("cluster config at {key} is unreadable: {reason}")]
    ConfigUnreadable {
        /// The key.
        key: String,
        /// The parser's words.
        reason: String,
    },
    /// This host cannot honour the stored config.
    #[error("host {host} cannot honour the cluster config: {reason}")]
    CannotHonour {
        /// This host.
        host: HostId,
        /// Why.
        reason: String,
    },
    /// Every subnet of the range is held.
    #[error("the cluster's {family} range {range} is full: all {capacity} subnets are held; forget dead hosts (`netd cluster forget`) or init a larger cluster")]
    RangeFull {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The range.
        range: String,
        /// How many subnets it holds.
        capacity: u64,
    },
    /// `forget` of a host that is alive, without force.
    #[error("host {host} ({name}) is alive: stop its netd first, or force")]
    HostAlive {
        /// The host.
        host: HostId,
        /// Its name.
        name: String,
    },
    /// No record of that host.
    #[error("no host {host} in the cluster")]
    UnknownHost {
        /// The host asked for.
        host: String,
    },
    /// This host has not joined (no reservation yet).
    #[error("this host has not joined the cluster yet")]
    NotJoined,
    /// A host running on its saved reservation found, back in the store,
    /// one of its subnets held by another host (forgotten or reclaimed
    /// while it was cut off).
    #[error("host {host} runs containers on {subnet}, but the store now gives that subnet to host {holder}: this host was forgotten or its reservation expired while it was cut off; stop its netd, move its containers off and `netd cluster leave`, or forget host {holder}")]
    ReservationLost {
        /// This host.
        host: HostId,
        /// The subnet lost.
        subnet: String,
        /// The host holding it now.
        holder: String,
    },
    /// Others kept winning the same transaction.
    #[error("{doing}: gave up after {attempts} attempts lost to concurrent changes")]
    Contention {
        /// What the cluster was doing.
        doing: String,
        /// How many times it tried.
        attempts: u32,
    },
    /// The host id file.
    #[error("host id file {}: {reason}", path.display())]
    Identity {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

pub(crate) fn store_error(doing: impl Into<String>) -> impl FnOnce(StoreError) -> ClusterError {
    let doing = doing.into();
    move |source| ClusterError::Store { doing, source }
}
