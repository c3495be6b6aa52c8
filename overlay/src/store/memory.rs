//! The in-memory store, for unit tests: etcd's semantics (one revision per
//! change, leases that expire, compaction, watches from a revision) in a map.
//! Lease expiry follows `tokio::time`, so a test that pauses tokio's clock
//! controls it. [`MemoryStore::set_available`] simulates an outage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch as notify;
use tokio::time::Instant;

use super::{
    ttl_seconds, Compare, KeyValue, Lease, LeaseId, Listing, Operation, Revision, Store,
    StoreError, Txn, TxnOutcome, Watch, WatchEvent,
};

const NAME: &str = "memory://";

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct State {
    revision: Revision,
    compacted: Revision,
    kv: BTreeMap<String, KeyValue>,
    history: Vec<WatchEvent>,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: LeaseId,
    available: bool,
    /// Bumped on outage so running watches end as a disconnect would end them.
    generation: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: notify::Sender<Revision>,
}

/// An in-process store with etcd's semantics. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 1, as a fresh etcd starts.
    pub fn new() -> MemoryStore {
        let (changed, _) = notify::channel(1);
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    revision: 1,
                    compacted: 0,
                    kv: BTreeMap::new(),
                    history: Vec::new(),
                    leases: HashMap::new(),
                    next_lease: 0x7e57_0000,
                    available: true,
                    generation: 0,
                }),
                changed,
            }),
        }
    }

    /// Forgets the history before `revision`: watches from an older revision
    /// then fail with [`StoreError::Compacted`].
    pub fn compact(&self, revision: Revision) {
        let mut state = self.lock();
        let revision = revision.min(state.revision);
        state.compacted = state.compacted.max(revision);
        state.history.retain(|e| e.revision() >= revision);
    }

    /// Simulates an outage (`false`: every call fails as unavailable and
    /// running watches end) and the store's return (`true`).
    pub fn set_available(&self, available: bool) {
        let mut state = self.lock();
        state.available = available;
        if !available {
            state.generation += 1;
        }
        let revision = state.revision;
        drop(state);
        self.shared.changed.send_replace(revision);
    }

    /// The store's current revision.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the state after ending expired leases; fails during an outage.
    fn live_state(
        &self,
        operation: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        let mut state = self.lock();
        if !state.available {
            return Err(StoreError::Unavailable {
                endpoints: NAME.into(),
                operation,
                reason: "the memory store is switched off (simulated outage)".into(),
            });
        }
        if state.expire_leases(Instant::now()) {
            self.shared.changed.send_replace(state.revision);
        }
        Ok(state)
    }

    fn notify(&self, revision: Revision) {
        self.shared.changed.send_replace(revision);
    }
}

impl State {
    /// Ends leases past their deadline, deleting their keys in one revision each.
    fn expire_leases(&mut self, now: Instant) -> bool {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.end_lease(*id);
        }
        !expired.is_empty()
    }

    fn end_lease(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        if !lease.keys.is_empty() {
            self.revision += 1;
            for key in lease.keys {
                self.delete_key(&key);
            }
        }
        true
    }

    fn delete_key(&mut self, key: &str) -> bool {
        let Some(old) = self.kv.remove(key) else {
            return false;
        };
        if let Some(lease) = old.lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
        self.history.push(WatchEvent::Delete {
            key: key.to_string(),
            revision: self.revision,
        });
        true
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.kv.contains_key(key),
            Compare::ModRevision(key, revision) => {
                self.kv.get(key).map_or(0, |kv| kv.mod_revision) == *revision
            }
            Compare::ValueEquals(key, value) => {
                self.kv.get(key).is_some_and(|kv| &kv.value == value)
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.deadline).min()
    }
}

