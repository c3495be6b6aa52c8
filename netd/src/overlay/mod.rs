//! netd's side of the WireGuard overlay, from a static peer list (`[overlay]`
//! in netd.toml): the `overlay::Device` in the host namespace, one peer per
//! `[[overlay.peer]]` with its subnet as allowed IPs, a route per peer subnet
//! through the overlay link, the container MTU, and the cluster range the
//! firewall leaves unmasqueraded.
//!
//! Every reconciliation (start, SIGHUP, `netd reconcile`, a periodic check
//! that finds an overlay route missing) re-reads the peer list and changes
//! only the peers that differ: the sessions of the others keep running.

pub mod config;
mod report;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use ::overlay::{Device, DeviceConfig, PeerConfig, PrivateKey, PublicKey};
use ipnetwork::IpNetwork;
use plumb::{Netlink, Netns, Route};

pub use config::{OverlayArgs, OverlayConfig, StaticPeer};
pub use report::{OverlayStatus, PeerReport};

use crate::config::{Config, ConfigArgs};
use crate::error::{Error, KernelContext, Result};
use crate::network::{Action, Network};

/// Where a reconciliation finds the peer list.
#[derive(Debug, Clone)]
pub enum PeerSource {
    /// The list netd started with (a library user's `Config`).
    Fixed(Vec<StaticPeer>),
    /// The config file, environment and flags netd started from, read again.
    Reread(Box<ConfigArgs>),
}

/// The running overlay of one netd.
pub struct OverlayService {
    device: Device,
    host: Netns,
    interface: String,
    cluster_range: ipnetwork::Ipv4Network,
    /// The `[overlay]` keys netd started with, to warn when a re-read file
    /// changes one that only a restart applies.
    started_with: OverlayConfig,
    source: PeerSource,
    /// The peers as applied to the device and the routes, by public key.
    applied: tokio::sync::Mutex<BTreeMap<PublicKey, StaticPeer>>,
}

impl std::fmt::Debug for OverlayService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayService")
            .field("device", &self.device)
            .finish()
    }
}

/// Reads the overlay's private key, or generates one (mode 0600, its
/// directory 0700 when created) when the file does not exist yet.
pub fn load_or_generate_key(path: &Path) -> Result<PrivateKey> {
    let invalid = |e: ::overlay::KeyError| {
        Error::Invalid(format!(
            "overlay private key: {e} (set overlay.private_key_file, or remove the file to have netd generate a new key)"
        ))
    };
    if path.exists() {
        return PrivateKey::read_file(path).map_err(invalid);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::Daemon(format!(
                    "create the directory of the overlay key {}: {e}",
                    path.display()
                ))
            })?;
    }
    let key = PrivateKey::generate().map_err(invalid)?;
    key.write_file(path).map_err(invalid)?;
    tracing::info!(
        path = %path.display(),
        public_key = %key.public_key(),
        "generated the overlay's private key"
    );
    Ok(key)
}

