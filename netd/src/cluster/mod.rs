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
//! - `report.rs`: `netd cluster status|hosts`, the metrics;
//! - `reservation.rs`: the reservation kept in the state directory for the
//!   CNI plugin's standalone mode.
//!
//! While the store is down nothing is removed: the watcher keeps the last
//! view, the liveness task retries, both count and report it.

mod names;
mod report;
mod reservation;

use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::overlay::cluster::{
    HostAdvert, HostId, HostRecord, LivenessTask, Member, PeerView, PeerWatcher, SystemClock,
    Timing, ViewUpdate, WatcherSettings,
};
use ::overlay::store::{EtcdConfig, EtcdStore, EtcdTls};
use plumb::Netns;
use tokio::sync::watch;

pub use report::{ClusterStatus, ForgetRequest, HostEntry, NamesStatus};
pub use reservation::{Reservation, RESERVATION_FILE};

use crate::action::Action;
use crate::config::cluster::StoreSettings;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::overlay::{load_or_generate_key, ClusterHostInfo, OverlayPeer, PeerOrigin};

/// This host's membership and its view of the others.
pub struct ClusterHost {
    member: Arc<Member<EtcdStore>>,
    store: Arc<EtcdStore>,
    name: String,
    record: Mutex<HostRecord>,
    cluster: ::overlay::cluster::ClusterConfig,
    liveness: Mutex<Option<LivenessTask>>,
    watcher: Mutex<Option<PeerWatcher>>,
    applied: Mutex<AppliedStats>,
    names_counters: names::NamesCounters,
    left: watch::Sender<bool>,
}

#[derive(Debug, Default, Clone)]
struct AppliedStats {
    revision: i64,
    last: Option<Duration>,
    count: u64,
    errors: u64,
}

/// Opens the store described by `[cluster]`.
pub fn open_store(settings: &StoreSettings) -> Result<EtcdStore> {
    let scheme = if settings.ca.is_some() {
        "https"
    } else {
        "http"
    };
    let mut config = EtcdConfig::new(
        settings
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect(),
    );
    if let Some(ca) = &settings.ca {
        config.tls = Some(EtcdTls {
            ca: ca.clone(),
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        });
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        config.user = Some((user.clone(), password.clone()));
    }
    EtcdStore::new(config).map_err(|e| {
        Error::InvalidInput(format!(
            "cluster: open the store {}: {e}",
            settings.endpoints.join(",")
        ))
    })
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
        let cluster = ::overlay::cluster::read_config(store.as_ref()).await?;
        let id = HostId::load_or_create(&config.state_dir)?;
        let key = load_or_generate_key(&config.overlay_key_file())?;
        let name = match &config.cluster.host_name {
            Some(name) => name.clone(),
            None => hostname(),
        };
        let endpoint = advertised_endpoint(config, &settings, host_ns, cluster.overlay_port)?;
        let mut timing = Timing {
            liveness_ttl: config.cluster.liveness_ttl,
            ..Timing::default()
        };
        if let Some(expiry) = config.cluster.reservation_expiry {
            timing.reservation_expiry = expiry;
        }
        let member = Arc::new(Member::new(
            store.clone(),
            id.clone(),
            timing,
            Arc::new(SystemClock),
        ));
        let advert = HostAdvert {
            name: name.clone(),
            public_key: key.public_key(),
            endpoint: Some(endpoint),
        };
        // Refuse a `subnet` key before writing anything to the store.
        let held = existing_record(store.as_ref(), &id).await?;
        check_given_subnets(config, held.as_ref())?;
        let record = member.join(&advert).await?;
        apply_reservation(config, &record, &cluster)?;
        Reservation::of(&record, &cluster).write(&config.state_dir)?;
        tracing::info!(
            host = %id,
            name = %name,
            subnet = %record.ipv4_subnet,
            subnet6 = ?record.ipv6_subnet,
            %endpoint,
            key_epoch = record.key_epoch,
            "joined the cluster"
        );
        Ok(ClusterHost {
            member,
            store,
            name,
            record: Mutex::new(record),
            cluster,
            liveness: Mutex::new(None),
            watcher: Mutex::new(None),
            applied: Mutex::new(AppliedStats::default()),
            names_counters: names::NamesCounters::default(),
            left: watch::channel(false).0,
        })
    }

    /// Shows this host alive (a new liveness lease) and keeps it so. Called
    /// once the overlay device is up: peers take the new liveness key of a
    /// host that joined again for a restart, and start a new session.
    pub async fn go_alive(&self) -> Result<()> {
        self.member.go_alive(&self.name).await?;
        let task = self.member.spawn_liveness(self.name.clone());
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
        let (watcher, mut updates) = PeerWatcher::spawn(
            self.store.clone(),
            Some(self.cluster.clone()),
            WatcherSettings::default(),
        );
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        loop {
            let update: ViewUpdate = tokio::select! {
                u = updates.recv() => match u { Some(u) => u, None => return },
                _ = stopped.changed() => return,
            };
            // Coalesce a burst: only the latest view matters.
            let mut update = update;
            while let Ok(next) = updates.try_recv() {
                update = next;
            }
            let started = Instant::now();
            let peers = self.peers_of(&update.view);
            let (actions, errors) = apply(peers).await;
            let took = started.elapsed();
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
        self.watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|w| w.view())
            .unwrap_or_default()
    }
}

