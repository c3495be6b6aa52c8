//! netd's side of the cluster (`[cluster] store`): at start, read the
//! cluster's config from the store, load or create this host's id, join
//! (the same subnet across restarts), publish the overlay key, endpoint and
//! subnets, and go alive on the liveness lease; then follow the other hosts
//! with `overlay::cluster::PeerWatcher` and hand each new view to the overlay
//! service, which applies the difference through the path the static list
//! uses. Membership, liveness and bad data are the `overlay::cluster`
//! library's; this part wires them to the daemon and reports them.
//!
//! - `mod.rs`: [`ClusterHost`]: join, follow, leave;
//! - `names.rs`: this host's container names published under
//!   `names/<id>` on the liveness lease, the others' followed into the
//!   name table;
//! - `offline.rs`: a start while the store is down, from the saved
//!   reservation and view, and the join once the store answers;
//! - `report.rs`: `netd cluster status|hosts`, the metrics;
//! - `reservation.rs`: the reservation kept in the state directory for the
//!   CNI plugin's standalone mode;
//! - `saved_view.rs`: the last view, kept in the state directory;
//! - `start.rs`: the store's client, the membership, the advertised
//!   endpoint and the `subnet` key checks a start needs.
//!
//! While the store is down nothing is removed: the watcher keeps the last
//! view, the liveness task retries, both count and report it. A netd that
//! starts then runs from what it saved (see `offline.rs`).

mod names;
mod offline;
mod report;
mod reservation;
mod saved_view;
mod start;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::overlay::cluster::{
    ClusterError, HostAdvert, HostId, HostRecord, LivenessTask, Member, PeerView, PeerWatcher,
    Snapshot, ViewUpdate, WatcherSettings,
};
use ::overlay::store::{EtcdStore, Listing};
use plumb::Netns;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use report::{ClusterStatus, ForgetRequest, HostEntry, NamesStatus};
pub use reservation::{Reservation, RESERVATION_FILE};
pub use saved_view::{SavedView, SAVED_VIEW_FILE};
pub use start::open_store;
use start::{
    advertised_endpoint, apply_reservation, check_given_subnets, hostname, member_of, Start,
};

use crate::action::Action;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::overlay::{load_or_generate_key, ClusterHostInfo, OverlayPeer, PeerOrigin};

/// The shortest time between two views applied to the overlay (see `follow`).
const APPLY_GAP: Duration = Duration::from_millis(100);

/// This host's membership and its view of the others.
pub struct ClusterHost {
    member: Arc<Member<EtcdStore>>,
    store: Arc<EtcdStore>,
    name: String,
    advert: HostAdvert,
    state_dir: PathBuf,
    record: Mutex<HostRecord>,
    cluster: ::overlay::cluster::ClusterConfig,
    /// False while netd runs from its saved reservation and view, until the
    /// store answers and the join is done (see `offline.rs`).
    joined: AtomicBool,
    /// Why the join after a start without the store has not happened yet.
    join_error: Mutex<Option<String>>,
    /// Going alive after the start (or, after a start without the store,
    /// joining first), in the background.
    going_alive: Mutex<Option<JoinHandle<()>>>,
    /// The watcher's latest view (the saved one until its first listing):
    /// status, `forget HOST` and the liveness task's reclaim sweep read it.
    views: watch::Sender<Arc<PeerView>>,
    liveness: Mutex<Option<LivenessTask>>,
    watcher: Mutex<Option<PeerWatcher>>,
    /// The join's listing, which the watcher starts from (taken by `follow`).
    join_snapshot: Mutex<Option<Snapshot>>,
    /// The names keys of that listing, which the names follower starts from.
    names_at_join: Mutex<Option<Listing>>,
    applied: Mutex<AppliedStats>,
    names_counters: names::NamesCounters,
    left: watch::Sender<bool>,
}

