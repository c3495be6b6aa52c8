//! The table, the per-peer memory growth and the JSON record.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::fleet::Convergence;
use crate::probe::{self, Rss};
use crate::Mode;

/// What the hosts and the store cost at rest.
pub struct Rest {
    /// Resident memory of each netd, KiB.
    pub rss: Vec<Rss>,
    /// Each netd's CPU over the window, in cores (1.0 = one core busy).
    pub cpu: Vec<f64>,
    pub store: Option<StoreRates>,
}

/// etcd's traffic at rest, per second over the window.
pub struct StoreRates {
    /// gRPC messages received (unary requests and stream messages alike).
    pub messages: f64,
    /// Unary calls completed (`grpc_server_handled_total`).
    pub unary: f64,
    /// Raft proposals committed: the writes.
    pub writes: f64,
    /// Messages per second by gRPC method, largest first.
    pub by_method: Vec<(String, f64)>,
}

impl Rest {
    pub fn new(
        rss: Vec<Rss>,
        cpu: Vec<f64>,
        store: Option<(String, String)>,
        window: Duration,
    ) -> Rest {
        let secs = window.as_secs_f64();
        let store = store.map(|(before, after)| {
            let rate = |name: &str| {
                (probe::sum(&after, name, &[]) - probe::sum(&before, name, &[])) / secs
            };
            let before_methods = probe::by_method(&before, "grpc_server_msg_received_total");
            let mut by_method: Vec<(String, f64)> =
                probe::by_method(&after, "grpc_server_msg_received_total")
                    .into_iter()
                    .map(|(m, v)| {
                        let old = before_methods
                            .iter()
                            .find(|(b, _)| *b == m)
                            .map_or(0.0, |(_, v)| *v);
                        (m, (v - old) / secs)
                    })
                    .filter(|(_, r)| *r > 0.0)
                    .collect();
            by_method.sort_by(|a, b| b.1.total_cmp(&a.1));
            StoreRates {
                messages: rate("grpc_server_msg_received_total"),
                unary: rate("grpc_server_handled_total"),
                writes: rate("etcd_server_proposals_committed_total"),
                by_method,
            }
        });
        Rest { rss, cpu, store }
    }

    fn rss_mib(&self, pick: fn(&Rss) -> u64) -> (f64, f64) {
        let mut v: Vec<f64> = self.rss.iter().map(|r| pick(r) as f64 / 1024.0).collect();
        v.sort_by(f64::total_cmp);
        (median(&v), v.last().copied().unwrap_or(0.0))
    }

    fn cpu_total(&self) -> f64 {
        self.cpu.iter().sum()
    }
}

/// One size in one mode.
pub struct Row {
    pub mode: Mode,
    pub hosts: usize,
    /// Which round of this size (1-based).
    pub round: usize,
    pub converged: Convergence,
    pub rest: Rest,
    pub dead: Option<Duration>,
}

impl Row {
    pub fn summary(&self) -> String {
        let (rss, _) = self.rest.rss_mib(|r| r.total_kib);
        format!(
            "converged in {:.2} s (peers {:.2} s, {} pairs {:.2} s; start CPU {:.1} ms per netd{}), netd RSS median {rss:.1} MiB, idle CPU {:.3} cores in all{}",
            secs(self.converged.total()),
            secs(self.converged.all_peers),
            self.converged.pair_count,
            secs(self.converged.pairs),
            self.converged.netd_cpu_ms(),
            self.converged
                .store_cpu_ms_per_host()
                .map(|ms| format!(" + {ms:.1} ms of etcd's"))
                .unwrap_or_default(),
            self.rest.cpu_total(),
            self.dead
                .map(|d| format!(", dead shown everywhere in {:.1} s", secs(d)))
                .unwrap_or_default()
        )
    }
}

impl Convergence {
    /// The median netd's CPU from its start to convergence, ms.
    fn netd_cpu_ms(&self) -> f64 {
        let mut v: Vec<f64> = self.netd_cpu_ns.iter().map(|&ns| ns as f64 / 1e6).collect();
        v.sort_by(f64::total_cmp);
        median(&v)
    }

