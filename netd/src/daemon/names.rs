//! The daemon's part in names: the network's [`NameTable`], filled from the
//! endpoints in the state, and the [`DnsServer`] on the gateway addresses.
//!
//! The state is the truth: attach and detach change the table at once, and
//! every reconciliation and periodic check replaces this host's records by
//! what the state holds, which picks up containers the standalone CNI
//! plugin attached or detached while the daemon ran or was down. With a
//! cluster, `cluster::names` publishes this host's records on each change
//! and calls `replace_host` on the same table for the other hosts.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use crate::error::{Error, Result};
use crate::names::{
    ContainerNames, DnsCounters, DnsCountersSnapshot, DnsServer, DnsServerConfig, NameRow,
    NameSource, NameTable, RateLimit,
};
use crate::network::Network;
use crate::state::{Endpoint, Phase, State};

/// A server and what it was started for: it is started again when the
/// bridge is made anew or the gateways change.
struct Running {
    server: DnsServer,
    bridge_index: u32,
    listen: Vec<IpAddr>,
}

/// Names on, for a daemon with `names = true`.
pub(super) struct NameService {
    table: Arc<NameTable>,
    /// This host's name in the records (what a cluster peer sees).
    host: String,
    running: Mutex<Option<Running>>,
    /// Woken on every change of this host's records: the cluster publisher.
    changed: Arc<Notify>,
    /// The counters of servers stopped so far (so that a restart does not
    /// set the metrics back) and the running server's.
    counters: std::sync::Mutex<(DnsCountersSnapshot, Option<Arc<DnsCounters>>)>,
}

impl NameService {
    /// `host`: the name a cluster peer sees (`[cluster] host_name`), else
    /// the kernel's host name.
    pub(super) fn new(host: Option<String>) -> NameService {
        NameService {
            table: Arc::new(NameTable::new()),
            host: host.unwrap_or_else(host_name),
            changed: Arc::new(Notify::new()),
            running: Mutex::new(None),
            counters: std::sync::Mutex::new((DnsCountersSnapshot::default(), None)),
        }
    }

    /// The record DNS answers for an attached endpoint with names.
    fn record(&self, ep: &Endpoint) -> Option<ContainerNames> {
        let (name, aliases) = ep.dns_names.split_first()?;
        if !matches!(ep.phase, Phase::Attached) {
            return None;
        }
        let ipv4 = ep.ips.iter().find_map(|ip| match ip.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
        let ipv6 = ep.ips.iter().find_map(|ip| match ip.ip() {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        });
        Some(ContainerNames {
            container: ep.id.clone(),
            name: name.clone(),
            aliases: aliases.to_vec(),
            ipv4,
            ipv6,
            host: self.host.clone(),
            source: NameSource::Local,
        })
    }

    /// After an attach: its names answer from the next query on.
    pub(super) fn attached(&self, ep: &Endpoint) {
        if let Some(record) = self.record(ep) {
            if let Err(e) = self.table.insert(record) {
                // The state refused duplicates already; only a name held by
                // another host's container gets here.
                tracing::warn!(id = %ep.id, "names not served: {e}");
            }
            self.changed.notify_one();
        }
    }

    /// The table and the signal of local changes, for the cluster.
    pub(super) fn sharing(&self) -> (Arc<NameTable>, Arc<Notify>) {
        (self.table.clone(), self.changed.clone())
    }

    /// After a detach: its names are NXDOMAIN from the next query on.
    pub(super) fn detached(&self, id: &str) {
        if self.table.remove(id).is_some() {
            self.changed.notify_one();
        }
    }

    /// Replaces this host's records by the state's; leaves the table alone
    /// when they are the same already.
    pub(super) fn sync(&self, state: &State) {
        let records: Vec<ContainerNames> = state
            .endpoints
            .keys()
            .filter_map(|id| state.endpoints.get(id))
            .filter_map(|ep| self.record(ep))
            .collect();
        let report = self.table.replace_host(&self.host, records);
        for refused in report.refused {
            tracing::warn!("names not served: {refused}");
        }
        // Called every few seconds by the periodic check: the publisher is
        // woken only when something changed (it also looks every second).
        if report.changed {
            self.changed.notify_one();
        }
    }

    /// What `netd names` lists.
    pub(super) fn list(&self) -> Vec<NameRow> {
        self.table.list()
    }

    /// Starts the server, or starts it again when the bridge was made anew
    /// (its index changed) or the gateways changed. Called after each
    /// reconciliation, which makes the bridge and its addresses.
    pub(super) async fn ensure_server(&self, network: &Network) -> Result<()> {
        let config = network.config();
        let nl = network.host().netlink().await?;
        let bridge = nl
            .require_link(&config.bridge)
            .await
            .map_err(|e| Error::kernel(format!("names: find bridge {}", config.bridge), e))?;
        let listen = network.gateways();
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_ref() {
            if r.bridge_index == bridge.index && r.listen == listen {
                return Ok(());
            }
            tracing::info!(bridge = %config.bridge, "bridge or gateways changed: restarting the DNS server");
        }
        if let Some(old) = running.take() {
            let mut counters = self.counters.lock().expect("counters lock");
            counters.0.add(&old.server.counters());
            counters.1 = None;
            // Dropped here: the port is free before the new server binds it.
            drop(old);
        }
        let mut dns = DnsServerConfig::new(listen.clone(), config.subnets());
        dns.search_domain = config.dns_search_domain.clone();
        dns.resolv_conf = config.dns_resolv_conf.clone();
        dns.rate_limit = RateLimit {
            per_second: config.dns_rate_limit,
            burst: config.dns_rate_limit.saturating_mul(2),
        };
        let server = DnsServer::start(network.host_netns(), self.table.clone(), dns)
            .await
            .map_err(|e| Error::Setup(format!("names: start the DNS server: {e}")))?;
        self.counters.lock().expect("counters lock").1 = Some(server.counters_handle());
        *running = Some(Running {
            server,
            bridge_index: bridge.index,
            listen,
        });
        Ok(())
    }

    /// Every query answered so far, across restarts of the server.
    pub(super) fn counters(&self) -> DnsCountersSnapshot {
        let counters = self.counters.lock().expect("counters lock");
        let mut total = counters.0;
        if let Some(live) = &counters.1 {
            total.add(&live.snapshot());
        }
        total
    }
}

/// The kernel's host name (of netd's UTS namespace), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