impl OverlayService {
    /// Creates the overlay device in the namespace `network` manages and
    /// lowers the container MTU to the overlay's. The peers come with the
    /// first reconciliation.
    pub async fn start(network: &mut Network, source: PeerSource) -> Result<OverlayService> {
        let config = network.config.clone();
        let overlay = &config.overlay;
        let key = load_or_generate_key(&config.overlay_key_file())?;
        let mut device_config = DeviceConfig::new(key);
        device_config.name = overlay.interface.clone();
        device_config.listen_port = overlay.listen_port;
        device_config.mtu = overlay.mtu;
        let device = Device::create(&network.host, device_config)
            .await
            .map_err(|e| {
                Error::Daemon(format!(
                    "start the overlay: {e} — is another WireGuard using port {} or link {}?",
                    overlay.listen_port, overlay.interface
                ))
            })?;
        // Inner packets must fit the overlay: containers get its MTU.
        let mtu = device.mtu();
        match config.mtu {
            Some(m) if m <= mtu => {}
            Some(m) => {
                tracing::warn!(
                    "mtu {m} is larger than the overlay's {mtu}; containers get {mtu} so their packets fit"
                );
                network.config.mtu = Some(mtu);
            }
            None => network.config.mtu = Some(mtu),
        }
        Ok(OverlayService {
            host: network.host.clone(),
            interface: overlay.interface.clone(),
            cluster_range: overlay.cluster_range,
            started_with: overlay.clone(),
            source,
            device,
            applied: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.device.public_key()
    }

    /// Re-reads the peer list and applies what differs; ensures each peer's
    /// route. Returns what it did and what failed (one sentence each).
    pub async fn reconcile(&self) -> (Vec<Action>, Vec<String>) {
        let mut actions = Vec::new();
        let mut errors = Vec::new();
        let mut applied = self.applied.lock().await;
        let wanted = match &self.source {
            PeerSource::Fixed(peers) => peers.clone(),
            PeerSource::Reread(args) => match Config::load(args) {
                Ok(config) => {
                    self.warn_about_restart_keys(&config.overlay);
                    config.overlay.peers
                }
                Err(e) => {
                    errors.push(format!(
                        "overlay: re-read the peer list: {e}; keeping the current peers"
                    ));
                    applied.values().cloned().collect()
                }
            },
        };
        let nl = match Netlink::open(&self.host).await {
            Ok(nl) => nl,
            Err(e) => {
                errors.push(format!(
                    "overlay: open netlink in {}: {e}",
                    self.host.label()
                ));
                return (actions, errors);
            }
        };
        let wanted: BTreeMap<PublicKey, StaticPeer> =
            wanted.into_iter().map(|p| (p.public_key, p)).collect();

        let gone: Vec<StaticPeer> = applied
            .values()
            .filter(|p| !wanted.contains_key(&p.public_key))
            .cloned()
            .collect();
        for peer in gone {
            match self.remove(&nl, &peer).await {
                Ok(()) => {
                    applied.remove(&peer.public_key);
                    actions.push(Action::new(
                        "overlay_peer_removed",
                        format!(
                            "overlay: removed peer {} ({}, subnet {})",
                            peer.public_key, peer.endpoint, peer.subnet
                        ),
                    ));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }

        let routed = match self.routed_subnets(&nl).await {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        };
        for peer in wanted.values() {
            let before = applied.get(&peer.public_key).cloned();
            if before.as_ref() == Some(peer) {
                if !routed.contains(&peer.subnet) {
                    match self.route(&nl, peer).await {
                        Ok(()) => actions.push(Action::new(
                            "overlay_route_restored",
                            format!(
                                "overlay: restored the route to {} via {}",
                                peer.subnet, self.interface
                            ),
                        )),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                continue;
            }
            match self.set(&nl, peer, before.as_ref()).await {
                Ok(()) => {
                    let (kind, verb) = match before {
                        Some(_) => ("overlay_peer_changed", "changed"),
                        None => ("overlay_peer_added", "added"),
                    };
                    applied.insert(peer.public_key, peer.clone());
                    actions.push(Action::new(
                        kind,
                        format!(
                            "overlay: {verb} peer {} ({}, subnet {})",
                            peer.public_key, peer.endpoint, peer.subnet
                        ),
                    ));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (actions, errors)
    }

    /// Some(reason) when a peer's route is missing: the quick check's part.
    pub async fn needs_reconcile(&self) -> Result<Option<&'static str>> {
        let nl = Netlink::open(&self.host)
            .await
            .ctx(|| format!("open netlink in {}", self.host.label()))?;
        let routed = self.routed_subnets(&nl).await?;
        let applied = self.applied.lock().await;
        Ok(applied
            .values()
            .any(|p| !routed.contains(&p.subnet))
            .then_some("overlay route missing"))
    }

    fn warn_about_restart_keys(&self, now: &OverlayConfig) {
        let was = &self.started_with;
        if now.enabled != was.enabled
            || now.listen_port != was.listen_port
            || now.interface != was.interface
            || now.mtu != was.mtu
            || now.cluster_range != was.cluster_range
            || now.private_key_file != was.private_key_file
        {
            tracing::warn!(
                "overlay: [overlay] keys other than the peer list changed; they apply when netd restarts"
            );
        }
    }

    async fn set(
        &self,
        nl: &Netlink,
        peer: &StaticPeer,
        before: Option<&StaticPeer>,
    ) -> Result<()> {
        let mut config = PeerConfig::new(peer.public_key);
        config.endpoint = Some(peer.endpoint);
        config.allowed_ips = vec![IpNetwork::V4(peer.subnet)];
        config.persistent_keepalive = peer.persistent_keepalive;
        if let Some(path) = &peer.preshared_key_file {
            config.preshared_key =
                Some(config::read_preshared_key(path).map_err(|e| {
                    Error::Invalid(format!("overlay: peer {}: {e}", peer.public_key))
                })?);
        }
        self.device
            .set_peer(config)
            .map_err(|e| Error::Invalid(format!("overlay: {e}")))?;
        if let Some(old) = before.filter(|old| old.subnet != peer.subnet) {
            self.unroute(nl, old.subnet).await?;
        }
        self.route(nl, peer).await
    }

    async fn remove(&self, nl: &Netlink, peer: &StaticPeer) -> Result<()> {
        match self.device.remove_peer(&peer.public_key) {
            Ok(()) | Err(::overlay::DeviceError::UnknownPeer { .. }) => {}
            Err(e) => return Err(Error::Invalid(format!("overlay: {e}"))),
        }
        self.unroute(nl, peer.subnet).await
    }

    fn route_to(&self, subnet: ipnetwork::Ipv4Network) -> Route {
        Route {
            destination: Some(IpNetwork::V4(subnet)),
            dev: Some(self.interface.clone()),
            ..Default::default()
        }
    }

    async fn route(&self, nl: &Netlink, peer: &StaticPeer) -> Result<()> {
        nl.replace_route(&self.route_to(peer.subnet)).await.ctx(|| {
            format!(
                "overlay: route {} via {} in {}",
                peer.subnet,
                self.interface,
                self.host.label()
            )
        })
    }

    async fn unroute(&self, nl: &Netlink, subnet: ipnetwork::Ipv4Network) -> Result<()> {
        match nl.delete_route(&self.route_to(subnet)).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::kernel(
                format!(
                    "overlay: remove the route to {subnet} in {}",
                    self.host.label()
                ),
                e,
            )),
        }
    }

    /// IPv4 destinations routed through the overlay link now.
    async fn routed_subnets(&self, nl: &Netlink) -> Result<Vec<ipnetwork::Ipv4Network>> {
        let routes = nl
            .routes(false, false)
            .await
            .ctx(|| format!("overlay: list routes in {}", self.host.label()))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.dev.as_deref() == Some(self.interface.as_str()))
            .filter_map(|r| match r.destination {
                Some(IpNetwork::V4(d)) => Some(d),
                _ => None,
            })
            .collect())
    }
}

impl Network {
    /// Starts the overlay when `[overlay]` enables it; the daemon calls this
    /// before its first reconciliation, which adds the peers.
    pub async fn start_overlay(&mut self, source: PeerSource) -> Result<()> {
        if !self.config.overlay.enabled {
            return Ok(());
        }
        let service = OverlayService::start(self, source).await?;
        tracing::info!(
            interface = %service.interface,
            public_key = %service.public_key(),
            cluster_range = %service.cluster_range,
            container_mtu = ?self.config.mtu,
            "overlay up"
        );
        self.overlay
            .set(std::sync::Arc::new(service))
            .map_err(|_| Error::Daemon("the overlay was started twice".into()))
    }

    pub fn overlay(&self) -> Option<&OverlayService> {
        self.overlay.get().map(|o| o.as_ref())
    }

    /// Destinations the firewall never masquerades: the cluster range when
    /// the overlay is on, so containers see each other's real addresses.
    pub fn cluster_ranges(&self) -> Vec<IpNetwork> {
        if self.config.overlay.enabled {
            vec![IpNetwork::V4(self.config.overlay.cluster_range)]
        } else {
            Vec::new()
        }
    }

    /// The overlay's part of a reconciliation.
    pub(crate) async fn reconcile_overlay(&self) -> (Vec<Action>, Vec<String>) {
        match self.overlay() {
            Some(o) => o.reconcile().await,
            None => (Vec::new(), Vec::new()),
        }
    }

    /// The overlay's part of the quick check.
    pub(crate) async fn overlay_needs_reconcile(&self) -> Result<Option<&'static str>> {
        match self.overlay() {
            Some(o) => o.needs_reconcile().await,
            None => Ok(None),
        }
    }
}