/// This host's record in the store, if it has one (unreadable: none).
async fn existing_record(store: &EtcdStore, id: &HostId) -> Result<Option<HostRecord>> {
    use ::overlay::store::Store;
    let key = ::overlay::cluster::records::host_key(id);
    let listing = store
        .list(&key)
        .await
        .map_err(|e| Error::Setup(format!("cluster: read this host's record {key}: {e}")))?;
    Ok(listing
        .entries
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// `subnet`/`subnet6` keys are allowed only when they name the reservation
/// this host already holds: a new host gets its subnets from the store.
fn check_given_subnets(config: &Config, held: Option<&HostRecord>) -> Result<()> {
    let given = config.cluster.given_subnet.map(|s| s.to_string());
    let given6 = config.cluster.given_subnet6.map(|s| s.to_string());
    if given.is_none() && given6.is_none() {
        return Ok(());
    }
    match held {
        Some(record) => {
            let mut reserved = config.clone();
            apply_reservation_keys(&mut reserved, record)
        }
        None => Err(Error::InvalidInput(format!(
            "cluster: the `subnet`/`subnet6` keys say {} but this host holds no reservation yet; \
             remove them from netd.toml/flags/WEFT_* (a cluster host's subnets come from the store)",
            [given, given6].into_iter().flatten().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Sets `config`'s subnets, overlay port and range from the reservation;
/// refuses `subnet`/`subnet6` keys that name other subnets.
fn apply_reservation(
    config: &mut Config,
    record: &HostRecord,
    cluster: &::overlay::cluster::ClusterConfig,
) -> Result<()> {
    apply_reservation_keys(config, record)?;
    config.overlay.enabled = true;
    config.overlay.listen_port = cluster.overlay_port;
    config.overlay.cluster_range = cluster.ipv4_range;
    config.validate()?;
    Ok(())
}

/// Checks the given `subnet`/`subnet6` keys against `record` and sets the
/// reservation's subnets.
fn apply_reservation_keys(config: &mut Config, record: &HostRecord) -> Result<()> {
    let refuse = |key: &str, given: String, reserved: String| {
        Error::InvalidInput(format!(
            "cluster: the `{key}` key says {given} but this host's reservation in the store is {reserved}; \
             remove `{key}` from netd.toml/flags/WEFT_* (a cluster host's subnets come from the store)"
        ))
    };
    if let Some(given) = config.cluster.given_subnet {
        if given != record.ipv4_subnet {
            return Err(refuse(
                "subnet",
                given.to_string(),
                record.ipv4_subnet.to_string(),
            ));
        }
    }
    if let Some(given) = config.cluster.given_subnet6 {
        if Some(given) != record.ipv6_subnet {
            return Err(refuse(
                "subnet6",
                given.to_string(),
                record
                    .ipv6_subnet
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "none (the cluster has no IPv6 range)".into()),
            ));
        }
    }
    config.subnet = record.ipv4_subnet;
    config.subnet6 = record.ipv6_subnet;
    Ok(())
}

/// The endpoint to advertise: `[cluster] endpoint`, else the address this
/// host's namespace would use towards the store (the route's source).
fn advertised_endpoint(
    config: &Config,
    store: &StoreSettings,
    host_ns: &Netns,
    default_port: u16,
) -> Result<SocketAddr> {
    if let Some((ip, port)) = config.cluster.endpoint {
        return Ok(SocketAddr::new(ip, port.unwrap_or(default_port)));
    }
    let target = store
        .endpoints
        .iter()
        .filter_map(|e| e.to_socket_addrs().ok())
        .flatten()
        .next()
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "cluster: cannot resolve the store's address {} to find this host's underlay address; \
                 set --endpoint IP",
                store.endpoints.join(",")
            ))
        })?;
    let source = host_ns
        .run(move || -> std::io::Result<IpAddr> {
            let bind: SocketAddr = match target {
                SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
                SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
            };
            let socket = UdpSocket::bind(bind)?;
            // A UDP connect sends nothing: it only picks the route and its source.
            socket.connect(target)?;
            Ok(socket.local_addr()?.ip())
        })
        .map_err(|e| Error::kernel(format!("cluster: enter {}", host_ns.label()), e))?
        .map_err(|e| {
            Error::InvalidInput(format!(
                "cluster: no route from {} towards the store at {target}: {e}; set --endpoint IP",
                host_ns.label()
            ))
        })?;
    Ok(SocketAddr::new(source, default_port))
}

/// The kernel's host name (of this UTS namespace).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
