//! `bench-cluster`: what the cluster control plane costs against the static
//! peer list it replaces, in one run on one machine.
//!
//! For each size N (10, 25, 50 by default) and each mode, a fresh world of N
//! simulated hosts:
//! - `static`: each host's netd.toml lists the N−1 others (the floor: no store);
//! - `cluster`: one etcd in the fabric namespace, `netd cluster init` once,
//!   then every host runs `netd run --store …` with no subnet and no peer.
//!
//! Every netd is started at the same moment. Measured: the time until every
//! host lists every other as a peer and sampled container pairs across hosts
//! answer a ping (convergence); then, at rest over a window, each netd's
//! resident memory and CPU and etcd's requests (the deltas of its gRPC and
//! raft counters on its client port); then (cluster) the time from `kill -9`
//! of one host's netd until every other host's metrics count it dead.
//! Every wait is bounded. Run it through `scripts/bench-cluster` (release, root).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod fleet;
mod probe;
mod report;

use fleet::{Bounds, Fleet};
use report::{Rest, Row};

const USAGE: &str = "\
usage: bench-cluster [--sizes 10,25,50] [--modes static,cluster] [--samples 6] [--window 10]
                     [--converge-bound 60] [--dead-bound 40] [--json FILE]
                     [--rounds 3] [--logs DIR] [--log-filter warn]
  --sizes           numbers of simulated hosts, one run per size and mode
  --modes           static (the floor: static peer lists) and/or cluster (etcd)
  --samples         hosts that get a container; each pings the next one's (a ring)
  --window          seconds at rest over which CPU and store traffic are measured
  --converge-bound  seconds a run may take to converge before it fails
  --dead-bound      seconds to wait for a killed host to be shown dead everywhere
  --json FILE       also write the rows as JSON
  --rounds          runs of each size in each mode, taking turns; convergence is compared
                    as the median of the rounds (one storm of starts on 2 cores varies a lot)
  --logs DIR        keep each netd's log as DIR/<hosts>-<mode>-<round>/<host>.log (to see where a
                    start spends its time; the run's own directory is removed)
  --log-filter F    netd's RUST_LOG in the runs (default warn: logging costs CPU too)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Static,
    Cluster,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "static" => Mode::Static,
            "cluster" => Mode::Cluster,
            other => bail!("unknown mode {other:?}\n{USAGE}"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Static => "static",
            Mode::Cluster => "cluster",
        }
    }
}

