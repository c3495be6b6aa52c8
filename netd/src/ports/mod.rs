//! Published ports: netd keeps them in the state with their endpoint, refuses
//! a host port that is already published, and has its firewall policy
//! ([`firewall`], nftables or iptables, carried to the kernel by plumb)
//! forward them. Reconciliation re-applies the whole set when the ruleset
//! was flushed.
//!
//! - `mod.rs`: [`Ports`], the part that owns the firewall handle: the
//!   network's NAT rules, a container's ports added and withdrawn, the sync
//!   a reconciliation runs;
//! - `mapping.rs`: [`PortMapping`] (what a user asks to publish, parsed once
//!   at each edge) and [`PublishedPort`] (a mapping bound to a container);
//! - `publish.rs`: publish and unpublish ports of an attached container;
//! - `specs.rs`: mappings bound to a container's addresses and checked for
//!   clashes; the API's request body;
//! - `firewall/`: weft's table, chains, maps and rules (the policy);
//! - `localhost_relay.rs`: the daemon's `[::1]` relay ([`LocalhostRelay`]).

pub mod firewall;
mod localhost_relay;
pub mod mapping;
mod publish;
mod specs;

use std::sync::Arc;

use firewall::{BackendKind, Firewall, NetworkRules};
use ipnetwork::IpNetwork;

pub use localhost_relay::LocalhostRelay;
pub use mapping::{
    validate_all, InvalidPort, PortForward, PortMapping, PortRange, Protocol, PublishedPort,
};
pub use specs::{all_ports, attached, bind_specs, check_conflicts, PortsRequest};

use crate::config::FirewallKind;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::state::Endpoint;

/// The firewall of the host's network: NAT for the subnets and the
/// published ports of every container.
pub struct Ports {
    host: Arc<Host>,
    firewall: Arc<dyn Firewall>,
    /// The network's own rules, decided once at open.
    rules: NetworkRules,
}

impl Ports {
    /// Opens the configured firewall backend in the host's namespace.
    /// Changes nothing in the kernel.
    pub fn open(host: Arc<Host>) -> Ports {
        let config = host.config();
        let backend = match config.firewall {
            FirewallKind::Nft => BackendKind::Nftables,
            FirewallKind::Iptables => BackendKind::Iptables,
        };
        let firewall: Arc<dyn Firewall> = Arc::from(backend.open(host.netns().clone()));
        let rules = NetworkRules {
            bridge: config.bridge.clone(),
            subnets: config.subnets(),
            masquerade: config.masquerade,
            cluster_ranges: cluster_ranges(host.config()),
        };
        Ports {
            host,
            firewall,
            rules,
        }
    }

    /// What the firewall needs to know about this host's network.
    pub fn network_rules(&self) -> NetworkRules {
        self.rules.clone()
    }

    /// Runs a blocking firewall call off the async workers.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Firewall) -> plumb::Result<T> + Send + 'static,
    ) -> plumb::Result<T> {
        let fw = self.firewall.clone();
        tokio::task::spawn_blocking(move || call(fw.as_ref()))
            .await
            .map_err(|e| plumb::Error::Other(format!("firewall task failed: {e}")))?
    }

    /// Puts the network's NAT rules in place (the firewall's part of host setup).
    pub async fn ensure_rules(&self) -> Result<()> {
        let rules = self.network_rules();
        self.call(move |fw| fw.ensure(&rules)).await.map_err(|e| {
            Error::kernel(
                format!(
                    "set up NAT for {} in {}",
                    self.rules.bridge,
                    self.host.netns().label()
                ),
                e,
            )
        })
    }

    /// Forwards `ports` (already recorded in the state).
    pub async fn add(&self, ports: &[PublishedPort]) -> plumb::Result<()> {
        let ports = ports.to_vec();
        self.call(move |fw| fw.add_ports(&ports)).await
    }

    /// Withdraws a detached container's ports. A failure here is not fatal:
    /// reconciliation syncs the firewall with the state, which will no
    /// longer hold these ports.
    pub async fn withdraw(&self, ep: &Endpoint, relay: Option<&LocalhostRelay>) {
        if ep.ports.is_empty() {
            return;
        }
        self.stop_relaying(relay, &ep.ports);
        let ports = ep.ports.clone();
        if let Err(e) = self.call(move |fw| fw.remove_ports(&ports)).await {
            tracing::warn!(container = %ep.name, "withdraw published ports: {e}");
        }
    }

    /// Withdrawn ports: no longer relayed from `[::1]` (their numbers
    /// handed to another container's ports of the other family, if any).
    pub(super) fn stop_relaying(&self, relay: Option<&LocalhostRelay>, ports: &[PublishedPort]) {
        let Some(relay) = relay else {
            return;
        };
        // Unreadable state: the next reconciliation hands the numbers over.
        let published = self.host.store().read_with(all_ports).unwrap_or_default();
        relay.close(ports, &published);
    }

    /// Makes the firewall hold exactly the network rules and the ports in the state.
    pub async fn sync(&self) -> Result<()> {
        let ports = all_ports(&self.host.store().read()?);
        let rules = self.network_rules();
        self.call(move |fw| fw.sync(&rules, &ports))
            .await
            .map_err(|e| Error::kernel("re-apply the firewall rules", e))
    }

    /// False when the network's NAT rules are no longer in place (someone
    /// flushed the ruleset or deleted the table); CNI's CHECK asks this.
    pub async fn intact(&self) -> Result<bool> {
        let rules = self.network_rules();
        self.call(move |fw| fw.is_intact(&rules))
            .await
            .map_err(|e| Error::kernel("check the firewall rules", e))
    }
}

/// Destinations the firewall never masquerades: the cluster range when
/// the overlay is on, so containers see each other's real addresses.
pub fn cluster_ranges(config: &crate::config::Config) -> Vec<IpNetwork> {
    if config.overlay.enabled {
        vec![IpNetwork::V4(config.overlay.cluster_range)]
    } else {
        Vec::new()
    }
}
