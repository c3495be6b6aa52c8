//! The daemon, `netd run`: the network plus what only a long-running
//! process has, and the loop that serves it.
//!
//! - `mod.rs`: [`Daemon`], which owns the [`Network`], the link reaper, the
//!   `[::1]` relay and the overlay service, and lends them to each call;
//! - `run.rs`: start-up, signals (SIGHUP reconciles, SIGTERM/SIGINT stop)
//!   and the periodic check;
//! - `server.rs`: the API on the unix socket and the metrics endpoint;
//! - `names.rs`: the names the DNS server on the gateways answers.

mod names;
mod route;
#[cfg(test)]
mod route_fuzz_tests;
mod run;
pub mod server;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::ports::{PortMapping, PublishedPort};

pub use run::{run, run_from};

use crate::api::{DnsStatus, NameRow, PeerReport, Status};
use crate::cluster::ClusterHost;
use crate::config::{Config, ConfigArgs, OverlayConfig};
use crate::endpoints::{
    AttachRequest, AttachResult, Background, DetachReport, Reaper, ReconcileReport,
};
use crate::error::{Error, Result};
use crate::host;
use crate::network::Network;
use crate::overlay::OverlayService;
use crate::ports::LocalhostRelay;

/// Where a reconciliation finds the overlay's peer list.
#[derive(Debug, Clone)]
pub enum PeerSource {
    /// The `[overlay]` section netd started with (a fixed `Config`).
    Fixed(OverlayConfig),
    /// The config file, environment and flags netd started from, read again
    /// by each reconciliation.
    Reread(Box<ConfigArgs>),
}

impl PeerSource {
    /// The `[overlay]` section as it stands now, or why it could not be read.
    fn section(&self) -> std::result::Result<OverlayConfig, String> {
        match self {
            PeerSource::Fixed(section) => Ok(section.clone()),
            PeerSource::Reread(args) => Config::load(args)
                .map(|config| config.overlay)
                .map_err(|e| e.to_string()),
        }
    }
}

/// A running netd: the host network and the daemon's own parts.
pub struct Daemon {
    network: Network,
    reaper: Reaper,
    relay: Option<LocalhostRelay>,
    overlay: Option<OverlayService>,
    peers: PeerSource,
    /// None when `names = false`.
    names: Option<names::NameService>,
    /// Operations the API has taken and not finished (see `server::owned`).
    operations: Arc<AtomicUsize>,
    /// The cluster part, when netd runs with a store (set once after start).
    cluster: std::sync::OnceLock<std::sync::Arc<ClusterHost>>,
}

