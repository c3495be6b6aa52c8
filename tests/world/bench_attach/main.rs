//! `bench-attach`: what attaching a container with one published port, and
//! detaching it again, costs with netd and with the tools it replaces, in one
//! run on one machine (absolute figures are noisy; the ratios are the point).
//!
//! Modes, each on a fresh simulated host of the test world:
//! - `netd-lib`: `netd::Network::attach`/`detach` called in-process, as the
//!   CNI plugin does in standalone mode;
//! - `netd-api`: a `netd run` inside the host, called over its unix socket
//!   with the client library, as a runtime (or the CNI plugin with a daemon) does;
//! - `cni`: the reference CNI `bridge` (+ `host-local`) and `portmap` chain
//!   from /usr/lib/cni, ADD with prevResult, DEL in reverse order;
//! - `netavark`: `netavark setup`/`teardown` with Podman's JSON (static
//!   addresses: netavark leaves IPAM to Podman);
//! - `kernel`: the floor under netd. The link requests one netd attach makes
//!   (a veth made a port of netd's bridge, its container end in the
//!   container's namespace, IPv6 off on the host end, the container's
//!   address and default route, the host end up with its alias and hairpin),
//!   sent through plumb with nothing else: no IPAM, state, checks or
//!   firewall. Its growth is what the kernel alone adds per container.
//!
//! Container namespaces are made up front and not timed. Every mode attaches
//! one untimed warm-up container first (bridges, NAT chains, nft tables), then
//! attaches containers 1..N one after the other, then detaches them in order.
//!
//! The growth of a sequential run (its last 10% against its first 10%)
//! compares moments seconds apart, and on a shared machine whatever else runs
//! in those seconds moves it by ±30%. So for netd's modes container #1 and
//! container #N (the largest N) are also measured in pairs at the same
//! moments: one host empty, one holding N−1 containers, a probe attached to
//! each in turn (`--pairs`).
//!
//! Run it through `scripts/bench-attach` (release build, root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use world::{Container, World};

mod netd_modes;
mod paired;
mod reference;
mod report;

use netd_modes::{KernelFloor, NetdApi, NetdLib};
use paired::paired;
use reference::{Cni, Netavark};
use report::{report, report_pairs, write_json};

const USAGE: &str = "\
usage: bench-attach [--sizes 1,100,1000] [--reference-cap 100] [--modes netd-lib,netd-api,kernel,cni,netavark] [--pairs 40] [--json FILE]
  --sizes          numbers of containers, one run each
  --reference-cap  the largest N the reference tools run (they are slow)
  --modes          which implementations to measure
  --pairs          container #1 and #N (largest N) attached at the same moments, this
                   many times per netd mode and the kernel floor (0: skip)
  --json FILE      also write every per-container timing as JSON
WEFT_BENCH_NETD_LOG=FILE appends the daemon's debug log (attach step timings) to FILE.";

const CNI_PATH: &str = "/usr/lib/cni";
const NETAVARK: &str = "/usr/lib/podman/netavark";
const FIRST_HOST_PORT: u16 = 20000;
const NETD_LOG_ENV: &str = "WEFT_BENCH_NETD_LOG";
/// Pause after each detach of the paired measurement.
const AFTER_DETACH: Duration = Duration::from_millis(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    NetdLib,
    NetdApi,
    Kernel,
    Cni,
    Netavark,
}

impl Mode {
    fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "netd-lib" => Mode::NetdLib,
            "netd-api" => Mode::NetdApi,
            "cni" => Mode::Cni,
            "netavark" => Mode::Netavark,
            "kernel" => Mode::Kernel,
            other => bail!("unknown mode {other:?}\n{USAGE}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::NetdLib => "netd-lib",
            Mode::NetdApi => "netd-api",
            Mode::Cni => "cni",
            Mode::Netavark => "netavark",
            Mode::Kernel => "kernel",
        }
    }

    /// Its simulated host's name (plus N).
    fn host_name(self) -> &'static str {
        match self {
            Mode::NetdLib => "lib",
            Mode::NetdApi => "api",
            Mode::Cni => "cni",
            Mode::Netavark => "nva",
            Mode::Kernel => "krn",
        }
    }

    fn is_reference(self) -> bool {
        matches!(self, Mode::Cni | Mode::Netavark)
    }

    /// netd itself (not a reference, not the floor).
    fn is_weft(self) -> bool {
        matches!(self, Mode::NetdLib | Mode::NetdApi)
    }
}

