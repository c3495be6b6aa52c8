//! What `netd cluster status|hosts` and `/metrics` show of the cluster.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::ClusterHost;

/// `netd cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub host_id: String,
    pub host_name: String,
    pub subnets: Vec<IpNetwork>,
    pub endpoint: Option<String>,
    pub key_epoch: u64,
    /// False while netd runs from its saved reservation and view (it
    /// started with the store down) and has not joined yet.
    #[serde(default = "yes")]
    pub joined: bool,
    /// Why that join has not happened yet.
    #[serde(default)]
    pub join_error: Option<String>,
    pub store: String,
    pub store_up: bool,
    pub store_last_error: Option<String>,
    pub hosts_alive: usize,
    pub hosts_dead: usize,
    pub subnets_in_use: usize,
    pub subnet_capacity: u64,
    pub watch_relists: u64,
    pub keep_alive_failures: u64,
    pub lease_regrants: u64,
    /// Keys ignored as bad data, by reason.
    pub bad_data: BTreeMap<String, u64>,
    /// The store revision of the view last applied.
    pub applied_revision: i64,
    /// How long the last change took to apply to the overlay, in ms.
    pub last_apply_ms: Option<f64>,
    pub applies: u64,
    pub apply_errors: u64,
    /// Names across the cluster: this host's puts of its names key, and
    /// the others' keys and records ignored (see docs/dns.md).
    #[serde(default)]
    pub names: NamesStatus,
}

fn yes() -> bool {
    true
}

/// Counters of names across the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesStatus {
    pub puts: u64,
    pub put_failures: u64,
    pub relists: u64,
    /// Names keys ignored (not JSON, not a host id, a host name in use).
    pub bad_data: u64,
    /// Records refused (a name or address another host holds, a bad name).
    pub refused: u64,
}

/// The body of `POST /v1/cluster/forget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetRequest {
    /// The host's id or name.
    pub host: String,
    /// Forget it even while it shows alive.
    #[serde(default)]
    pub force: bool,
}

/// One host in `netd cluster hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub id: String,
    pub name: String,
    pub alive: bool,
    pub this_host: bool,
    pub subnets: Vec<IpNetwork>,
    pub endpoint: Option<String>,
    pub public_key: String,
    pub key_epoch: u64,
}

impl ClusterHost {
    pub fn status(&self) -> ClusterStatus {
        let record = self.record();
        let view = self.view();
        let (status, bad, relists) = match &*self.watcher.lock().unwrap_or_else(|e| e.into_inner())
        {
            Some(w) => (w.status(), w.bad_data(), w.relists()),
            None => Default::default(),
        };
        let (failures, regrants) = match &*self.liveness.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(l) => (
                l.counters().keep_alive_failures.load(Ordering::Relaxed),
                l.counters().lease_regrants.load(Ordering::Relaxed),
            ),
            None => (0, 0),
        };
        let applied = self
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let alive = view.hosts.values().filter(|h| h.alive).count();
        ClusterStatus {
            host_id: record.id.to_string(),
            host_name: self.name.clone(),
            subnets: record.subnets(),
            endpoint: record.endpoint.clone(),
            key_epoch: record.key_epoch,
            joined: self.joined(),
            join_error: self
                .join_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            store: self.store.endpoints().to_string(),
            store_up: status.up,
            store_last_error: status.last_error,
            hosts_alive: alive,
            hosts_dead: view.hosts.len() - alive,
            subnets_in_use: view.hosts.values().map(|h| h.subnets.len()).sum(),
            subnet_capacity: self.cluster.ipv4_capacity() + self.cluster.ipv6_capacity(),
            watch_relists: relists,
            keep_alive_failures: failures,
            lease_regrants: regrants,
            bad_data: bad
                .into_iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            applied_revision: applied.revision,
            last_apply_ms: applied.last.map(|d| d.as_secs_f64() * 1000.0),
            applies: applied.count,
            apply_errors: applied.errors,
            names: self.names_status(),
        }
    }

    pub fn hosts(&self) -> Vec<HostEntry> {
        self.view()
            .hosts
            .values()
            .map(|h| HostEntry {
                id: h.id.to_string(),
                name: h.name.clone(),
                alive: h.alive,
                this_host: &h.id == self.id(),
                subnets: h.subnets.clone(),
                endpoint: h.endpoint.map(|e| e.to_string()),
                public_key: h.public_key.to_base64(),
                key_epoch: h.key_epoch,
            })
            .collect()
    }

    /// The cluster's Prometheus metrics, appended to netd's.
    pub fn render_metrics(&self, out: &mut String) {
        let s = self.status();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "weft_netd_cluster_hosts",
            "gauge",
            "Hosts of the cluster by liveness.",
            &[
                ("{state=\"alive\"}".into(), s.hosts_alive as f64),
                ("{state=\"dead\"}".into(), s.hosts_dead as f64),
            ],
        );
        family(
            "weft_netd_cluster_subnets_in_use",
            "gauge",
            "Host subnets reserved in the cluster (IPv4 and IPv6).",
            &[(String::new(), s.subnets_in_use as f64)],
        );
        family(
            "weft_netd_cluster_subnet_capacity",
            "gauge",
            "Host subnets the cluster's ranges hold (IPv4 and IPv6).",
            &[(String::new(), s.subnet_capacity as f64)],
        );
        family(
            "weft_netd_cluster_store_up",
            "gauge",
            "1 when the last call to the cluster store succeeded.",
            &[(String::new(), if s.store_up { 1.0 } else { 0.0 })],
        );
        family(
            "weft_netd_cluster_joined",
            "gauge",
            "0 while netd runs from its saved view after a start without the store.",
            &[(String::new(), if s.joined { 1.0 } else { 0.0 })],
        );
        family(
            "weft_netd_cluster_watch_relists_total",
            "counter",
            "Listings of the cluster after a compaction or a disconnect.",
            &[(String::new(), s.watch_relists as f64)],
        );
        family(
            "weft_netd_cluster_keepalive_failures_total",
            "counter",
            "Liveness keep-alives that failed.",
            &[(String::new(), s.keep_alive_failures as f64)],
        );
        let bad: Vec<(String, f64)> = s
            .bad_data
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
            .collect();
        family(
            "weft_netd_cluster_bad_data_total",
            "counter",
            "Store keys ignored as bad data, by reason.",
            &bad,
        );
        family(
            "weft_netd_cluster_apply_last_seconds",
            "gauge",
            "How long the last cluster change took to apply to the overlay.",
            &[(
                String::new(),
                s.last_apply_ms.map(|ms| ms / 1000.0).unwrap_or(0.0),
            )],
        );
        family(
            "weft_netd_cluster_applies_total",
            "counter",
            "Cluster views applied to the overlay.",
            &[(String::new(), s.applies as f64)],
        );
        family(
            "weft_netd_cluster_names_total",
            "counter",
            "Names across the cluster: puts of this host's names key, their failures, re-lists, names keys ignored as bad data, records refused.",
            &[
                ("{event=\"put\"}".into(), s.names.puts as f64),
                ("{event=\"put_failure\"}".into(), s.names.put_failures as f64),
                ("{event=\"relist\"}".into(), s.names.relists as f64),
                ("{event=\"bad_data\"}".into(), s.names.bad_data as f64),
                ("{event=\"refused\"}".into(), s.names.refused as f64),
            ],
        );
    }
}
