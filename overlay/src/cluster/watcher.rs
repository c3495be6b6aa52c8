//! Following the cluster: list `/weft/v1/` at revision R, watch from R+1,
//! list again after a compaction or a disconnect. While the store is down the
//! last view stays and the watcher retries with bounded, jittered backoff.
//! Container names (`names/`) are not part of the peer view: their events
//! are skipped without rebuilding it (netd follows them on its own).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::records::{ClusterConfig, NAMES, ROOT};
use super::view::{build, BadDataReason, PeerView, RecordCache, ViewDiff};
use super::Snapshot;
use crate::store::{KeyValue, Listing, Revision, Store, StoreError, Watch, WatchEvent};

/// Retry pacing while the store is unreachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatcherSettings {
    /// The first retry's delay.
    pub backoff_min: Duration,
    /// The longest delay between retries.
    pub backoff_max: Duration,
    /// For tests: a pause between the first listing and its watch, in which a
    /// test compacts the store to drive the watcher through a re-list.
    pub hold_after_first_list: Option<Duration>,
    /// The shortest time between two views built while changes keep coming
    /// (a view is built from every key: in a storm of starts, once per
    /// batch would be quadratic).
    pub build_gap: Duration,
}

impl Default for WatcherSettings {
    fn default() -> Self {
        WatcherSettings {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            hold_after_first_list: None,
            build_gap: Duration::from_millis(50),
        }
    }
}

/// The store as the watcher last found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStatus {
    /// Whether the last call succeeded.
    pub up: bool,
    /// The last error, kept after recovery.
    pub last_error: Option<String>,
    /// When `up` last changed.
    pub since: Option<SystemTime>,
}

/// A new view and what changed from the previous one.
#[derive(Clone, Debug)]
pub struct ViewUpdate {
    /// The whole view.
    pub view: Arc<PeerView>,
    /// The difference to apply.
    pub diff: ViewDiff,
}

struct Shared {
    status: Mutex<StoreStatus>,
    view: watch::Sender<Arc<PeerView>>,
    bad_data: Mutex<BTreeMap<BadDataReason, u64>>,
    relists: AtomicU64,
}