impl Daemon {
    /// Starts the overlay (when `[overlay]` enables it: containers then get
    /// its MTU), opens the network, and starts the reaper and, unless
    /// turned off, the `[::1]` relay. Changes nothing else in the kernel:
    /// the first reconciliation does.
    pub async fn open(config: Config, peers: PeerSource) -> Result<Daemon> {
        config.validate()?;
        // Damaged state files stop netd here, before it changes anything
        // (the overlay below makes a TUN device): `netd recover` repairs them.
        crate::state::Store::open(&config.state_dir)?.read()?;
        let netns = host::open_namespace(&config)?;
        let overlay = if config.overlay.enabled {
            let key_file = config.overlay_key_file();
            Some(OverlayService::start(&netns, &config.overlay, &key_file).await?)
        } else {
            None
        };
        let mtu = host::container_mtu(config.mtu, overlay.as_ref().map(|o| o.mtu()));
        if let Some(o) = &overlay {
            tracing::info!(
                interface = %o.interface(),
                public_key = %o.public_key(),
                cluster_range = %o.cluster_range(),
                container_mtu = ?mtu,
                "overlay up"
            );
        }
        let network = Network::open_in(config, netns, mtu)?;
        let reaper = Reaper::start(network.endpoints().clone())
            .map_err(|e| Error::Setup(format!("start the link reaper: {e}")))?;
        // Sockets on [::1] for the published ports: opened by the first reconciliation.
        let relay = network.config().ipv6_localhost_relay.then(|| {
            let host = network
                .config()
                .netns
                .as_ref()
                .map(|_| network.host_netns().clone());
            LocalhostRelay::new(host, network.metrics().clone())
        });
        let names_host = network.config().cluster.host_name.clone();
        let names = network
            .config()
            .names
            .then(|| names::NameService::new(names_host));
        if let Some(names) = &names {
            network.store().read_with(|state| names.sync(state))?;
        }
        Ok(Daemon {
            network,
            reaper,
            relay,
            overlay,
            peers,
            names,
            operations: Arc::new(AtomicUsize::new(0)),
            cluster: std::sync::OnceLock::new(),
        })
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn overlay(&self) -> Option<&OverlayService> {
        self.overlay.as_ref()
    }

    /// The cluster part, when netd runs with a store.
    pub fn cluster(&self) -> Option<&std::sync::Arc<ClusterHost>> {
        self.cluster.get()
    }

    /// Hands the daemon its cluster part (once, at start).
    pub fn set_cluster(&self, cluster: std::sync::Arc<ClusterHost>) {
        let _ = self.cluster.set(cluster);
    }

    fn background(&self) -> Background<'_> {
        Background {
            reaper: Some(&self.reaper),
            relay: self.relay.as_ref(),
        }
    }

    pub async fn attach(&self, req: AttachRequest) -> Result<AttachResult> {
        let result = self
            .network
            .endpoints()
            .attach(req, self.background())
            .await?;
        if let Some(names) = &self.names {
            let attached = self
                .network
                .store()
                .read_with(|state| state.endpoints.get(&result.id).cloned())?;
            if let Some(ep) = attached {
                names.attached(&ep);
            }
        }
        Ok(result)
    }

    /// Answers once the container is cut off (and its names gone); the
    /// reaper deletes its links.
    pub async fn detach(&self, key: &str) -> Result<DetachReport> {
        // The key may be the endpoint's name: its id, while the state has it.
        let id = match &self.names {
            Some(_) => self.network.store().read_with(|state| {
                let endpoints = &state.endpoints;
                endpoints
                    .get(key)
                    .or_else(|| endpoints.named(key))
                    .map(|ep| ep.id.clone())
            })?,
            None => None,
        };
        let report = self
            .network
            .endpoints()
            .detach(key, self.background())
            .await?;
        if let (Some(names), Some(id)) = (&self.names, id) {
            names.detached(&id);
        }
        Ok(report)
    }

    /// Starts the DNS server when names are on and it is not running (or
    /// the bridge was made anew), after a reconciliation made the bridge.
    pub async fn ensure_names_server(&self) -> Result<()> {
        match &self.names {
            Some(names) => names.ensure_server(&self.network).await,
            None => Ok(()),
        }
    }

    /// The name table and the signal of this host's name changes, for the
    /// cluster to publish and fill; None when names are off.
    pub fn names_sharing(
        &self,
    ) -> Option<(Arc<crate::names::NameTable>, Arc<tokio::sync::Notify>)> {
        self.names.as_ref().map(|n| n.sharing())
    }

    /// What the DNS server answers; None when names are off.
    pub fn names(&self) -> Option<Vec<NameRow>> {
        self.names.as_ref().map(|n| n.list())
    }

    /// Replaces this host's names by the state's: containers the standalone
    /// plugin attached or detached show up (or go) here.
    fn sync_names(&self) -> Result<()> {
        if let Some(names) = &self.names {
            self.network.store().read_with(|state| names.sync(state))?;
        }
        Ok(())
    }

    /// Waits until every detach handed to the reaper so far is finished.
    pub async fn reaped(&self) {
        self.reaper.reaped().await;
    }

    pub async fn publish(&self, key: &str, specs: &[PortMapping]) -> Result<Vec<PublishedPort>> {
        self.network
            .ports()
            .publish(key, specs, self.relay.as_ref())
            .await
    }

