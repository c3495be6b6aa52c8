//! The library's entry point: [`Network`] opens the core ([`Host`]) and its
//! parts ([`Ports`], [`Endpoints`]) and passes each call to the part that
//! owns it. A CNI plugin in standalone mode uses it directly:
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
//!
//! The daemon (`daemon/`) opens the same `Network` and adds what only
//! a long-running process has — the reaper, the `[::1]` relay, the overlay —
//! lending them to the parts' calls (see [`crate::endpoints::Background`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::ports::firewall::NetworkRules;
use crate::ports::{PortMapping, PublishedPort};
use ipnetwork::IpNetwork;
use plumb::Netns;

use crate::action::Action;
use crate::config::Config;
use crate::endpoints::{
    AttachRequest, AttachResult, Background, CheckExpected, DetachReport, Endpoints, GcReport,
    ReconcileReport, TestPauses,
};
use crate::error::Result;
use crate::host::{self, Host};
use crate::metrics::Metrics;
use crate::ports::Ports;
use crate::state::{Endpoint, Store};

/// One host network: the core and its parts, opened together.
pub struct Network {
    host: Arc<Host>,
    ports: Arc<Ports>,
    endpoints: Endpoints,
}

impl Network {
    /// Opens the host namespace (`config.netns`, or the current one) and the
    /// state directory. Changes nothing in the kernel.
    pub async fn open(config: Config) -> Result<Network> {
        config.validate()?;
        let netns = host::open_namespace(&config)?;
        let mtu = config.mtu;
        Network::open_in(config, netns, mtu)
    }

    /// Opens the network in `netns` with the containers' MTU decided by the
    /// caller (the daemon lowers it to its overlay's, see
    /// [`host::container_mtu`]). Reads the test knob [`crate::endpoints::PAUSE_ENV`] once.
    pub fn open_in(config: Config, netns: Netns, container_mtu: Option<u32>) -> Result<Network> {
        let host = Arc::new(Host::open(config, netns, container_mtu)?);
        let ports = Arc::new(Ports::open(host.clone()));
        let endpoints = Endpoints::new(host.clone(), ports.clone(), TestPauses::from_env());
        Ok(Network {
            host,
            ports,
            endpoints,
        })
    }

    /// The core: namespace, netlink, bridge, state, metrics.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The endpoints part: attach, detach, check, reconcile, gc.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The ports part: publish, withdraw, the firewall.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    pub fn config(&self) -> &Config {
        self.host.config()
    }

    pub fn store(&self) -> &Store {
        self.host.store()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.host.metrics()
    }

    pub fn host_netns(&self) -> &Netns {
        self.host.netns()
    }

    /// The bridge's addresses: each subnet's gateway with the subnet's prefix.
    pub fn gateway_networks(&self) -> Vec<IpNetwork> {
        self.host.gateway_networks()
    }

    pub fn gateways(&self) -> Vec<IpAddr> {
        self.host.gateways()
    }

    /// Makes sure the bridge exists and is up with the gateway addresses,
    /// that forwarding is on and the NAT rules are in place. Idempotent.
    pub async fn ensure_host(&self) -> Result<Vec<Action>> {
        self.endpoints.ensure_host().await
    }

    /// `ensure_host` only when the bridge or a gateway address is missing.
    pub async fn ensure_host_once(&self) -> Result<()> {
        self.endpoints.ensure_host_once().await
    }

    /// Attaches a container (see [`Endpoints::attach`]).
    pub async fn attach(&self, req: AttachRequest) -> Result<AttachResult> {
        self.endpoints.attach(req, Background::default()).await
    }

    /// Detaches a container by id or name, links and all, before it returns.
    pub async fn detach(&self, key: &str) -> Result<DetachReport> {
        self.endpoints.detach(key, Background::default()).await
    }

    /// The endpoints netd knows, attached or in flight.
    pub fn list(&self) -> Result<Vec<Endpoint>> {
        self.endpoints.list()
    }

    /// The attach result of an attached container, for CNI's CHECK and GET.
    pub fn get(&self, key: &str) -> Result<Option<AttachResult>> {
        self.endpoints.get(key)
    }

    /// CNI's CHECK (see [`Endpoints::check`]).
    pub async fn check(&self, key: &str) -> Result<()> {
        self.endpoints.check(key).await
    }

    /// CNI's CHECK with what the caller expects in the container (see
    /// [`Endpoints::check_expecting`]).
    pub async fn check_expecting(&self, key: &str, expected: &CheckExpected) -> Result<()> {
        self.endpoints.check_expecting(key, expected).await
    }

    /// CNI's GC (see [`Endpoints::gc`]).
    pub async fn gc(
        &self,
        owned: &(dyn Fn(&str) -> bool + Sync),
        keep: &BTreeSet<String>,
    ) -> Result<GcReport> {
        self.endpoints.gc(owned, keep).await
    }

    /// A full reconciliation, logged and counted.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let report = self.endpoints.reconcile(Background::default()).await?;
        report.record(self.host.metrics());
        Ok(report)
    }

    /// The quick look at the host: why a full reconciliation is needed, if it is.
    pub async fn needs_reconcile(&self) -> Result<Option<&'static str>> {
        self.endpoints.needs_reconcile(Background::default()).await
    }

    /// Publishes more ports of an attached container.
    pub async fn publish(&self, key: &str, specs: &[PortMapping]) -> Result<Vec<PublishedPort>> {
        self.ports.publish(key, specs, None).await
    }

    /// Withdraws published ports of a container.
    pub async fn unpublish(&self, key: &str, specs: &[PortMapping]) -> Result<Vec<PublishedPort>> {
        self.ports.unpublish(key, specs, None).await
    }

    /// What the firewall needs to know about this host's network.
    pub fn network_rules(&self) -> NetworkRules {
        self.ports.network_rules()
    }

    /// False when the network's NAT rules are no longer in place; CNI's CHECK asks this.
    pub async fn firewall_intact(&self) -> Result<bool> {
        self.ports.intact().await
    }
}
