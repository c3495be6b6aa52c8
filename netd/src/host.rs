//! The core every part of netd shares: the namespace netd manages and its
//! netlink connection, the bridge with its gateway addresses and forwarding,
//! the state store, the metrics, the container MTU, and the lock that keeps
//! a full reconciliation apart from attaches and detaches.
//!
//! The parts (`endpoints`, `ports`, the daemon's overlay service) hold an
//! `Arc<Host>` and reach it only through the methods below; a new part (the
//! cluster) needs nothing else.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use plumb::{LinkChange, LinkOptions, Netlink, Netns};
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::action::Action;
use crate::config::Config;
use crate::error::{Error, KernelContext, Result};
use crate::ipam;
use crate::metrics::Metrics;
use crate::state::Store;

pub struct Host {
    config: Config,
    netns: Netns,
    store: Store,
    metrics: Arc<Metrics>,
    /// The MTU of the bridge and the containers' interfaces, decided once at
    /// open: the configured one, lowered to the overlay's when one runs.
    container_mtu: Option<u32>,
    /// Attaches and detaches share it; a full reconciliation takes it alone,
    /// so it never sees (and "repairs") an endpoint half-way through a change.
    ops: RwLock<()>,
    netlink: OnceCell<Netlink>,
    /// Set once the host was found (or made) ready; an attach that fails
    /// clears it so the next one looks again.
    ready: AtomicBool,
    /// The bridge's index (0: not known), noted wherever the bridge is
    /// looked at, so that an attach need not look it up.
    bridge_index: AtomicU32,
}

/// Opens the namespace `config` names (`netns`), or netd's own.
pub fn open_namespace(config: &Config) -> Result<Netns> {
    match &config.netns {
        Some(spec) => Netns::resolve(spec)
            .ctx(|| format!("open the namespace netd manages ({spec}, from --netns)")),
        None => Netns::current().ctx(|| "open netd's own network namespace"),
    }
}

/// The containers' MTU: the configured one, but never more than the
/// overlay's (`overlay_mtu`, when the daemon runs one), so that their
/// packets fit through it.
pub fn container_mtu(configured: Option<u32>, overlay_mtu: Option<u32>) -> Option<u32> {
    match (configured, overlay_mtu) {
        (configured, None) => configured,
        (Some(m), Some(overlay)) if m <= overlay => Some(m),
        (Some(m), Some(overlay)) => {
            tracing::warn!(
                "mtu {m} is larger than the overlay's {overlay}; containers get {overlay} so their packets fit"
            );
            Some(overlay)
        }
        (None, Some(overlay)) => Some(overlay),
    }
}