    pub async fn unpublish(&self, key: &str, specs: &[PortMapping]) -> Result<Vec<PublishedPort>> {
        self.network
            .ports()
            .unpublish(key, specs, self.relay.as_ref())
            .await
    }

    /// A full reconciliation: the network's, then the overlay's peers and
    /// routes from the `[overlay]` section as it stands now; logged and counted.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = self
            .network
            .endpoints()
            .reconcile(self.background())
            .await?;
        if let Some(overlay) = &self.overlay {
            let section = match self.peers.section() {
                Ok(section) => Some(section),
                Err(e) => {
                    report.errors.push(format!(
                        "overlay: re-read the peer list: {e}; keeping the current peers"
                    ));
                    None
                }
            };
            let (actions, errors) = overlay.reconcile(section.as_ref()).await;
            report.actions.extend(actions);
            report.errors.extend(errors);
        }
        report.record(self.network.metrics());
        self.sync_names()?;
        if let Err(e) = self.ensure_names_server().await {
            report.errors.push(e.to_string());
        }
        Ok(report)
    }

    /// The periodic quick check: the network's, then the overlay's routes.
    pub async fn needs_reconcile(&self) -> Result<Option<&'static str>> {
        self.sync_names()?;
        if let Some(reason) = self
            .network
            .endpoints()
            .needs_reconcile(self.background())
            .await?
        {
            return Ok(Some(reason));
        }
        match &self.overlay {
            Some(overlay) => overlay.needs_reconcile().await,
            None => Ok(None),
        }
    }

    /// What `netd status` shows.
    pub fn status(&self) -> Result<Status> {
        let network = &self.network;
        let state = network.store().read()?;
        let config = network.config();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            bridge: config.bridge.clone(),
            subnets: config.subnets(),
            gateways: network.gateways(),
            containers: state.endpoints.len(),
            ipam: config
                .subnets()
                .into_iter()
                .map(|s| state.ipam.usage(s))
                .collect(),
            firewall: config.firewall,
            state_dir: config.state_dir.clone(),
            socket: config.socket.clone(),
            overlay: self.overlay.as_ref().map(|o| o.status()),
            dns: self.names.as_ref().map(|_| DnsStatus {
                nameservers: network.gateways(),
                search: config.dns_search_domain.clone(),
            }),
            operations_in_flight: self.operations.load(Ordering::SeqCst),
        })
    }

    /// Every overlay peer's counters; None when the overlay is off.
    pub fn peers(&self) -> Option<Vec<PeerReport>> {
        self.overlay.as_ref().map(|o| o.peers())
    }

    /// `/metrics`: the network's counters and gauges, and the overlay's.
    pub fn render_metrics(&self) -> Result<String> {
        let state = self.network.store().read()?;
        let mut body = self.network.metrics().render(&state, self.network.config());
        if let Some(overlay) = &self.overlay {
            overlay.render_metrics(&mut body);
        }
        if let Some(names) = &self.names {
            crate::metrics::render_dns(&mut body, &names.counters());
        }
        if let Some(cluster) = self.cluster() {
            cluster.render_metrics(&mut body);
        }
        Ok(body)
    }

    /// Counts an operation the API has taken until the returned guard drops.
    fn operation(&self) -> OperationGuard {
        self.operations.fetch_add(1, Ordering::SeqCst);
        OperationGuard(self.operations.clone())
    }

    /// Waits until every operation the API has taken has finished, at most
    /// `limit`; false when some still run. A stopping netd lets them finish.
    pub async fn operations_finished(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.operations.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // A library attach of this process outside the API, if any.
        self.network
            .endpoints()
            .settled(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
    }

    /// The API's socket path.
    pub fn socket(&self) -> &Path {
        &self.network.config().socket
    }
}

/// One operation the API has taken, counted while it runs.
struct OperationGuard(Arc<AtomicUsize>);

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
