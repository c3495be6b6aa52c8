//! netd's side of the WireGuard overlay, from a static peer list (`[overlay]`
//! in netd.toml): the `overlay::Device` in the host namespace, one peer per
//! `[[overlay.peer]]` with its subnet as allowed IPs, a route per peer subnet
//! through the overlay link, the container MTU, and the cluster range the
//! firewall leaves unmasqueraded.
//!
//! Every reconciliation (start, SIGHUP, `netd reconcile`, a periodic check
//! that finds an overlay route missing) hands the service the `[overlay]`
//! section as the daemon last read it, and the service changes only the
//! peers that differ: the sessions of the others keep running.
//!
//! The section itself is parsed and checked in `crate::config::overlay`;
//! the daemon owns the service and lowers the containers' MTU to the
//! device's ([`OverlayService::mtu`]) when it opens the network.

mod key;
mod report;

use std::collections::BTreeMap;
use std::path::Path;

use ::overlay::{Device, DeviceConfig, PeerConfig, PublicKey};
use ipnetwork::IpNetwork;
use plumb::{Netlink, Netns, Route};

pub use key::load_or_generate_key;
pub use report::{OverlayStatus, PeerReport};

use crate::action::Action;
use crate::config::overlay::{read_preshared_key, OverlayConfig, StaticPeer};
use crate::error::{Error, KernelContext, Result};

/// The running overlay of one netd.
pub struct OverlayService {
    device: Device,
    host: Netns,
    interface: String,
    cluster_range: ipnetwork::Ipv4Network,
    /// The `[overlay]` keys netd started with, to warn when a re-read file
    /// changes one that only a restart applies.
    started_with: OverlayConfig,
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

impl OverlayService {
    /// Creates the overlay device of `section` in `host` (the namespace
    /// netd manages), with the private key in `key_file`. The peers come
    /// with the first reconciliation.
    pub async fn start(
        host: &Netns,
        section: &OverlayConfig,
        key_file: &Path,
    ) -> Result<OverlayService> {
        let key = load_or_generate_key(key_file)?;
        let mut device_config = DeviceConfig::new(key);
        device_config.name = section.interface.clone();
        device_config.listen_port = section.listen_port;
        device_config.mtu = section.mtu;
        let device = Device::create(host, device_config).await.map_err(|e| {
            Error::overlay(
                format!(
                    "start the overlay (is another WireGuard using port {} or link {}?)",
                    section.listen_port, section.interface
                ),
                e,
            )
        })?;
        Ok(OverlayService {
            host: host.clone(),
            interface: section.interface.clone(),
            cluster_range: section.cluster_range,
            started_with: section.clone(),
            device,
            applied: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.device.public_key()
    }

    /// The device's MTU: inner packets must fit it, so containers get no more.
    pub fn mtu(&self) -> u32 {
        self.device.mtu()
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn cluster_range(&self) -> ipnetwork::Ipv4Network {
        self.cluster_range
    }

    /// Applies the peers of `section` (the `[overlay]` section as the daemon
    /// last read it; None: keep the current peers) where they differ, and
    /// ensures each peer's route. Returns what it did and what failed (one
    /// sentence each).
    pub async fn reconcile(&self, section: Option<&OverlayConfig>) -> (Vec<Action>, Vec<String>) {
        let mut actions = Vec::new();
        let mut errors = Vec::new();
        let mut applied = self.applied.lock().await;
        let wanted = match section {
            Some(section) => {
                self.warn_about_restart_keys(section);
                section.peers.clone()
            }
            None => applied.values().cloned().collect(),
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
        if now.differs_beyond_peers(&self.started_with) {
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
            config.preshared_key = Some(read_preshared_key(path).map_err(|e| {
                Error::InvalidInput(format!("overlay: peer {}: {e}", peer.public_key))
            })?);
        }
        self.device
            .set_peer(config)
            .map_err(|e| Error::overlay(format!("overlay: set peer {}", peer.public_key), e))?;
        if let Some(old) = before.filter(|old| old.subnet != peer.subnet) {
            self.unroute(nl, old.subnet).await?;
        }
        self.route(nl, peer).await
    }

    async fn remove(&self, nl: &Netlink, peer: &StaticPeer) -> Result<()> {
        match self.device.remove_peer(&peer.public_key) {
            Ok(()) | Err(::overlay::DeviceError::UnknownPeer { .. }) => {}
            Err(e) => {
                return Err(Error::overlay(
                    format!("overlay: remove peer {}", peer.public_key),
                    e,
                ))
            }
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