impl Host {
    /// Opens the state directory in `netns`. Changes nothing in the kernel.
    pub fn open(config: Config, netns: Netns, container_mtu: Option<u32>) -> Result<Host> {
        config.validate()?;
        let store = Store::open(&config.state_dir)?;
        Ok(Host {
            config,
            netns,
            store,
            metrics: Arc::new(Metrics::default()),
            container_mtu,
            ops: RwLock::new(()),
            netlink: OnceCell::new(),
            ready: AtomicBool::new(false),
            bridge_index: AtomicU32::new(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The namespace netd manages.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The MTU of the bridge and of containers that ask for none.
    pub fn container_mtu(&self) -> Option<u32> {
        self.container_mtu
    }

    /// Held by an operation on one container (attach, detach, publish, gc).
    pub async fn shared_op(&self) -> RwLockReadGuard<'_, ()> {
        self.ops.read().await
    }

    /// Held by a full reconciliation, and by a quick check that found
    /// something amiss and looks again.
    pub async fn exclusive_op(&self) -> RwLockWriteGuard<'_, ()> {
        self.ops.write().await
    }

    /// The netlink connection into the host namespace, opened on first use
    /// and shared by every operation (plumb lets dumps on one connection
    /// take turns, as the kernel runs one at a time per socket). Opening one
    /// costs a thread entering the namespace, which every attach used to pay
    /// several times.
    pub async fn netlink(&self) -> Result<Netlink> {
        self.netlink
            .get_or_try_init(|| async {
                Netlink::open(&self.netns)
                    .await
                    .ctx(|| format!("open netlink in {}", self.netns.label()))
            })
            .await
            .cloned()
    }

    /// The bridge's addresses: each subnet's gateway with the subnet's prefix.
    pub fn gateway_networks(&self) -> Vec<IpNetwork> {
        self.config
            .subnets()
            .into_iter()
            .map(|s| IpNetwork::new(ipam::gateway(s), s.prefix()).expect("prefix of a subnet"))
            .collect()
    }

    pub fn gateways(&self) -> Vec<IpAddr> {
        self.gateway_networks().iter().map(|n| n.ip()).collect()
    }

    /// The bridge's own MAC, chosen once and the same at every start. A
    /// bridge without one takes the lowest MAC of its ports: the gateway's
    /// MAC would change under the containers' ARP caches as containers come
    /// and go, and the kernel would look through every port at each attach to
    /// find the lowest.
    fn bridge_mac(&self) -> plumb::MacAddr {
        plumb::MacAddr::from_seed(&format!(
            "weft bridge {} {}",
            self.config.bridge, self.config.subnet
        ))
    }

    /// The MAC of every container's host-side veth end. Nothing is ever sent
    /// to or from these ports' own addresses (they carry no IP; containers
    /// address the gateway, the bridge), but the bridge keeps a permanent
    /// forwarding entry for each distinct one and, whenever a port is added,
    /// visits every permanent entry: one shared MAC keeps that to one entry,
    /// where per-port MACs made each attach cost more with every container.
    pub(crate) fn port_mac(&self) -> plumb::MacAddr {
        plumb::MacAddr::from_seed(&format!(
            "weft ports {} {}",
            self.config.bridge, self.config.subnet
        ))
    }

    /// Makes sure the bridge exists and is up with the gateway addresses, and
    /// that forwarding is on. Idempotent; safe against a concurrent caller.
    /// The firewall's part of the host is the ports part's.
    pub async fn ensure_bridge(&self) -> Result<Vec<Action>> {
        let nl = self.netlink().await?;
        let mut actions = Vec::new();
        let bridge = &self.config.bridge;
        let ctx = |what: &str| format!("set up bridge {bridge} in {}: {what}", self.netns.label());
        let link = match nl.link(bridge).await.ctx(|| ctx("list links"))? {
            Some(link) => link,
            None => {
                let opts = LinkOptions {
                    up: true,
                    mtu: self.container_mtu,
                    mac: Some(self.bridge_mac()),
                    ..Default::default()
                };
                match nl.add_bridge(bridge, &opts).await {
                    Ok(()) => actions.push(Action::new(
                        "bridge_created",
                        format!("created bridge {bridge}"),
                    )),
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(Error::kernel(ctx("create it"), e)),
                }
                nl.require_link(bridge).await.ctx(|| ctx("find it"))?
            }
        };
        if !link.is_kind("bridge") {
            self.forget_bridge_index();
            return Err(Error::Conflict(format!(
                "link {bridge} in {} exists but is a {}, not a bridge; choose another --bridge or remove it",
                self.netns.label(),
                link.kind.as_deref().unwrap_or("plain device")
            )));
        }
        self.bridge_index.store(link.index, Ordering::Release);
        if !link.up {
            nl.set_up(bridge).await.ctx(|| ctx("bring it up"))?;
            actions.push(Action::new("bridge_up", format!("brought {bridge} up")));
        }
        if let Some(mtu) = self.container_mtu {
            if link.mtu != mtu {
                let change = LinkChange {
                    mtu: Some(mtu),
                    ..Default::default()
                };
                nl.set_link(bridge, &change)
                    .await
                    .ctx(|| ctx("set its MTU"))?;
            }
        }
        // Set every time (one request, and ensure_bridge runs once per start
        // and per repair), so that a config change applies to an existing bridge.
        nl.set_bridge_multicast_snooping(bridge, self.config.multicast_snooping)
            .await
            .ctx(|| ctx("set its multicast snooping"))?;
        let present = nl
            .addresses(Some(link.index))
            .await
            .ctx(|| ctx("list its addresses"))?;
        for gw in self.gateway_networks() {
            if present.iter().any(|a| a.network == gw) {
                continue;
            }
            match nl.add_address(bridge, gw, true).await {
                Ok(()) => actions.push(Action::new(
                    "gateway_added",
                    format!("added gateway {gw} to {bridge}"),
                )),
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(Error::kernel(ctx(&format!("add gateway {gw}")), e)),
            }
        }
        let mut sysctls = vec!["net.ipv4.ip_forward"];
        if self.config.subnet6.is_some() {
            sysctls.push("net.ipv6.conf.all.forwarding");
        }
        for key in sysctls {
            let set = plumb::sysctl::read(&self.netns, key)
                .ctx(|| format!("read {key} in {}", self.netns.label()))?;
            if set != "1" {
                plumb::sysctl::write(&self.netns, key, "1")
                    .ctx(|| format!("enable forwarding in {}", self.netns.label()))?;
                actions.push(Action::new("sysctl_set", format!("set {key}=1")));
            }
        }
        Ok(actions)
    }

    /// True when the bridge is up with every gateway address: the cheap look
    /// an attach makes before it relies on the host. Notes the bridge's index.
    pub(crate) async fn bridge_looks_ready(&self) -> Result<bool> {
        let nl = self.netlink().await?;
        let ready = match nl
            .link(&self.config.bridge)
            .await
            .ctx(|| "list links".to_string())?
        {
            Some(bridge) if bridge.up => {
                self.bridge_index.store(bridge.index, Ordering::Release);
                let addrs = nl
                    .addresses(Some(bridge.index))
                    .await
                    .ctx(|| "list bridge addresses".to_string())?;
                self.gateway_networks()
                    .iter()
                    .all(|gw| addrs.iter().any(|a| a.network == *gw))
            }
            _ => false,
        };
        Ok(ready)
    }

    /// Whether the host was found (or made) ready since the last failure.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Notes the host ready (true) or makes the next attach look again (false).
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The bridge's index, as last seen (looked up when not known yet).
    pub(crate) async fn bridge_index(&self, nl: &Netlink) -> Result<u32> {
        let known = self.bridge_index.load(Ordering::Acquire);
        if known != 0 {
            return Ok(known);
        }
        let bridge = nl
            .require_link(&self.config.bridge)
            .await
            .ctx(|| format!("find bridge {}", self.config.bridge))?;
        self.bridge_index.store(bridge.index, Ordering::Release);
        Ok(bridge.index)
    }

    /// Makes the next [`Host::bridge_index`] look the bridge up again.
    pub(crate) fn forget_bridge_index(&self) {
        self.bridge_index.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_get_the_overlay_mtu_when_theirs_would_not_fit() {
        assert_eq!(container_mtu(None, None), None);
        assert_eq!(container_mtu(Some(1400), None), Some(1400));
        assert_eq!(container_mtu(None, Some(1420)), Some(1420));
        assert_eq!(container_mtu(Some(1300), Some(1420)), Some(1300));
        assert_eq!(container_mtu(Some(1500), Some(1420)), Some(1420));
    }
}