/// The running watcher; it stops when dropped.
pub struct PeerWatcher {
    handle: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Drop for PeerWatcher {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl PeerWatcher {
    /// Starts following the cluster in `store`. `config` pins the config the
    /// host runs with (a changed stored config is then refused as bad data).
    /// Updates arrive on the returned channel, the first with every host added.
    pub fn spawn<S: Store>(
        store: Arc<S>,
        config: Option<ClusterConfig>,
        settings: WatcherSettings,
    ) -> (PeerWatcher, mpsc::UnboundedReceiver<ViewUpdate>) {
        Self::spawn_with(store, config, settings, None)
    }

    /// [`PeerWatcher::spawn`] whose first view is `snapshot` (read at the
    /// start, a moment ago) and whose watch starts right after it: no second
    /// listing. Later listings (compaction, a reconnect) read the store.
    pub fn spawn_from<S: Store>(
        store: Arc<S>,
        config: Option<ClusterConfig>,
        settings: WatcherSettings,
        snapshot: Snapshot,
    ) -> (PeerWatcher, mpsc::UnboundedReceiver<ViewUpdate>) {
        Self::spawn_with(store, config, settings, Some(snapshot.listing))
    }

    fn spawn_with<S: Store>(
        store: Arc<S>,
        config: Option<ClusterConfig>,
        settings: WatcherSettings,
        first: Option<Listing>,
    ) -> (PeerWatcher, mpsc::UnboundedReceiver<ViewUpdate>) {
        let shared = Arc::new(Shared {
            status: Mutex::default(),
            view: watch::Sender::new(Arc::default()),
            bad_data: Mutex::default(),
            relists: AtomicU64::default(),
        });
        let (updates, receiver) = mpsc::unbounded_channel();
        let follower = Follower {
            store,
            pinned: config,
            settings,
            shared: shared.clone(),
            updates,
            keys: BTreeMap::new(),
            counted: HashSet::new(),
            first,
            records: RecordCache::default(),
        };
        let handle = tokio::spawn(follower.run());
        (PeerWatcher { handle, shared }, receiver)
    }

    /// The current view (the last one built; kept while the store is down).
    pub fn view(&self) -> Arc<PeerView> {
        self.shared.view.borrow().clone()
    }

    /// The view as it changes, for tasks that read it on their own periods
    /// (the liveness task's reclaim sweep).
    pub fn views(&self) -> watch::Receiver<Arc<PeerView>> {
        self.shared.view.subscribe()
    }

    /// The store's status.
    pub fn status(&self) -> StoreStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keys ignored as bad data, by reason (each key revision counted once).
    pub fn bad_data(&self) -> BTreeMap<BadDataReason, u64> {
        self.shared
            .bad_data
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times the watcher listed again (after compaction or a disconnect).
    pub fn relists(&self) -> u64 {
        self.shared.relists.load(Ordering::Relaxed)
    }
}

struct Follower<S> {
    store: Arc<S>,
    pinned: Option<ClusterConfig>,
    settings: WatcherSettings,
    shared: Arc<Shared>,
    updates: mpsc::UnboundedSender<ViewUpdate>,
    keys: BTreeMap<String, KeyValue>,
    counted: HashSet<(String, Revision, BadDataReason)>,
    /// The listing to start from instead of reading one (a start's snapshot).
    first: Option<Listing>,
    records: RecordCache,
}

impl<S: Store> Follower<S> {
    async fn run(mut self) {
        let mut backoff = self.settings.backoff_min;
        let mut first = true;
        loop {
            if !first {
                self.shared.relists.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let error = match self.follow().await {
                Ok(never) => match never {},
                Err(e) => e,
            };
            match &error {
                StoreError::Compacted { compact_revision } => {
                    tracing::info!("cluster watch hit compaction at revision {compact_revision}; listing again");
                    backoff = self.settings.backoff_min;
                    continue;
                }
                e => {
                    self.set_status(false, Some(e.to_string()));
                    tracing::warn!("cluster store: {e}; retrying in about {backoff:?}");
                }
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    /// Lists, then watches; returns only with the error that ended the watch.
    async fn follow(&mut self) -> Result<std::convert::Infallible, StoreError> {
        let listing = match self.first.take() {
            Some(listing) => listing,
            None => self.store.list(ROOT).await?,
        };
        self.set_status(true, None);
        self.keys = listing
            .entries
            .into_iter()
            .filter(|kv| is_peer_key(&kv.key))
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        self.publish(listing.revision);
        if let Some(hold) = self.settings.hold_after_first_list.take() {
            tokio::time::sleep(hold).await;
        }
        let mut watch = self.store.watch(ROOT, listing.revision + 1).await?;
        let mut revision = listing.revision;
        // Hosts starting together bring a batch each: a change after a quiet
        // spell is built into a view at once, later ones at most every
        // `build_gap`, each view taking every batch that came meanwhile.
        let gap = self.settings.build_gap;
        let mut built = Instant::now();
        let mut unbuilt = false;
        loop {
            let events = if unbuilt {
                tokio::select! {
                    events = watch.next() => events?,
                    () = tokio::time::sleep_until(built + gap) => Vec::new(),
                }
            } else {
                watch.next().await?
            };
            unbuilt |= self.take(events, &mut revision);
            if unbuilt && built.elapsed() >= gap {
                self.publish(revision);
                built = Instant::now();
                unbuilt = false;
            }
        }
    }

    /// Applies watch events to the keys; true when a peer key changed.
    fn take(&mut self, events: Vec<WatchEvent>, revision: &mut Revision) -> bool {
        let mut relevant = false;
        for event in events {
            if !is_peer_key(event.key()) {
                continue;
            }
            relevant = true;
            *revision = (*revision).max(event.revision());
            match event {
                WatchEvent::Put(kv) => {
                    self.keys.insert(kv.key.clone(), kv);
                }
                WatchEvent::Delete { key, .. } => {
                    self.keys.remove(&key);
                }
            }
        }
        relevant
    }

    fn publish(&mut self, revision: Revision) {
        let (view, rejections) = build(
            &self.keys,
            self.pinned.as_ref(),
            revision,
            &mut self.records,
        );
        if self.pinned.is_none() {
            self.pinned = view.config.clone();
        }
        for r in rejections {
            if self
                .counted
                .insert((r.key.clone(), r.mod_revision, r.reason))
            {
                tracing::warn!(key = %r.key, reason = r.reason.as_str(), "ignored bad cluster data: {}", r.detail);
                *self
                    .shared
                    .bad_data
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(r.reason)
                    .or_default() += 1;
            }
        }
        let view = Arc::new(view);
        let previous = self.shared.view.send_replace(view.clone());
        let diff = ViewDiff::between(&previous, &view);
        if !diff.is_empty() {
            // A receiver that went away only means nobody applies updates any more.
            let _ = self.updates.send(ViewUpdate { view, diff });
        }
    }

    fn set_status(&self, up: bool, error: Option<String>) {
        let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.up != up || status.since.is_none() {
            status.since = Some(SystemTime::now());
        }
        status.up = up;
        if error.is_some() {
            status.last_error = error;
        }
    }
}

/// Whether a key under `/weft/v1/` is part of the peer view.
fn is_peer_key(key: &str) -> bool {
    !key.starts_with(NAMES)
}

/// `delay` scaled by a random factor in [0.5, 1.5), so hosts cut off together do not retry together.
fn jitter(delay: Duration) -> Duration {
    let factor = 0.5 + (random_u64() % 1000) as f64 / 1000.0;
    delay.mul_f64(factor)
}

/// A random number from the kernel (a few per second at most: no generator needed).
pub(super) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the fallback (the clock) still spreads hosts apart.
    if getrandom::getrandom(&mut bytes).is_err() {
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    }
    u64::from_le_bytes(bytes)
}
