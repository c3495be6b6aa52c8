//! The host network model in one value: configuration, the host namespace,
//! the state store, the firewall and the metrics. The daemon serves it over
//! its API; a CNI plugin in standalone mode uses it directly:
//!
//! ```no_run
//! # async fn demo() -> netd::Result<()> {
//! let config = netd::Config::from_env()?; // netd.toml, then WEFT_* variables
//! let network = netd::Network::open(config).await?;
//! let result = network
//!     .attach(netd::AttachRequest { netns: "/run/netns/c1".into(), id: Some("c1".into()), ..Default::default() })
//!     .await?;
//! network.detach("c1").await?;
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use plumb::firewall::{BackendKind, Firewall};
use plumb::{LinkChange, LinkOptions, Netlink, Netns};
use serde::{Deserialize, Serialize};

use crate::config::{Config, FirewallKind};
use crate::error::{Error, KernelContext, Result};
use crate::ipam;
use crate::metrics::Metrics;
use crate::state::Store;

/// One change reconciliation (or host setup) made, for logs, reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// A stable label for metrics: "bridge_created", "repaired", …
    pub kind: String,
    /// What was done, in words.
    pub detail: String,
}

impl Action {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Action {
        Action {
            kind: kind.to_string(),
            detail: detail.into(),
        }
    }
}

pub struct Network {
    pub(crate) config: Config,
    pub(crate) host: Netns,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) firewall: Arc<dyn Firewall>,
    /// Attaches and detaches share it; a full reconciliation takes it alone,
    /// so it never sees (and "repairs") an endpoint half-way through a change.
    pub(crate) ops: tokio::sync::RwLock<()>,
    /// The WireGuard overlay, when `[overlay]` enables it and a daemon runs.
    pub(crate) overlay: std::sync::OnceLock<Arc<crate::overlay::OverlayService>>,
    host_netlink: tokio::sync::OnceCell<Netlink>,
    /// Set once the host was found (or made) ready; an attach that fails
    /// clears it so the next one looks again.
    pub(crate) host_ready: std::sync::atomic::AtomicBool,
    /// The bridge's index (0: not known), noted wherever the bridge is
    /// looked at, so that an attach need not look it up.
    bridge_index: std::sync::atomic::AtomicU32,
    /// Deletes detached containers' links in the background (the daemon's
    /// choice, see [`Network::reap_in_background`]).
    pub(crate) reaper: std::sync::OnceLock<crate::reaper::Reaper>,
    /// Relays `[::1]` to published ports (the daemon's choice, see
    /// [`Network::relay_ipv6_localhost`]).
    pub(crate) localhost_proxy: std::sync::OnceLock<crate::localhost_proxy::LocalhostProxy>,
}

impl Network {
    /// Opens the host namespace (`config.netns`, or the current one) and the
    /// state directory. Changes nothing in the kernel.
    pub async fn open(config: Config) -> Result<Network> {
        config.validate()?;
        let host = match &config.netns {
            Some(spec) => Netns::resolve(spec)
                .ctx(|| format!("open the namespace netd manages ({spec}, from --netns)"))?,
            None => Netns::current().ctx(|| "open netd's own network namespace")?,
        };
        let store = Store::open(&config.state_dir)?;
        let backend = match config.firewall {
            FirewallKind::Nft => BackendKind::Nftables,
            FirewallKind::Iptables => BackendKind::Iptables,
        };
        let firewall: Arc<dyn Firewall> = Arc::from(backend.open(host.clone()));
        Ok(Network {
            firewall,
            config,
            host,
            store,
            metrics: Arc::new(Metrics::default()),
            ops: tokio::sync::RwLock::new(()),
            overlay: std::sync::OnceLock::new(),
            host_netlink: tokio::sync::OnceCell::new(),
            host_ready: std::sync::atomic::AtomicBool::new(false),
            bridge_index: std::sync::atomic::AtomicU32::new(0),
            reaper: std::sync::OnceLock::new(),
            localhost_proxy: std::sync::OnceLock::new(),
        })
    }

    /// The netlink connection into the host namespace, opened on first use
    /// and shared by every operation (plumb lets dumps on one connection
    /// take turns, as the kernel runs one at a time per socket). Opening one
    /// costs a thread entering the namespace, which every attach used to pay
    /// several times.
    pub(crate) async fn netlink(&self) -> Result<Netlink> {
        self.host_netlink
            .get_or_try_init(|| async {
                Netlink::open(&self.host)
                    .await
                    .ctx(|| format!("open netlink in {}", self.host.label()))
            })
            .await
            .cloned()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn host_netns(&self) -> &Netns {
        &self.host
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
    pub async fn ensure_host(&self) -> Result<Vec<Action>> {
        let nl = self.netlink().await?;
        let mut actions = Vec::new();
        let bridge = &self.config.bridge;
        let ctx = |what: &str| format!("set up bridge {bridge} in {}: {what}", self.host.label());
        let link = match nl.link(bridge).await.ctx(|| ctx("list links"))? {
            Some(link) => link,
            None => {
                let opts = LinkOptions {
                    up: true,
                    mtu: self.config.mtu,
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
                self.host.label(),
                link.kind.as_deref().unwrap_or("plain device")
            )));
        }
        self.bridge_index
            .store(link.index, std::sync::atomic::Ordering::Release);
        if !link.up {
            nl.set_up(bridge).await.ctx(|| ctx("bring it up"))?;
            actions.push(Action::new("bridge_up", format!("brought {bridge} up")));
        }
        if let Some(mtu) = self.config.mtu {
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
        // Set every time (one request, and ensure_host runs once per start
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
            let set = plumb::sysctl::read(&self.host, key)
                .ctx(|| format!("read {key} in {}", self.host.label()))?;
            if set != "1" {
                plumb::sysctl::write(&self.host, key, "1")
                    .ctx(|| format!("enable forwarding in {}", self.host.label()))?;
                actions.push(Action::new("sysctl_set", format!("set {key}=1")));
            }
        }
        let rules = self.network_rules();
        crate::publish::firewall_call(&self.firewall, move |fw| fw.ensure(&rules))
            .await
            .ctx(|| {
                format!(
                    "set up NAT for {} in {}",
                    self.config.bridge,
                    self.host.label()
                )
            })?;
        Ok(actions)
    }

    /// The bridge's index, as last seen (looked up when not known yet).
    pub(crate) async fn bridge_index(&self, nl: &Netlink) -> Result<u32> {
        use std::sync::atomic::Ordering;
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

    /// Makes the next [`Network::bridge_index`] look the bridge up again.
    pub(crate) fn forget_bridge_index(&self) {
        self.bridge_index
            .store(0, std::sync::atomic::Ordering::Release);
    }

    /// `ensure_host` only when the bridge or a gateway address is missing:
    /// what an attach calls, so that the first attach without a daemon (a CNI
    /// plugin in standalone mode) sets the host up, and later ones cost nothing.
    pub async fn ensure_host_once(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        // Looked at once per process: the address dump below grows with the
        // links in the namespace. Later damage is the periodic check's job.
        if self.host_ready.load(Ordering::Acquire) {
            return Ok(());
        }
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
        if !ready {
            self.ensure_host().await?;
        }
        self.host_ready.store(true, Ordering::Release);
        Ok(())
    }
}
