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
mod peer;
mod report;

use std::collections::BTreeMap;
use std::path::Path;

use ::overlay::{Device, DeviceConfig, PeerConfig, PublicKey};
use ipnetwork::IpNetwork;
use plumb::{Netlink, Netns, Route};

pub use key::load_or_generate_key;
pub use peer::{ClusterHostInfo, OverlayPeer, PeerOrigin};
pub use report::{OverlayStatus, PeerReport};

use crate::action::Action;
use crate::config::overlay::{read_preshared_key, OverlayConfig};
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
    applied: tokio::sync::Mutex<BTreeMap<PublicKey, OverlayPeer>>,
    /// The static list as last read, and the cluster's peers as last seen:
    /// together what the device should have (a static entry wins a key both name).
    statics: std::sync::Mutex<Vec<OverlayPeer>>,
    from_store: std::sync::Mutex<Vec<OverlayPeer>>,
    /// Set once the cluster hands peers: the `[overlay]` keys then come
    /// from the cluster's config, not the file.
    cluster_managed: std::sync::atomic::AtomicBool,
    /// Per store peer, its record's revision when its liveness key last changed.
    incarnations: std::sync::Mutex<BTreeMap<PublicKey, i64>>,
    /// Where the device's private key is kept (rewritten by a rotation).
    key_file: std::path::PathBuf,
    /// One netlink connection to `host` for every apply and check (a view
    /// is applied at every change of any host).
    netlink: Netlink,
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
        let netlink = Netlink::open(host)
            .await
            .ctx(|| format!("overlay: open netlink in {}", host.label()))?;
        Ok(OverlayService {
            netlink,
            host: host.clone(),
            interface: section.interface.clone(),
            cluster_range: section.cluster_range,
            started_with: section.clone(),
            device,
            applied: tokio::sync::Mutex::new(BTreeMap::new()),
            statics: std::sync::Mutex::new(Vec::new()),
            from_store: std::sync::Mutex::new(Vec::new()),
            cluster_managed: std::sync::atomic::AtomicBool::new(false),
            incarnations: std::sync::Mutex::new(BTreeMap::new()),
            key_file: key_file.to_path_buf(),
        })
    }

    /// Key rotation: makes a new private key, switches the device to it in
    /// place (every peer handshakes again under it) and writes it to the key
    /// file (atomically, 0600). Returns the old private key, for `restore_key`
    /// should publishing the new public key fail. On error nothing changed.
    pub fn rotate_key(&self) -> Result<::overlay::PrivateKey> {
        let file = self.key_file.display();
        let old = ::overlay::PrivateKey::read_file(&self.key_file).map_err(|e| {
            Error::Setup(format!(
                "overlay: rotate the key: read the key file {file}: {e}"
            ))
        })?;
        if old.public_key() != self.device.public_key() {
            return Err(Error::Conflict(format!(
                "overlay: rotate the key: the key file {file} no longer holds the device's key \
                 (changed by hand?); restart netd to load it, then rotate"
            )));
        }
        let new = ::overlay::PrivateKey::generate()
            .map_err(|e| Error::Setup(format!("overlay: rotate the key: generate a key: {e}")))?;
        self.device
            .set_private_key(new.clone())
            .map_err(|e| Error::overlay("overlay: rotate the key".to_string(), e))?;
        if let Err(e) = new.write_file(&self.key_file) {
            self.restore_key(old)?;
            return Err(Error::Setup(format!(
                "overlay: rotate the key: write the key file {file}: {e}; kept the old key"
            )));
        }
        Ok(old)
    }

    /// Puts `key` back on the device and in the key file (a rotation undone).
    pub fn restore_key(&self, key: ::overlay::PrivateKey) -> Result<()> {
        key.write_file(&self.key_file).map_err(|e| {
            Error::Setup(format!(
                "overlay: restore the old key in {}: {e}",
                self.key_file.display()
            ))
        })?;
        self.device
            .set_private_key(key)
            .map_err(|e| Error::overlay("overlay: restore the old key".to_string(), e))
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
        self.apply(section, RouteCheck::All).await
    }

    async fn apply(
        &self,
        section: Option<&OverlayConfig>,
        route_check: RouteCheck,
    ) -> (Vec<Action>, Vec<String>) {
        let mut actions = Vec::new();
        let mut errors = Vec::new();
        let mut applied = self.applied.lock().await;
        if let Some(section) = section {
            self.warn_about_restart_keys(section);
            *self.statics.lock().unwrap_or_else(|e| e.into_inner()) =
                section.peers.iter().map(OverlayPeer::from_static).collect();
        }
        let wanted = self.wanted();
        let nl = &self.netlink;
        let gone: Vec<OverlayPeer> = applied
            .values()
            .filter(|p| !wanted.contains_key(&p.public_key))
            .cloned()
            .collect();
        // Hosts whose key changed (rotation): the same host under a new key.
        let rekeyed: Vec<String> = gone
            .iter()
            .filter_map(|p| p.host.as_ref().map(|h| h.id.clone()))
            .collect();
        for peer in gone {
            match self.remove(nl, &peer).await {
                Ok(()) => {
                    applied.remove(&peer.public_key);
                    actions.push(Action::new(
                        "overlay_peer_removed",
                        format!("overlay: removed peer {}", peer.describe()),
                    ));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }

        let routed = match route_check {
            RouteCheck::All => match self.routed_subnets(nl).await {
                Ok(r) => Some(r),
                Err(e) => {
                    errors.push(e.to_string());
                    Some(Vec::new())
                }
            },
            RouteCheck::ChangedPeers => None,
        };
        for peer in wanted.values() {
            let before = applied.get(&peer.public_key).cloned();
            if let Some(b) = before.as_ref().filter(|b| b.same_on_device(peer)) {
                // Liveness and names change nothing on the device; a host
                // that started again has a new device, which knows none of
                // our sessions: start a new one rather than wait out
                // WireGuard's 15 s timeout.
                if self.restarted(b, peer) {
                    match self.renew_session(peer) {
                        Ok(()) => actions.push(Action::new(
                            "overlay_session_renewed",
                            format!(
                                "overlay: peer {} started again; new session",
                                peer.describe()
                            ),
                        )),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                applied.insert(peer.public_key, peer.clone());
                let Some(routed) = &routed else { continue };
                for subnet in peer.subnets.iter().filter(|s| !routed.contains(s)) {
                    match self.route(nl, *subnet).await {
                        Ok(()) => actions.push(Action::new(
                            "overlay_route_restored",
                            format!(
                                "overlay: restored the route to {subnet} via {}",
                                self.interface
                            ),
                        )),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                continue;
            }
            match self.set(nl, peer, before.as_ref()).await {
                Ok(()) => {
                    let (kind, verb) = match before {
                        Some(_) => ("overlay_peer_changed", "changed"),
                        None => ("overlay_peer_added", "added"),
                    };
                    if let Some(h) = &peer.host {
                        self.incarnations
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(peer.public_key, h.record_revision);
                    }
                    applied.insert(peer.public_key, peer.clone());
                    if before.is_none()
                        && peer.host.as_ref().is_some_and(|h| rekeyed.contains(&h.id))
                    {
                        self.handshake_now(peer);
                    }
                    actions.push(Action::new(
                        kind,
                        format!("overlay: {verb} peer {}", peer.describe()),
                    ));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (actions, errors)
    }

    /// Some(reason) when a peer's route is missing: the quick check's part.
    pub async fn needs_reconcile(&self) -> Result<Option<&'static str>> {
        let routed = self.routed_subnets(&self.netlink).await?;
        let applied = self.applied.lock().await;
        Ok(applied
            .values()
            .any(|p| p.subnets.iter().any(|s| !routed.contains(s)))
            .then_some("overlay route missing"))
    }

    fn warn_about_restart_keys(&self, now: &OverlayConfig) {
        let managed = self
            .cluster_managed
            .load(std::sync::atomic::Ordering::Relaxed);
        if !managed && now.differs_beyond_peers(&self.started_with) {
            tracing::warn!(
                "overlay: [overlay] keys other than the peer list changed; they apply when netd restarts"
            );
        }
    }

    async fn set(
        &self,
        nl: &Netlink,
        peer: &OverlayPeer,
        before: Option<&OverlayPeer>,
    ) -> Result<()> {
        let mut config = PeerConfig::new(peer.public_key);
        // An endpoint is set only when the configured or advertised value
        // changed: one learnt from roaming traffic is never overwritten by a
        // rewrite of the same value (kilo #34).
        config.endpoint = match before {
            Some(old) if old.endpoint == peer.endpoint => None,
            _ => peer.endpoint,
        };
        config.allowed_ips = peer.subnets.clone();
        config.persistent_keepalive = peer.persistent_keepalive;
        if let Some(path) = &peer.preshared_key_file {
            config.preshared_key = Some(read_preshared_key(path).map_err(|e| {
                Error::InvalidInput(format!("overlay: peer {}: {e}", peer.public_key))
            })?);
        }
        self.device
            .set_peer(config)
            .map_err(|e| Error::overlay(format!("overlay: set peer {}", peer.describe()), e))?;
        if let Some(old) = before {
            for subnet in old.subnets.iter().filter(|s| !peer.subnets.contains(s)) {
                self.unroute(nl, *subnet).await?;
            }
        }
        for subnet in &peer.subnets {
            self.route(nl, *subnet).await?;
        }
        Ok(())
    }

    async fn remove(&self, nl: &Netlink, peer: &OverlayPeer) -> Result<()> {
        match self.device.remove_peer(&peer.public_key) {
            Ok(()) | Err(::overlay::DeviceError::UnknownPeer { .. }) => {}
            Err(e) => {
                return Err(Error::overlay(
                    format!("overlay: remove peer {}", peer.public_key),
                    e,
                ))
            }
        }
        // A subnet that moved to another wanted peer keeps its (replaced) route.
        let still_wanted: Vec<IpNetwork> = self
            .wanted()
            .into_values()
            .flat_map(|p| p.subnets)
            .collect();
        for subnet in peer.subnets.iter().filter(|s| !still_wanted.contains(s)) {
            self.unroute(nl, *subnet).await?;
        }
        Ok(())
    }

    fn route_to(&self, subnet: IpNetwork) -> Route {
        Route {
            destination: Some(subnet),
            dev: Some(self.interface.clone()),
            ..Default::default()
        }
    }

    async fn route(&self, nl: &Netlink, subnet: IpNetwork) -> Result<()> {
        nl.replace_route(&self.route_to(subnet)).await.ctx(|| {
            format!(
                "overlay: route {subnet} via {} in {}",
                self.interface,
                self.host.label()
            )
        })
    }

    async fn unroute(&self, nl: &Netlink, subnet: IpNetwork) -> Result<()> {
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

    /// True when a store peer's liveness key was put again after its record
    /// was rewritten: the host joined again (a restart). A lease granted
    /// again after a store outage rewrites only the liveness key; the hourly
    /// reservation refresh only the record.
    fn restarted(&self, before: &OverlayPeer, now: &OverlayPeer) -> bool {
        let (Some(b), Some(n)) = (&before.host, &now.host) else {
            return false;
        };
        if n.alive_revision.is_none() || n.alive_revision == b.alive_revision {
            return false;
        }
        let mut incarnations = self.incarnations.lock().unwrap_or_else(|e| e.into_inner());
        let seen = incarnations
            .insert(now.public_key, n.record_revision)
            .unwrap_or(b.record_revision);
        seen != n.record_revision
    }

    /// Starts the session with a host's new key at once: the host switched
    /// to it already, and its own first initiation under it was refused
    /// while this side still had the old key (it retries only after 5 s).
    fn handshake_now(&self, peer: &OverlayPeer) {
        match self.device.initiate_handshake(&peer.public_key) {
            Ok(sent) => tracing::debug!(peer = %peer.describe(), sent, "handshake with a new key"),
            Err(e) => tracing::warn!("overlay: handshake with {}: {e}", peer.describe()),
        }
    }

    /// Drops the peer's session and sets it again, keeping the endpoint it
    /// has now (learnt or advertised): the next packet handshakes.
    fn renew_session(&self, peer: &OverlayPeer) -> Result<()> {
        let endpoint = self
            .device
            .peer_stats(&peer.public_key)
            .and_then(|s| s.endpoint)
            .or(peer.endpoint);
        let mut config = PeerConfig::new(peer.public_key);
        config.endpoint = endpoint;
        config.allowed_ips = peer.subnets.clone();
        config.persistent_keepalive = peer.persistent_keepalive;
        let context = || format!("overlay: renew the session of peer {}", peer.describe());
        match self.device.remove_peer(&peer.public_key) {
            Ok(()) | Err(::overlay::DeviceError::UnknownPeer { .. }) => {}
            Err(e) => return Err(Error::overlay(context(), e)),
        }
        self.device
            .set_peer(config)
            .map_err(|e| Error::overlay(context(), e))
    }

    /// The static peers and the cluster's, by key (a static entry wins).
    fn wanted(&self) -> BTreeMap<PublicKey, OverlayPeer> {
        let mut wanted: BTreeMap<PublicKey, OverlayPeer> = self
            .from_store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| (p.public_key, p.clone()))
            .collect();
        for peer in self
            .statics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            wanted.insert(peer.public_key, peer.clone());
        }
        wanted
    }

    /// The overlay's keys come from the cluster's config from now on: a
    /// re-read `[overlay]` section that differs is expected, not a warning.
    pub fn mark_cluster_managed(&self) {
        self.cluster_managed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the cluster's peers (the whole current view) and applies the
    /// difference with the static ones through the same path as a reconciliation.
    pub async fn set_store_peers(&self, peers: Vec<OverlayPeer>) -> (Vec<Action>, Vec<String>) {
        self.mark_cluster_managed();
        *self.from_store.lock().unwrap_or_else(|e| e.into_inner()) = peers;
        // A view comes with every change of any host (a storm of them when a
        // cluster starts): the routes of peers it does not change are left to
        // the periodic check rather than dumped from the kernel each time.
        self.apply(None, RouteCheck::ChangedPeers).await
    }

    /// Sends a handshake initiation to every applied peer with an endpoint.
    /// For a start the peers cannot hear of (the store is down): they still
    /// hold sessions with this host's previous device and would send into
    /// them until their rekey timeout, some 15 s.
    pub async fn greet_peers(&self) {
        for peer in self.applied.lock().await.values() {
            if peer.endpoint.is_some() {
                self.handshake_now(peer);
            }
        }
    }

    /// The peers as applied, by public key (for the reports).
    pub async fn applied_peers(&self) -> BTreeMap<PublicKey, OverlayPeer> {
        self.applied.lock().await.clone()
    }

    /// Destinations (IPv4 and IPv6) routed through the overlay link now.
    async fn routed_subnets(&self, nl: &Netlink) -> Result<Vec<IpNetwork>> {
        let mut routes = nl
            .routes(false, false)
            .await
            .ctx(|| format!("overlay: list routes in {}", self.host.label()))?;
        routes.extend(
            nl.routes(true, false)
                .await
                .ctx(|| format!("overlay: list IPv6 routes in {}", self.host.label()))?,
        );
        Ok(routes
            .into_iter()
            .filter(|r| r.dev.as_deref() == Some(self.interface.as_str()))
            .filter_map(|r| r.destination)
            .collect())
    }
}

/// Which peers' routes an apply checks against the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteCheck {
    /// Every wanted peer's: a reconciliation restores any that is missing.
    All,
    /// Only those of peers it sets (a view from the store).
    ChangedPeers,
}