struct Options {
    sizes: Vec<usize>,
    modes: Vec<Mode>,
    samples: usize,
    window: Duration,
    bounds: Bounds,
    json: Option<PathBuf>,
    logs: Option<PathBuf>,
    log_filter: String,
    rounds: usize,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        sizes: vec![10, 25, 50],
        modes: vec![Mode::Static, Mode::Cluster],
        samples: 6,
        window: Duration::from_secs(10),
        bounds: Bounds {
            converge: Duration::from_secs(60),
            dead: Duration::from_secs(40),
        },
        json: None,
        logs: None,
        log_filter: "warn".into(),
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        let secs = |v: String, what: &str| -> Result<Duration> {
            let s: u64 = v
                .parse()
                .with_context(|| format!("{what}: {v:?} is not a number of seconds"))?;
            if s == 0 || s > 600 {
                bail!("{what}: {s} s is outside 1..=600");
            }
            Ok(Duration::from_secs(s))
        };
        match arg.as_str() {
            "--sizes" => {
                opts.sizes = value()?
                    .split(',')
                    .map(|s| {
                        let n: usize = s
                            .trim()
                            .parse()
                            .with_context(|| format!("--sizes: {s:?} is not a number"))?;
                        if !(2..=250).contains(&n) {
                            bail!(
                                "--sizes: {n} hosts is outside 2..=250 (one /24 each in {})",
                                fleet::RANGE
                            );
                        }
                        Ok(n)
                    })
                    .collect::<Result<_>>()?
            }
            "--modes" => {
                opts.modes = value()?
                    .split(',')
                    .map(|s| Mode::parse(s.trim()))
                    .collect::<Result<_>>()?
            }
            "--samples" => {
                opts.samples = value()?.parse().context("--samples: a number")?;
                if !(2..=50).contains(&opts.samples) {
                    bail!("--samples: {} is outside 2..=50", opts.samples);
                }
            }
            "--window" => opts.window = secs(value()?, "--window")?,
            "--converge-bound" => opts.bounds.converge = secs(value()?, "--converge-bound")?,
            "--dead-bound" => opts.bounds.dead = secs(value()?, "--dead-bound")?,
            "--json" => opts.json = Some(value()?.into()),
            "--logs" => opts.logs = Some(value()?.into()),
            "--rounds" => {
                opts.rounds = value()?.parse().context("--rounds: a number")?;
                if !(1..=20).contains(&opts.rounds) {
                    bail!("--rounds: {} is outside 1..=20", opts.rounds);
                }
            }
            "--log-filter" => opts.log_filter = value()?,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if opts.sizes.is_empty() || opts.modes.is_empty() {
        bail!("nothing to run\n{USAGE}");
    }
    Ok(opts)
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    if !world::is_root() {
        bail!("bench-cluster builds network namespaces and needs root");
    }
    if opts.modes.contains(&Mode::Cluster) {
        let netd = world::workspace_bin("netd");
        let help = std::process::Command::new(&netd)
            .args(["cluster", "--help"])
            .output()
            .with_context(|| format!("run {}", netd.display()))?;
        if !help.status.success() {
            bail!(
                "{} has no `cluster` command: build a netd with the cluster, or run --modes static",
                netd.display()
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("weft-bench-cluster-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load_before = load_average();
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        for round in 1..=opts.rounds {
            for &mode in &opts.modes {
                eprintln!(
                    "bench-cluster: {n} hosts, {}, round {round} of {}…",
                    mode.name(),
                    opts.rounds
                );
                let row = runtime.block_on(one_run(mode, n, round, &opts, &dir));
                let row = row.with_context(|| format!("{n} hosts, {}", mode.name()))?;
                eprintln!("  {}", row.summary());
                rows.push(row);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The machine is shared: what else ran moves every figure.
    println!(
        "\n{} cores; load average (1 min) {} before the runs, {} after",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        load_average()
    );
    report::print(&rows, &opts.sizes);
    if let Some(path) = &opts.json {
        report::write_json(path, &rows)?;
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

async fn one_run(
    mode: Mode,
    n: usize,
    round: usize,
    opts: &Options,
    dir: &std::path::Path,
) -> Result<Row> {
    let mut fleet = Fleet::build(mode, n, opts.samples, &opts.log_filter, dir).await?;
    let converged = fleet.start_and_converge(opts.bounds.converge);
    if let Some(logs) = &opts.logs {
        fleet.keep_logs(&logs.join(format!("{n}-{}-{round}", mode.name())))?;
    }
    let converged = converged?;
    // Let start-up work (first handshakes, the first reconcile) pass.
    std::thread::sleep(Duration::from_secs(3));
    let pids = fleet.pids();
    let before_cpu: Vec<u64> = pids
        .iter()
        .map(|&p| probe::cpu_ns(p))
        .collect::<Result<_>>()?;
    let before_store = fleet.etcd_metrics()?;
    let window_start = Instant::now();
    std::thread::sleep(opts.window);
    let after_store = fleet.etcd_metrics()?;
    let after_cpu: Vec<u64> = pids
        .iter()
        .map(|&p| probe::cpu_ns(p))
        .collect::<Result<_>>()?;
    let window = window_start.elapsed();
    let rss: Vec<probe::Rss> = pids.iter().map(|&p| probe::rss(p)).collect::<Result<_>>()?;
    let cpu: Vec<f64> = before_cpu
        .iter()
        .zip(&after_cpu)
        .map(|(b, a)| (a - b) as f64 / window.as_nanos() as f64)
        .collect();
    let rest = Rest::new(rss, cpu, before_store.zip(after_store), window);
    let dead = match mode {
        Mode::Cluster => Some(fleet.kill_and_watch(opts.bounds.dead)?),
        Mode::Static => None,
    };
    if let Some(logs) = &opts.logs {
        fleet.keep_logs(&logs.join(format!("{n}-{}-{round}", mode.name())))?;
    }
    Ok(Row {
        mode,
        hosts: n,
        round,
        converged,
        rest,
        dead,
    })
}