impl Store for MemoryStore {
    type Watch = MemoryWatch;

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.live_state("list")?;
        let entries = state
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Listing {
            revision: state.revision,
            entries,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let mut state = self.live_state("transaction")?;
        let succeeded = txn.compares.iter().all(|c| state.holds(c));
        let ops = if succeeded {
            txn.on_success
        } else {
            txn.on_failure
        };
        // Check every lease before writing anything: a transaction is all or nothing.
        for op in &ops {
            if let Operation::Put {
                lease: Some(id), ..
            } = op
            {
                if !state.leases.contains_key(id) {
                    return Err(StoreError::LeaseNotFound { lease: *id });
                }
            }
        }
        let writes = ops.iter().any(|op| match op {
            Operation::Put { .. } => true,
            Operation::Delete(key) => state.kv.contains_key(key),
        });
        if writes {
            state.revision += 1;
            let revision = state.revision;
            for op in ops {
                match op {
                    Operation::Put { key, value, lease } => {
                        let old = state.kv.get(&key).cloned();
                        if let Some(old_lease) = old.as_ref().and_then(|o| o.lease) {
                            if let Some(l) = state.leases.get_mut(&old_lease) {
                                l.keys.remove(&key);
                            }
                        }
                        if let Some(l) = lease.and_then(|id| state.leases.get_mut(&id)) {
                            l.keys.insert(key.clone());
                        }
                        let kv = KeyValue {
                            key: key.clone(),
                            value,
                            create_revision: old.map_or(revision, |o| o.create_revision),
                            mod_revision: revision,
                            lease,
                        };
                        state.history.push(WatchEvent::Put(kv.clone()));
                        state.kv.insert(key, kv);
                    }
                    Operation::Delete(key) => {
                        state.delete_key(&key);
                    }
                }
            }
            self.notify(revision);
        }
        Ok(TxnOutcome {
            succeeded,
            revision: state.revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let mut state = self.live_state("grant lease")?;
        let ttl = Duration::from_secs(ttl_seconds(ttl) as u64);
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(
            id,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        drop(state);
        // Watches sleep until the earliest deadline: let them see this one.
        self.notify(self.revision());
        Ok(Lease { id, ttl })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let mut state = self.live_state("keep lease alive")?;
        let l = state
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound { lease })?;
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.live_state("revoke lease")?;
        if !state.end_lease(lease) {
            return Err(StoreError::LeaseNotFound { lease });
        }
        let revision = state.revision;
        drop(state);
        self.notify(revision);
        Ok(())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<MemoryWatch, StoreError> {
        let state = self.live_state("watch")?;
        Ok(MemoryWatch {
            store: self.clone(),
            prefix: prefix.to_string(),
            next: from,
            generation: state.generation,
            changed: self.shared.changed.subscribe(),
        })
    }
}

/// A watch on a [`MemoryStore`].
pub struct MemoryWatch {
    store: MemoryStore,
    prefix: String,
    next: Revision,
    generation: u64,
    changed: notify::Receiver<Revision>,
}

impl MemoryWatch {
    /// Events due now, or the deadline of the next lease to expire.
    fn poll_events(&mut self) -> Result<(Vec<WatchEvent>, Option<Instant>), StoreError> {
        let mut state = self.store.lock();
        if !state.available || state.generation != self.generation {
            return Err(StoreError::WatchEnded {
                prefix: self.prefix.clone(),
                reason: "the memory store went away (simulated outage)".into(),
            });
        }
        if state.expire_leases(Instant::now()) {
            self.store.notify(state.revision);
        }
        if self.next < state.compacted {
            return Err(StoreError::Compacted {
                compact_revision: state.compacted,
            });
        }
        let events: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|e| e.revision() >= self.next && e.key().starts_with(&self.prefix))
            .cloned()
            .collect();
        if let Some(last) = events.last() {
            self.next = last.revision() + 1;
        }
        Ok((events, state.next_deadline()))
    }
}

impl Watch for MemoryWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            self.changed.borrow_and_update();
            let (events, deadline) = self.poll_events()?;
            if !events.is_empty() {
                return Ok(events);
            }
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.changed.changed() => {
                    if changed.is_err() {
                        return Err(StoreError::WatchEnded {
                            prefix: self.prefix.clone(),
                            reason: "the memory store was dropped".into(),
                        });
                    }
                }
                () = sleep => {}
            }
        }
    }
}