impl Drop for ClusterHost {
    fn drop(&mut self) {
        if let Some(task) = self
            .going_alive
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[derive(Debug, Default, Clone)]
struct AppliedStats {
    revision: i64,
    last: Option<Duration>,
    count: u64,
    errors: u64,
}

impl ClusterHost {
    /// Joins the cluster of `config.cluster.store` and rewrites `config`
    /// for it: the host's subnets from the reservation, the overlay on, its
    /// port and range from the cluster's config. Refuses a `subnet` or
    /// `subnet6` key that differs from the reservation.
    pub async fn join(config: &mut Config, host_ns: &Netns) -> Result<ClusterHost> {
        let settings = config
            .cluster
            .store
            .clone()
            .ok_or_else(|| Error::InvalidInput("cluster: no store configured".into()))?;
        let store = Arc::new(open_store(&settings)?);
        let id = HostId::load_or_create(&config.state_dir)?;
        let start = Start {
            store,
            settings,
            key: load_or_generate_key(&config.overlay_key_file())?,
            name: match &config.cluster.host_name {
                Some(name) => name.clone(),
                None => hostname(),
            },
            saved: Reservation::read(&config.state_dir)?.filter(|r| r.host_id == id.as_str()),
            id,
        };
        // One listing serves the config, this host's record, the join and
        // the watcher's first view.
        let mut snapshot = match Snapshot::read(start.store.as_ref()).await {
            Ok(snapshot) => snapshot,
            Err(ClusterError::Store { source, .. }) if source.is_transient() => {
                return offline::start(config, host_ns, start, source);
            }
            Err(e) => return Err(e.into()),
        };
        let cluster = snapshot.config()?;
        let endpoint = advertised_endpoint(config, &start.settings, host_ns, cluster.overlay_port)?;
        let advert = HostAdvert {
            name: start.name.clone(),
            public_key: start.key.public_key(),
            endpoint: Some(endpoint),
        };
        let member = member_of(config, &start);
        // Refuse a `subnet` key before writing anything to the store.
        check_given_subnets(config, snapshot.record(&start.id).as_ref())?;
        // A host whose record went while it was away takes its old
        // subnets back when they are free.
        let kept = start.saved.as_ref().map(|r| r.kept(false));
        let record = member
            .join_from(&mut snapshot, &advert, kept.as_ref())
            .await?;
        apply_reservation(config, &record, &cluster)?;
        Reservation::of(&record, &cluster).write(&config.state_dir)?;
        tracing::info!(
            host = %start.id,
            name = %start.name,
            subnet = %record.ipv4_subnet,
            subnet6 = ?record.ipv6_subnet,
            %endpoint,
            key_epoch = record.key_epoch,
            "joined the cluster"
        );
        let host = ClusterHost::new(
            config,
            start,
            member,
            advert,
            record,
            cluster,
            PeerView::default(),
            true,
        );
        *host.names_at_join.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(snapshot.under(::overlay::cluster::records::NAMES));
        *host.join_snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
        Ok(host)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &Config,
        start: Start,
        member: Arc<Member<EtcdStore>>,
        advert: HostAdvert,
        record: HostRecord,
        cluster: ::overlay::cluster::ClusterConfig,
        view: PeerView,
        joined: bool,
    ) -> ClusterHost {
        ClusterHost {
            member,
            store: start.store,
            name: start.name,
            advert,
            state_dir: config.state_dir.clone(),
            record: Mutex::new(record),
            cluster,
            joined: AtomicBool::new(joined),
            join_error: Mutex::new(None),
            going_alive: Mutex::new(None),
            views: watch::Sender::new(Arc::new(view)),
            liveness: Mutex::new(None),
            watcher: Mutex::new(None),
            join_snapshot: Mutex::new(None),
            names_at_join: Mutex::new(None),
            applied: Mutex::new(AppliedStats::default()),
            names_counters: names::NamesCounters::default(),
            left: watch::channel(false).0,
        }
    }

    /// Whether this host has joined (false while it runs from its saved
    /// reservation and view because the store was down at its start).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// Shows this host alive (a new liveness lease) and keeps it so, in the
    /// background: the host serves its containers meanwhile (two writes to
    /// the store need not hold up its start). Called once the overlay device
    /// is up: peers take the new liveness key of a host that joined again for
    /// a restart, and start a new session. A host that started without the
    /// store goes alive once it has joined (see `offline.rs`).
    pub fn go_alive(self: &Arc<Self>) {
        let task = if self.joined() {
            let host = self.clone();
            tokio::spawn(async move {
                if let Err(e) = host.go_alive_now().await {
                    // The liveness task grants a lease when it finds none.
                    tracing::warn!(host = %host.id(), "{e}; trying again");
                    let task = host
                        .member
                        .spawn_liveness(host.name.clone(), host.views.subscribe());
                    *host.liveness.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                }
            })
        } else {
            tokio::spawn(self.clone().join_when_the_store_answers())
        };
        *self.going_alive.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    async fn go_alive_now(&self) -> Result<()> {
        self.member.go_alive(&self.name).await?;
        let task = self
            .member
            .spawn_liveness(self.name.clone(), self.views.subscribe());
        *self.liveness.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        tracing::info!(host = %self.id(), "alive in the cluster");
        Ok(())
    }

    /// This host's id.
    pub fn id(&self) -> &HostId {
        self.member.id()
    }

    /// Follows the other hosts until `stopped`: each new view goes to
    /// `apply` (the overlay service's `set_store_peers`) as the whole set of
    /// store peers; the service changes only what differs.
    pub async fn follow<F, Fut>(self: Arc<Self>, apply: F, mut stopped: watch::Receiver<bool>)
    where
        F: Fn(Vec<OverlayPeer>) -> Fut,
        Fut: Future<Output = (Vec<Action>, Vec<String>)>,
    {
        let first = self
            .join_snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (store, config, settings) = (
            self.store.clone(),
            Some(self.cluster.clone()),
            WatcherSettings::default(),
        );
        let (watcher, mut updates) = match first {
            Some(snapshot) => PeerWatcher::spawn_from(store, config, settings, snapshot),
            None => PeerWatcher::spawn(store, config, settings),
        };
        // Every view the watcher builds, also those that change nothing a
        // peer needs (a reservation refreshed): the reclaim sweep reads
        // reservation ends from it. The saved view stays until the first.
        let mut built = watcher.views();
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        let mut saver =
            saved_view::ViewSaver::new(&self.state_dir, self.id(), saved_view::FIRST_SAVE_AFTER);
        let mut last_apply = None;
        loop {
            let due = saver.due();
            let update: ViewUpdate = tokio::select! {
                u = updates.recv() => match u { Some(u) => u, None => return },
                Ok(()) = built.changed() => {
                    self.views.send_replace(built.borrow_and_update().clone());
                    continue;
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    saver.flush();
                    continue;
                }
                _ = stopped.changed() => {
                    saver.flush();
                    return;
                }
            };
            // Coalesce a burst: only the latest view matters. Applying
            // checks the overlay against the kernel, so in a storm (every
            // host of a cluster starting at once) views are applied at most
            // every APPLY_GAP; at rest a change is applied at once.
            let mut update = update;
            if let Some(next) = last_apply.map(|t: Instant| t + APPLY_GAP) {
                if Instant::now() < next {
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            while let Ok(next) = updates.try_recv() {
                update = next;
            }
            // Saved only when a peer changed (not every refresh of every host).
            saver.offer(update.view.clone());
            let started = Instant::now();
            let peers = self.peers_of(&update.view);
            let (actions, errors) = apply(peers).await;
            let took = started.elapsed();
            last_apply = Some(Instant::now());
            for action in &actions {
                tracing::info!(
                    revision = update.view.revision,
                    "cluster: {}",
                    action.detail
                );
            }
            for error in &errors {
                tracing::error!(revision = update.view.revision, "cluster: {error}");
            }
            let mut stats = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            stats.revision = update.view.revision;
            stats.last = Some(took);
            stats.count += 1;
            stats.errors += errors.len() as u64;
        }
    }

    /// The peers of the view this host runs from now: after a start
    /// without the store, the saved view's (see `offline.rs`).
    pub fn current_peers(&self) -> Vec<OverlayPeer> {
        self.peers_of(&self.view())
    }

    /// The overlay peers of a view: every host but this one, dead or alive
    /// (dead is a state, not a removal).
    fn peers_of(&self, view: &PeerView) -> Vec<OverlayPeer> {
        view.hosts
            .values()
            .filter(|h| &h.id != self.id())
            .map(|h| OverlayPeer {
                public_key: h.public_key,
                endpoint: h.endpoint,
                subnets: h.subnets.clone(),
                preshared_key_file: None,
                persistent_keepalive: None,
                origin: PeerOrigin::Store,
                host: Some(ClusterHostInfo {
                    name: h.name.clone(),
                    id: h.id.to_string(),
                    alive: h.alive,
                    key_epoch: h.key_epoch,
                    record_revision: h.record_revision,
                    alive_revision: h.alive_revision,
                }),
            })
            .collect()
    }

    /// Gives the reservation back at once (record, subnets, liveness) and
    /// asks the daemon to stop: its subnet is now free for another host.
    pub async fn leave(&self) -> Result<HostRecord> {
        let record = self.record();
        if let Some(task) = self
            .liveness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.stop();
        }
        self.member.leave().await?;
        tracing::info!(host = %self.id(), "left the cluster; stopping");
        let _ = self.left.send(true);
        Ok(record)
    }

    /// Key rotation (`netd cluster rotate-key`): a new overlay key on the
    /// device and in the key file, then its public key published with the
    /// key epoch + 1. The other hosts replace this host's peer when the
    /// record reaches them. Publishing failed: the old key is put back.
    pub async fn rotate_key(&self, overlay: &crate::overlay::OverlayService) -> Result<HostRecord> {
        let old = overlay.rotate_key()?;
        let new_key = overlay.public_key();
        match self.member.publish_key(&new_key).await {
            Ok(record) => {
                tracing::info!(
                    host = %self.id(),
                    old_public_key = %old.public_key(),
                    public_key = %new_key,
                    key_epoch = record.key_epoch,
                    "rotated the overlay key"
                );
                *self.record.lock().unwrap_or_else(|e| e.into_inner()) = record.clone();
                Ok(record)
            }
            Err(e) => {
                overlay.restore_key(old)?;
                tracing::error!(
                    host = %self.id(),
                    "cluster: publish the new overlay key: {e}; kept the old key"
                );
                Err(e.into())
            }
        }
    }

    /// Resolves once this host has left the cluster.
    pub fn left(&self) -> watch::Receiver<bool> {
        self.left.subscribe()
    }

    /// Removes another host's reservation (`netd cluster forget`).
    pub async fn forget(&self, host: &str, force: bool) -> Result<HostRecord> {
        let id = self.resolve_host(host)?;
        Ok(::overlay::cluster::forget(self.store.as_ref(), &id, force).await?)
    }

    /// A host's id from its id or name in the current view.
    fn resolve_host(&self, host: &str) -> Result<String> {
        if host.parse::<HostId>().is_ok() {
            return Ok(host.to_string());
        }
        let view = self.view();
        let named: Vec<&HostId> = view
            .hosts
            .values()
            .filter(|h| h.name == host)
            .map(|h| &h.id)
            .collect();
        match named.as_slice() {
            [id] => Ok(id.to_string()),
            [] => Err(Error::NotFound(format!(
                "cluster: no host named or with id {host:?} (see `netd cluster hosts`)"
            ))),
            _ => Err(Error::Conflict(format!(
                "cluster: several hosts are named {host:?}; give the id (see `netd cluster hosts`)"
            ))),
        }
    }

    fn record(&self) -> HostRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn view(&self) -> Arc<PeerView> {
        self.views.borrow().clone()
    }
}
