//! Prometheus metrics in the text exposition format: counters kept here,
//! gauges computed from the state at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::Config;
use crate::state::{Phase, State};

#[derive(Debug, Default)]
pub struct Metrics {
    attaches: AtomicU64,
    detaches: AtomicU64,
    reconcile_runs: AtomicU64,
    localhost_relays: AtomicU64,
    reconcile_actions: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn attached(&self) {
        self.attaches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn detached(&self) {
        self.detaches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconciled(&self, actions: &[crate::action::Action]) {
        self.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        let mut counts = self.reconcile_actions.lock().expect("metrics lock");
        for action in actions {
            *counts.entry(action.kind.clone()).or_default() += 1;
        }
    }

    /// How many published ports the daemon relays from `[::1]` now.
    pub(crate) fn set_localhost_relays(&self, count: usize) {
        self.localhost_relays.store(count as u64, Ordering::Relaxed);
    }

    /// Counts a failed operation: "attach", "detach", "publish", "reconcile", …
    pub fn error(&self, operation: &'static str) {
        *self
            .errors
            .lock()
            .expect("metrics lock")
            .entry(operation)
            .or_default() += 1;
    }

    pub fn render(&self, state: &State, config: &Config) -> String {
        let mut out = String::new();
        let attached = state
            .endpoints
            .values()
            .filter(|e| e.phase == Phase::Attached)
            .count();
        gauge(
            &mut out,
            "weft_netd_containers",
            "Containers attached to the bridge.",
            &[("", attached as u64)],
        );
        gauge(
            &mut out,
            "weft_netd_published_ports",
            "Published port mappings.",
            &[("", published_ports(state) as u64)],
        );
        gauge(
            &mut out,
            "weft_netd_ipv6_localhost_relays",
            "Published host ports netd relays from [::1] (IPv6 has no route_localnet).",
            &[("", self.localhost_relays.load(Ordering::Relaxed))],
        );
        let _ = writeln!(
            out,
            "# HELP weft_netd_ipam_addresses_in_use Addresses taken per subnet, the gateway included.\n# TYPE weft_netd_ipam_addresses_in_use gauge"
        );
        let mut capacity = String::new();
        for subnet in config.subnets() {
            let usage = state.ipam.usage(subnet);
            let _ = writeln!(
                out,
                "weft_netd_ipam_addresses_in_use{{subnet=\"{subnet}\"}} {}",
                usage.in_use
            );
            let _ = writeln!(
                capacity,
                "weft_netd_ipam_addresses_capacity{{subnet=\"{subnet}\"}} {}",
                usage.capacity
            );
        }
        let _ = writeln!(
            out,
            "# HELP weft_netd_ipam_addresses_capacity Addresses that can be taken per subnet.\n# TYPE weft_netd_ipam_addresses_capacity gauge\n{}",
            capacity.trim_end()
        );
        counter(
            &mut out,
            "weft_netd_attaches_total",
            "Successful attaches.",
            None,
            &[("", self.attaches.load(Ordering::Relaxed))],
        );
        counter(
            &mut out,
            "weft_netd_detaches_total",
            "Successful detaches.",
            None,
            &[("", self.detaches.load(Ordering::Relaxed))],
        );
        counter(
            &mut out,
            "weft_netd_reconcile_runs_total",
            "Full reconciliations run.",
            None,
            &[("", self.reconcile_runs.load(Ordering::Relaxed))],
        );
        let actions = self.reconcile_actions.lock().expect("metrics lock").clone();
        let actions: Vec<(&str, u64)> = actions.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        counter(
            &mut out,
            "weft_netd_reconcile_actions_total",
            "Changes reconciliation made to the kernel or the state, by kind.",
            Some("action"),
            &actions,
        );
        let errors: Vec<(&str, u64)> = self
            .errors
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        counter(
            &mut out,
            "weft_netd_errors_total",
            "Failed operations, by operation.",
            Some("operation"),
            &errors,
        );
        out
    }
}

/// Published port mappings in the state, over all endpoints.
/// The DNS server's counters (the daemon's, when names are on).
pub fn render_dns(out: &mut String, dns: &crate::names::DnsCountersSnapshot) {
    counter(
        out,
        "weft_netd_dns_queries_total",
        "DNS queries to the gateway, by what became of them.",
        Some("result"),
        &dns.by_result(),
    );
    counter(
        out,
        "weft_netd_dns_dropped_total",
        "DNS queries dropped without an answer, by reason.",
        Some("reason"),
        &dns.dropped_by_reason(),
    );
    counter(
        out,
        "weft_netd_dns_cache_hits_total",
        "Forwarded DNS queries answered from the cache.",
        None,
        &[("", dns.cache_hits)],
    );
    counter(
        out,
        "weft_netd_dns_tcp_refused_total",
        "DNS TCP connections closed at once: too many open.",
        None,
        &[("", dns.tcp_refused)],
    );
}

fn published_ports(state: &State) -> usize {
    state.endpoints.values().map(|e| e.ports.len()).sum()
}

fn gauge(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (_, v) in values {
        let _ = writeln!(out, "{name} {v}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, label: Option<&str>, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (k, v) in values {
        match label {
            Some(label) => {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
            None => {
                let _ = writeln!(out, "{name} {v}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;

    #[test]
    fn renders_the_dns_counters() {
        let dns = crate::names::DnsCountersSnapshot {
            answered: 7,
            cache_hits: 2,
            dropped_rate_limited: 3,
            ..Default::default()
        };
        let mut out = String::new();
        render_dns(&mut out, &dns);
        for line in [
            "weft_netd_dns_queries_total{result=\"answered\"} 7",
            "weft_netd_dns_queries_total{result=\"dropped\"} 3",
            "weft_netd_dns_dropped_total{reason=\"rate_limited\"} 3",
            "weft_netd_dns_cache_hits_total 2",
            "# TYPE weft_netd_dns_queries_total counter",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::default();
        m.attached();
        m.reconciled(&[Action::new("repaired", "x"), Action::new("repaired", "y")]);
        m.error("attach");
        let mut state = State::default();
        let config = Config::default();
        state
            .ipam
            .allocate(ipnetwork::IpNetwork::V4(config.subnet), "c1", None)
            .unwrap();
        let text = m.render(&state, &config);
        assert!(text.contains("weft_netd_containers 0\n"), "{text}");
        assert!(
            text.contains("weft_netd_ipam_addresses_in_use{subnet=\"10.66.0.0/16\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_netd_ipam_addresses_capacity{subnet=\"10.66.0.0/16\"} 65534\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_netd_reconcile_actions_total{action=\"repaired\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_netd_errors_total{operation=\"attach\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weft_netd_attaches_total counter\nweft_netd_attaches_total 1\n"),
            "{text}"
        );
    }
}