struct Options {
    sizes: Vec<usize>,
    reference_cap: usize,
    modes: Vec<Mode>,
    pairs: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        sizes: vec![1, 100, 1000],
        reference_cap: 100,
        modes: vec![
            Mode::NetdLib,
            Mode::NetdApi,
            Mode::Kernel,
            Mode::Cni,
            Mode::Netavark,
        ],
        pairs: 40,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--sizes" => {
                opts.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes: comma-separated numbers")?
            }
            "--reference-cap" => opts.reference_cap = value()?.parse()?,
            "--modes" => {
                opts.modes = value()?
                    .split(',')
                    .map(Mode::parse)
                    .collect::<Result<_>>()?
            }
            "--pairs" => opts.pairs = value()?.parse().context("--pairs: a number")?,
            "--json" => opts.json = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if opts.sizes.iter().any(|&n| n == 0 || n > 10_000) {
        bail!("--sizes: each N must be between 1 and 10000");
    }
    Ok(opts)
}

/// Per-container timings of one run.
struct Run {
    mode: Mode,
    n: usize,
    attach: Vec<Duration>,
    detach: Vec<Duration>,
    /// After the last detach returned, until the kernel had nothing left of
    /// any container (netd-api deletes veth pairs in the background).
    settle: Duration,
}

/// Attach times of container #1 (an empty host) and container #N (a host
/// already holding N−1), taken in pairs at the same moments.
struct Paired {
    mode: Mode,
    n: usize,
    first: Vec<Duration>,
    nth: Vec<Duration>,
}

/// One implementation under test, set up on its own host.
trait Driver {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()>;
    async fn detach(&mut self, i: usize, c: &Container) -> Result<()>;
    /// Waits until every detach has fully taken effect.
    async fn settle(&mut self) -> Result<()> {
        Ok(())
    }
    /// A detach that returns once nothing of the container is left.
    async fn detach_fully(&mut self, i: usize, c: &Container) -> Result<()> {
        self.detach(i, c).await
    }
}

fn container_id(i: usize) -> String {
    // 64 hex digits, like the ids runtimes hand to CNI and netavark.
    format!("{:064x}", 0xbe_0000_0000u64 + i as u64)
}

fn host_port(i: usize) -> u16 {
    FIRST_HOST_PORT + i as u16
}

/// Attaches the warm-up container, then 1..=n timed, then detaches them in order.
async fn measure(
    driver: &mut impl Driver,
    mode: Mode,
    warmup: &Container,
    containers: &[Container],
) -> Result<Run> {
    // The warm-up container has index 0; timed containers are 1..=n.
    driver.attach(0, warmup).await.context("warm-up attach")?;
    driver.detach(0, warmup).await.context("warm-up detach")?;
    let mut run = Run {
        mode,
        n: containers.len(),
        attach: Vec::with_capacity(containers.len()),
        detach: Vec::with_capacity(containers.len()),
        settle: Duration::ZERO,
    };
    for (k, c) in containers.iter().enumerate() {
        let started = Instant::now();
        driver.attach(k + 1, c).await?;
        run.attach.push(started.elapsed());
    }
    for (k, c) in containers.iter().enumerate() {
        let started = Instant::now();
        driver.detach(k + 1, c).await?;
        run.detach.push(started.elapsed());
    }
    let started = Instant::now();
    driver.settle().await?;
    run.settle = started.elapsed();
    Ok(run)
}

