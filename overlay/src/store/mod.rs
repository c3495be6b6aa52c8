//! The cluster store: a small key-value interface with revisions,
//! transactions, leases and watches — the part of etcd's v3 API the cluster
//! needs, and nothing more.
//!
//! Two backends implement [`Store`]: [`EtcdStore`] (a real etcd, 3.4 or newer)
//! and [`MemoryStore`] (in-process, for unit tests; same semantics, with a
//! clock that `tokio::time::pause` controls). [`conformance::run`] is the one
//! suite both must pass.
//!
//! Semantics shared by both (they are etcd's):
//! - every change bumps one store-wide revision; a transaction is one revision;
//! - a listing carries the revision it was read at, so a watch from the next
//!   revision misses nothing;
//! - a watch from a revision older than the last compaction fails with
//!   [`StoreError::Compacted`] carrying the compaction revision: list again;
//! - keys put with a lease vanish (one delete event each) when the lease
//!   expires or is revoked.

#![warn(missing_docs)]

pub mod conformance;
mod etcd;
mod memory;

pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use memory::MemoryStore;

use std::future::Future;
use std::time::Duration;

/// A store-wide revision number (etcd's `mod_revision` and header revision).
pub type Revision = i64;

/// A lease's id as the store assigned it.
pub type LeaseId = i64;

/// One key as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The value, as bytes (the cluster writes JSON; bad data is its problem).
    pub value: Vec<u8>,
    /// The revision that created the key (it resets when a key is deleted and re-created).
    pub create_revision: Revision,
    /// The revision of the key's last change.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, read at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The store's revision when the listing was read; watch from `revision + 1`.
    pub revision: Revision,
    /// The keys, sorted by key.
    pub entries: Vec<KeyValue>,
}

/// A condition a transaction checks before it applies its success branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist (etcd: `create_revision == 0`).
    Absent(String),
    /// The key's `mod_revision` equals this (0 also matches an absent key, as in etcd).
    ModRevision(String, Revision),
    /// The key exists and its value equals this.
    ValueEquals(String, Vec<u8>),
}

/// One write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Sets a key, attached to `lease` when given (detached otherwise).
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The lease to attach it to.
        lease: Option<LeaseId>,
    },
    /// Removes a key; removing an absent key is not an error.
    Delete(String),
}

impl Operation {
    /// A put without a lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Operation {
        Operation::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
}

/// An atomic compare-then-write: all `compares` hold → `on_success` runs, else `on_failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// The writes applied when they hold.
    pub on_success: Vec<Operation>,
    /// The writes applied when one does not.
    pub on_failure: Vec<Operation>,
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (and `on_success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The id to attach keys with and keep alive.
    pub id: LeaseId,
    /// The TTL the store granted (it may round up a TTL it finds too short).
    pub ttl: Duration,
}

/// One change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted (explicitly or by its lease's end) at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// Errors of every store backend. Each says what was asked and of which store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time; retry later.
    #[error("store {endpoints} unavailable during {operation}: {reason}")]
    Unavailable {
        /// The store's endpoints, as configured.
        endpoints: String,
        /// What was being done.
        operation: &'static str,
        /// The transport's or server's words.
        reason: String,
    },
    /// A watch's start revision was compacted away: list again and watch from the listing.
    #[error("watch start revision was compacted (store compacted up to revision {compact_revision}); list again")]
    Compacted {
        /// The oldest revision the store still has.
        compact_revision: Revision,
    },
    /// The lease expired, was revoked or never existed.
    #[error("lease {lease:x} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease asked about.
        lease: LeaseId,
    },
    /// The watch stream ended (a disconnect or a server-side cancel): list again.
    #[error("watch on {prefix} ended: {reason}; list again")]
    WatchEnded {
        /// The watched prefix.
        prefix: String,
        /// Why, as far as it is known.
        reason: String,
    },
    /// The store refused the request (permissions, bad arguments).
    #[error("store refused {operation}: {reason}")]
    Rejected {
        /// What was being done.
        operation: &'static str,
        /// The server's words.
        reason: String,
    },
    /// The store's client configuration is unusable (a missing certificate file, no endpoint).
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// True for errors that pass with time (outage, disconnect): retrying makes sense.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::WatchEnded { .. }
        )
    }
}

/// A store backend. Methods return `Send` futures so callers can spawn them.
pub trait Store: Send + Sync + 'static {
    /// The watch stream this backend hands out.
    type Watch: Watch;

    /// Every key under `prefix`, with the revision they were read at.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// Runs a transaction atomically.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;

    /// Grants a lease of `ttl` (whole seconds, rounded up; at least 1 s).
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Renews a lease once; returns the TTL it has again.
    /// [`StoreError::LeaseNotFound`] when it already ended.
    fn keep_alive(
        &self,
        lease: LeaseId,
    ) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// Ends a lease now, deleting its keys. [`StoreError::LeaseNotFound`] when it already ended.
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Watches every key under `prefix`, reporting changes from revision `from` on.
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
}

/// A running watch: batches of changes in revision order.
pub trait Watch: Send {
    /// The next batch of changes (never empty). An error ends the watch:
    /// [`StoreError::Compacted`] or a transient error mean "list again".
    /// Cancel safe: a `next` dropped before it is ready loses no change (the
    /// watcher waits for it and a timer together).
    fn next(&mut self) -> impl Future<Output = Result<Vec<WatchEvent>, StoreError>> + Send;
}

/// A TTL in whole seconds as leases take it: rounded up, at least 1.
pub(crate) fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1) as i64
}
