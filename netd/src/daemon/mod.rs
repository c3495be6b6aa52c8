//! The daemon, `netd run`: the network plus what only a long-running
//! process has, and the loop that serves it.
//!
//! - `mod.rs`: [`Daemon`], which owns the [`Network`], the link reaper, the
//!   `[::1]` relay and the overlay service, and lends them to each call;
//! - `run.rs`: start-up, signals (SIGHUP reconciles, SIGTERM/SIGINT stop)
//!   and the periodic check;
//! - `server.rs`: the API on the unix socket and the metrics endpoint.

mod run;
pub mod server;

use std::path::Path;

use plumb::firewall::PublishedPort;

pub use run::{run, run_from};

use crate::api::{PeerReport, Status};
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
        Ok(Daemon {
            network,
            reaper,
            relay,
            overlay,
            peers,
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
        self.network
            .endpoints()
            .attach(req, self.background())
            .await
    }

    /// Answers once the container is cut off; the reaper deletes its links.
    pub async fn detach(&self, key: &str) -> Result<DetachReport> {
        self.network
            .endpoints()
            .detach(key, self.background())
            .await
    }

    /// Waits until every detach handed to the reaper so far is finished.
    pub async fn reaped(&self) {
        self.reaper.reaped().await;
    }

    pub async fn publish(&self, key: &str, specs: &[String]) -> Result<Vec<PublishedPort>> {
        self.network
            .ports()
            .publish(key, specs, self.relay.as_ref())
            .await
    }

    pub async fn unpublish(&self, key: &str, specs: &[String]) -> Result<Vec<PublishedPort>> {
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
        Ok(report)
    }

    /// The periodic quick check: the network's, then the overlay's routes.
    pub async fn needs_reconcile(&self) -> Result<Option<&'static str>> {
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
        if let Some(cluster) = self.cluster() {
            cluster.render_metrics(&mut body);
        }
        Ok(body)
    }

    /// The API's socket path.
    pub fn socket(&self) -> &Path {
        &self.network.config().socket
    }
}