async fn run_mode(
    world: &World,
    mode: Mode,
    n: usize,
    containers: &[Container],
    dir: &Path,
) -> Result<Run> {
    let host = world.host(&format!("{}{n}", mode.host_name())).await?;
    let dir = dir.join(format!("{}-{n}", mode.name()));
    std::fs::create_dir_all(&dir)?;
    let (warmup, timed) = containers.split_first().context("no containers")?;
    let timed = &timed[..n];
    let started = Instant::now();
    let run = match mode {
        Mode::NetdLib => {
            let mut d = NetdLib::new(&host, &dir).await?;
            measure(&mut d, mode, warmup, timed).await?
        }
        Mode::NetdApi => {
            let mut d = NetdApi::new(&host, &dir).await?;
            measure(&mut d, mode, warmup, timed).await?
        }
        Mode::Cni => {
            let mut d = Cni::new(&host, &dir);
            measure(&mut d, mode, warmup, timed).await?
        }
        Mode::Kernel => {
            let mut d = KernelFloor::new(&host, &dir).await?;
            measure(&mut d, mode, warmup, timed).await?
        }
        Mode::Netavark => {
            let mut d = Netavark::new(&host, &dir)?;
            measure(&mut d, mode, warmup, timed).await?
        }
    };
    eprintln!(
        "bench-attach: {:<9} N={n:<5} done in {:.1} s",
        mode.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(run)
}

fn check_tools(opts: &Options) -> Result<()> {
    let needs = |mode| opts.modes.contains(&mode);
    if needs(Mode::Cni) {
        for plugin in ["bridge", "host-local", "portmap"] {
            if !Path::new(CNI_PATH).join(plugin).exists() {
                bail!("{CNI_PATH}/{plugin} is missing: install containernetworking-plugins (scripts/install-deps --test)");
            }
        }
    }
    if needs(Mode::Netavark) && !Path::new(NETAVARK).exists() {
        bail!("{NETAVARK} is missing: install netavark (scripts/install-deps --test)");
    }
    Ok(())
}

async fn bench(opts: Options) -> Result<()> {
    check_tools(&opts)?;
    let world = World::new().await?;
    let dir = tempdir_for(&world)?;
    let largest = opts.sizes.iter().copied().max().unwrap_or(1);
    let pool = world.host("ctrs").await?;
    let made = Instant::now();
    // Container namespaces up front, untimed; every run reuses them
    // (each run detaches everything it attached). Index 0 is the warm-up one.
    let containers: Vec<Container> = (0..=largest)
        .map(|i| pool.container(&format!("c{i}")))
        .collect::<Result<_>>()?;
    eprintln!(
        "bench-attach: {} container namespaces made in {:.1} s (not timed)",
        containers.len(),
        made.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for &n in &opts.sizes {
        for &mode in &opts.modes {
            if mode.is_reference() && n > opts.reference_cap {
                continue;
            }
            runs.push(
                run_mode(&world, mode, n, &containers, &dir.0)
                    .await
                    .with_context(|| format!("{} with N={n}", mode.name()))?,
            );
        }
    }
    let mut pairs = Vec::new();
    if opts.pairs > 0 && largest >= 2 {
        for &mode in opts.modes.iter().filter(|m| !m.is_reference()) {
            pairs.push(
                paired(&world, mode, largest, opts.pairs, &containers, &dir.0)
                    .await
                    .with_context(|| format!("{} paired with N={largest}", mode.name()))?,
            );
        }
    }
    report(&opts, &runs);
    report_pairs(&pairs);
    if let Some(path) = &opts.json {
        write_json(path, &runs, &pairs)?;
    }
    Ok(())
}

/// A per-run directory for state, sockets and the reference tools' data, removed at the end.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir_for(world: &World) -> Result<RunDir> {
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", world.prefix()));
    std::fs::create_dir_all(&dir)?;
    Ok(RunDir(dir))
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    if !world::is_root() {
        bail!("bench-attach needs root (network namespaces): run it with sudo");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime
        .block_on(bench(opts))
        .inspect_err(|_| world::wait_if_torn_down_by_signal())
}