    /// The store's CPU over the convergence, ms per host.
    fn store_cpu_ms_per_host(&self) -> Option<f64> {
        let hosts = self.netd_cpu_ns.len().max(1) as f64;
        self.store_cpu_ns.map(|ns| ns as f64 / 1e6 / hosts)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn print(rows: &[Row], sizes: &[usize]) {
    println!();
    println!("| hosts | round | mode | converged (s) | all peers (s) | pairs answer (s) | vs static | start CPU per host: netd + etcd (ms) | netd RSS median / max (MiB) | anon (MiB) | idle CPU per host (ms/s) | idle CPU all hosts (cores) | store msg/s (per host) | store writes/s | dead shown everywhere (s) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let floor = rows
            .iter()
            .find(|r| r.hosts == row.hosts && r.round == row.round && r.mode == Mode::Static);
        let ratio = match (row.mode, floor) {
            (Mode::Cluster, Some(f)) => format!(
                "{:.2}×",
                secs(row.converged.total()) / secs(f.converged.total())
            ),
            _ => "—".into(),
        };
        let (rss, rss_max) = row.rest.rss_mib(|r| r.total_kib);
        let (anon, _) = row.rest.rss_mib(|r| r.anon_kib);
        let total = row.rest.cpu_total();
        let (store, writes) = match &row.rest.store {
            Some(s) => (
                format!("{:.1} ({:.2})", s.messages, s.messages / row.hosts as f64),
                format!("{:.2}", s.writes),
            ),
            None => ("—".into(), "—".into()),
        };
        let start_cpu = format!(
            "{:.1}{}",
            row.converged.netd_cpu_ms(),
            row.converged
                .store_cpu_ms_per_host()
                .map(|ms| format!(" + {ms:.1}"))
                .unwrap_or_default()
        );
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {ratio} | {start_cpu} | {rss:.1} / {rss_max:.1} | {anon:.1} | {:.2} | {total:.3} | {store} | {writes} | {} |",
            row.hosts,
            row.round,
            row.mode.name(),
            secs(row.converged.total()),
            secs(row.converged.all_peers),
            secs(row.converged.pairs),
            total * 1000.0 / row.hosts as f64,
            row.dead.map_or("—".into(), |d| format!("{:.1}", secs(d))),
        );
    }
    medians(rows, sizes);
    for row in rows.iter().filter(|r| r.round == 1) {
        if let Some(store) = &row.rest.store {
            let methods: Vec<String> = store
                .by_method
                .iter()
                .map(|(m, r)| format!("{m} {r:.1}"))
                .collect();
            println!(
                "\n{} hosts, store at rest: {:.1} msg/s ({}), {:.1} unary calls/s, {:.2} raft writes/s",
                row.hosts,
                store.messages,
                methods.join(", "),
                store.unary,
                store.writes
            );
        }
    }
    memory_per_peer(rows, sizes);
}

/// Each size's convergence as the median of its rounds, and the cluster's
/// against the static floor's.
fn medians(rows: &[Row], sizes: &[usize]) {
    let median_of = |n: usize, mode: Mode| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r.hosts == n && r.mode == mode)
            .map(|r| secs(r.converged.total()))
            .collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| (median(&v), v.len()))
    };
    println!();
    for &n in sizes {
        match (median_of(n, Mode::Static), median_of(n, Mode::Cluster)) {
            (Some((floor, k)), Some((cluster, _))) => println!(
                "{n} hosts, median of {k} rounds: converged in {cluster:.2} s with the cluster, {floor:.2} s with static peers: {:.2}× the floor",
                cluster / floor
            ),
            (Some((t, k)), None) | (None, Some((t, k))) => {
                println!("{n} hosts, median of {k} rounds: converged in {t:.2} s")
            }
            (None, None) => {}
        }
    }
}

/// The growth of netd's memory and idle CPU with its number of peers (a
/// least-squares line through each size's median RSS and mean CPU per host).
fn memory_per_peer(rows: &[Row], sizes: &[usize]) {
    if sizes.len() < 2 {
        return;
    }
    for mode in [Mode::Static, Mode::Cluster] {
        // (peers, RSS KiB, anonymous KiB, CPU µs/s per host)
        let points: Vec<[f64; 4]> = rows
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| {
                [
                    (r.hosts - 1) as f64,
                    r.rest.rss_mib(|x| x.total_kib).0 * 1024.0,
                    r.rest.rss_mib(|x| x.anon_kib).0 * 1024.0,
                    r.rest.cpu_total() * 1e6 / r.hosts as f64,
                ]
            })
            .collect();
        if points.len() < 2 {
            continue;
        }
        let slope = |y: usize| {
            let n = points.len() as f64;
            let mx = points.iter().map(|p| p[0]).sum::<f64>() / n;
            let my = points.iter().map(|p| p[y]).sum::<f64>() / n;
            let sxy: f64 = points.iter().map(|p| (p[0] - mx) * (p[y] - my)).sum();
            let sxx: f64 = points.iter().map(|p| (p[0] - mx).powi(2)).sum();
            sxy / sxx
        };
        println!(
            "\nper peer ({}, least squares over {} runs): RSS {:+.1} KiB, anonymous {:+.1} KiB, idle CPU {:+.2} µs/s",
            mode.name(),
            points.len(),
            slope(1),
            slope(2),
            slope(3)
        );
    }
}

pub fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "hosts": r.hosts,
                "round": r.round,
                "mode": r.mode.name(),
                "converged_s": secs(r.converged.total()),
                "all_peers_s": secs(r.converged.all_peers),
                "pairs_s": secs(r.converged.pairs),
                "pairs": r.converged.pair_count,
                "start_cpu_ns": r.converged.netd_cpu_ns,
                "store_start_cpu_ns": r.converged.store_cpu_ns,
                "rss_kib": r.rest.rss.iter().map(|x| x.total_kib).collect::<Vec<_>>(),
                "rss_anon_kib": r.rest.rss.iter().map(|x| x.anon_kib).collect::<Vec<_>>(),
                "idle_cpu_cores": r.rest.cpu,
                "store": r.rest.store.as_ref().map(|s| json!({
                    "messages_per_s": s.messages,
                    "unary_per_s": s.unary,
                    "writes_per_s": s.writes,
                    "by_method": s.by_method.iter().map(|(m, v)| json!({"method": m, "per_s": v})).collect::<Vec<_>>(),
                })),
                "dead_shown_s": r.dead.map(secs),
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("write {}", path.display()))
}
