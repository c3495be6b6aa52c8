//! One run: N simulated hosts of a fresh world, their netd started all at
//! once (static peer lists, or an etcd they join), measured from outside.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use world::etcd::{Etcd, ETCD_IP, ETCD_PORT};
use world::{run_in, Container, NetdHost, World};

use crate::probe;
use crate::Mode;

/// The cluster range of every run: up to 256 hosts with a /24 each.
pub const RANGE: &str = "10.66.0.0/16";
/// Each netd's metrics listener, on its own host's loopback.
pub const NETD_METRICS: &str = "127.0.0.1:9588";

/// How long one run may wait for anything (convergence, a dead host).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub converge: Duration,
    pub dead: Duration,
}

/// A world with N hosts whose netd is ready to start (configs written, keys
/// made, sampled containers' namespaces made: none of it timed).
pub struct Fleet {
    pub mode: Mode,
    pub netds: Vec<NetdHost>,
    pub etcd: Option<Etcd>,
    /// Hosts that carry a sampled container, and the containers.
    samples: Vec<(usize, Container)>,
    /// When every netd was started (wall clock, for kept logs).
    started_at: Option<std::time::SystemTime>,
    // Last: dropped after the hosts and etcd, it kills what they started.
    world: World,
}

/// Times since the moment every netd was started.
#[derive(Clone, Debug)]
pub struct Convergence {
    /// Every host lists every other as a peer.
    pub all_peers: Duration,
    /// Every sampled container pair across hosts answers a ping.
    pub pairs: Duration,
    pub pair_count: usize,
    /// Each netd's CPU time from its start to convergence, ns.
    pub netd_cpu_ns: Vec<u64>,
    /// The store's CPU time over the same span, ns (cluster mode).
    pub store_cpu_ns: Option<u64>,
}

impl Convergence {
    pub fn total(&self) -> Duration {
        self.all_peers.max(self.pairs)
    }
}

impl Fleet {
    pub async fn build(
        mode: Mode,
        n: usize,
        samples: usize,
        log_filter: &str,
        dir: &Path,
    ) -> Result<Fleet> {
        let world = World::new().await?;
        let dir = dir.join(world.prefix());
        world.remove_on_teardown(&dir);
        let etcd = match mode {
            Mode::Cluster => Some(Etcd::start(&world).await?),
            Mode::Static => None,
        };
        let mut netds = Vec::with_capacity(n);
        for i in 0..n {
            let host = world.host(&format!("h{}", i + 1)).await?;
            let subnet = match mode {
                Mode::Static => format!("10.66.{}.0/24", i + 1),
                // The cluster hands it out; read back after the start.
                Mode::Cluster => String::new(),
            };
            let mut netd = NetdHost::prepare(&host, &dir.join(&host.name), &subnet)?;
            netd.log_filter(log_filter);
            netds.push(netd);
        }
        let extra = format!("metrics_addr = \"{NETD_METRICS}\"\n");
        match mode {
            Mode::Static => NetdHost::write_mesh_configs(&netds, RANGE, &extra)?,
            Mode::Cluster => {
                for netd in &netds {
                    // No subnet, no peer, no overlay section: all from the store.
                    let text = format!("reconcile_interval_secs = 1\n{extra}");
                    std::fs::write(netd.config_path(), text)?;
                }
                let out = netds[0].run(&[
                    "cluster",
                    "init",
                    "--store",
                    &store_url(),
                    "--range",
                    RANGE,
                    "--subnet-len",
                    "24",
                ])?;
                if !out.success {
                    bail!("netd cluster init: {}", out.stderr.trim());
                }
            }
        }
        let k = samples.min(n);
        let mut sampled = Vec::with_capacity(k);
        for j in 0..k {
            let h = j * n / k;
            sampled.push((h, netds[h].host.container("c")?));
        }
        Ok(Fleet {
            mode,
            netds,
            etcd,
            samples: sampled,
            started_at: None,
            world,
        })
    }

    /// The arguments `netd run` gets besides its config.
    fn run_args(&self, i: usize) -> Vec<String> {
        match self.mode {
            Mode::Static => Vec::new(),
            Mode::Cluster => vec![
                "--store".into(),
                store_url(),
                "--host-name".into(),
                self.netds[i].host.name.clone(),
            ],
        }
    }

    /// Starts every netd at once and waits (bounded) until every host has
    /// every other as a peer and every sampled pair of containers answers.
    pub fn start_and_converge(&mut self, bound: Duration) -> Result<Convergence> {
        let n = self.netds.len();
        let args: Vec<Vec<String>> = (0..n).map(|i| self.run_args(i)).collect();
        // Every netd is made first and held before its exec; then all go at
        // one moment (a start loop would hand the first ones a head start
        // that grows with what they cost the loop's CPU).
        let gate = StartGate::new()?;
        for (netd, args) in self.netds.iter_mut().zip(&args) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut command = netd.run_command(StartGate::LAUNCHER, &args)?;
            gate.hold(&mut command);
            netd.spawn_command(command)?;
        }
        let store_cpu = self
            .etcd
            .as_ref()
            .and_then(Etcd::pid)
            .map(probe::cpu_ns)
            .transpose()?;
        let started = Instant::now();
        self.started_at = Some(std::time::SystemTime::now());
        gate.open();
        let deadline = started + bound;
        let k = self.samples.len();
        let addresses: Arc<Mutex<Vec<Option<IpAddr>>>> = Arc::new(Mutex::new(vec![None; k]));
        let outcome = std::thread::scope(|scope| -> Result<Convergence> {
            let peer_waits: Vec<_> = self
                .netds
                .iter()
                .enumerate()
                .map(|(i, netd)| {
                    let sample = self.samples.iter().position(|(h, _)| *h == i);
                    let addresses = addresses.clone();
                    let container = sample.map(|s| &self.samples[s].1);
                    scope.spawn(move || -> Result<Duration> {
                        wait_api(netd, deadline)?;
                        if let (Some(s), Some(c)) = (sample, container) {
                            let ip = netd.attach(c, &[]).with_context(|| {
                                format!("attach a container on {}", netd.host.name)
                            })?;
                            addresses.lock().unwrap()[s] = Some(ip);
                        }
                        wait_peers(netd, n - 1, deadline)?;
                        Ok(started.elapsed())
                    })
                })
                .collect();
            let pings: Vec<_> = (0..k)
                .map(|j| {
                    let (from, to) = (j, (j + 1) % k);
                    let addresses = addresses.clone();
                    let from_netns = &self.samples[from].1.netns;
                    scope.spawn(move || -> Result<Duration> {
                        let target = loop {
                            if let Some(ip) = addresses.lock().unwrap()[to] {
                                break ip;
                            }
                            if Instant::now() > deadline {
                                bail!("container {to} was not attached in time");
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        };
                        while addresses.lock().unwrap()[from].is_none() {
                            if Instant::now() > deadline {
                                bail!("container {from} was not attached in time");
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        ping_until(from_netns, target, deadline)?;
                        Ok(started.elapsed())
                    })
                })
                .collect();
            let mut all_peers = Duration::ZERO;
            for wait in peer_waits {
                all_peers = all_peers.max(wait.join().expect("peer wait thread")?);
            }
            let mut pairs = Duration::ZERO;
            for ping in pings {
                pairs = pairs.max(ping.join().expect("ping thread")?);
            }
            let netd_cpu_ns = self
                .pids()
                .into_iter()
                .map(probe::cpu_ns)
                .collect::<Result<_>>()?;
            let store_cpu_ns = match (store_cpu, self.etcd.as_ref().and_then(Etcd::pid)) {
                (Some(before), Some(pid)) => Some(probe::cpu_ns(pid)?.saturating_sub(before)),
                _ => None,
            };
            Ok(Convergence {
                all_peers,
                pairs,
                pair_count: if k > 1 { k } else { 0 },
                netd_cpu_ns,
                store_cpu_ns,
            })
        });
        outcome.with_context(|| {
            format!(
                "{} hosts ({}) did not converge within {bound:?}",
                n,
                self.mode.name()
            )
        })
    }

    /// etcd's metrics, from inside the fabric namespace.
    pub fn etcd_metrics(&self) -> Result<Option<String>> {
        if self.etcd.is_none() {
            return Ok(None);
        }
        let addr = SocketAddr::new(IpAddr::V4(ETCD_IP), ETCD_PORT);
        probe::metrics(self.world.fabric(), addr).map(Some)
    }

    /// Kills (SIGKILL) the last host's netd and waits until every other host's
    /// metrics count a dead host; the time the slowest one took.
    pub fn kill_and_watch(&self, bound: Duration) -> Result<Duration> {
        let victim = self.netds.last().context("no hosts")?;
        let metrics: SocketAddr = NETD_METRICS.parse()?;
        let others = &self.netds[..self.netds.len() - 1];
        // Nobody may count a dead host before the kill, or the wait proves nothing.
        for netd in others {
            let text = probe::metrics(&netd.host.netns, metrics)?;
            if probe::sum(&text, "weft_netd_cluster_hosts", &[("state", "alive")]) < 1.0 {
                bail!(
                    "host {}: no weft_netd_cluster_hosts{{state=\"alive\"}} in its metrics",
                    netd.host.name
                );
            }
            if probe::sum(&text, "weft_netd_cluster_hosts", &[("state", "dead")]) > 0.0 {
                bail!(
                    "host {} counts a dead host before any was killed",
                    netd.host.name
                );
            }
        }
        victim.signal(libc::SIGKILL)?;
        let killed = Instant::now();
        let mut waiting: Vec<&NetdHost> = others.iter().collect();
        let mut slowest = Duration::ZERO;
        while !waiting.is_empty() {
            if killed.elapsed() > bound {
                let names: Vec<&str> = waiting.iter().map(|n| n.host.name.as_str()).collect();
                bail!(
                    "{} hosts still show {} alive after {bound:?}: {}",
                    names.len(),
                    victim.host.name,
                    names.join(" ")
                );
            }
            let mut still = Vec::new();
            for netd in waiting {
                let text = probe::metrics(&netd.host.netns, metrics)?;
                if probe::sum(&text, "weft_netd_cluster_hosts", &[("state", "dead")]) >= 1.0 {
                    slowest = slowest.max(killed.elapsed());
                } else {
                    still.push(netd);
                }
            }
            waiting = still;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(slowest)
    }

    /// Copies every host's netd log into `to` (made if missing), as
    /// `<host>.log`, and the moment all were started as `started` (Unix
    /// seconds, to read the logs' timestamps against).
    pub fn keep_logs(&self, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
        for netd in &self.netds {
            let dest = to.join(format!("{}.log", netd.host.name));
            std::fs::copy(netd.log_path(), &dest).with_context(|| {
                format!("copy {} to {}", netd.log_path().display(), dest.display())
            })?;
        }
        if let Some(at) = self.started_at {
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            std::fs::write(to.join("started"), format!("{secs:.6}\n"))?;
        }
        Ok(())
    }

    /// The PIDs of the running netd.
    pub fn pids(&self) -> Vec<u32> {
        self.netds.iter().filter_map(|n| n.pid).collect()
    }
}

/// netd's `--store` value for the world's etcd.
pub fn store_url() -> String {
    format!("etcd://{ETCD_IP}:{ETCD_PORT}")
}

/// Holds started netds until [`StartGate::open`]: each is started through
/// a shell that waits to read a pipe (its descriptor 3) whose write end only
/// this process holds, then runs netd in its place (same PID); closing the
/// write end lets every one go at once.
struct StartGate {
    read: OwnedFd,
    write: Option<OwnedFd>,
}

impl StartGate {
    /// The launcher [`NetdHost::run_command`] takes: netd and its
    /// arguments follow as `$@`.
    const LAUNCHER: &'static [&'static str] = &["sh", "-c", "read -r _ <&3; exec \"$@\"", "sh"];

    fn new() -> Result<StartGate> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("make the start gate's pipe");
        }
        // SAFETY: both descriptors were just made and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(StartGate {
            read,
            write: Some(write),
        })
    }

    /// Gives `command`'s child the pipe's read end as descriptor 3.
    fn hold(&self, command: &mut std::process::Command) {
        let read = self.read.as_raw_fd();
        // SAFETY: the hook runs in the forked child before exec and calls
        // only dup2(2), which is async-signal-safe (the copy it makes is
        // not close-on-exec; the write end is, so the shell never holds it).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(read, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Lets every held netd go.
    fn open(mut self) {
        self.write.take();
    }
}

/// Polls netd's API (in this process: no CLI started per look) until it
/// answers; fails if netd exits or the deadline passes.
fn wait_api(netd: &NetdHost, deadline: Instant) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = netd::api::client::Client::new(netd.socket());
    let pid = netd.pid.context("netd was not started")?;
    while Instant::now() < deadline {
        let status: Result<serde_json::Value, _> = runtime.block_on(client.get("/v1/status"));
        if status.is_ok() {
            return Ok(());
        }
        if world::has_exited(pid) {
            bail!(
                "netd on {} exited during start-up:\n{}",
                netd.host.name,
                netd.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("netd on {} did not answer by the deadline", netd.host.name)
}

/// Polls netd's API until it lists `want` peers.
fn wait_peers(netd: &NetdHost, want: usize, deadline: Instant) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = netd::api::client::Client::new(netd.socket());
    let mut last = 0;
    while Instant::now() < deadline {
        let peers: Result<Vec<serde_json::Value>, _> = runtime.block_on(client.get("/v1/peers"));
        if let Ok(peers) = peers {
            last = peers.len();
            if last >= want {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "host {} lists {last} of {want} peers at the deadline",
        netd.host.name
    )
}

/// Pings `to` from `from` every 100 ms until one answer, or the deadline.
/// ping gives up at the first ICMP error (an unreachable network while the
/// peer's route is still missing), so each error starts another ping.
fn ping_until(from: &plumb::Netns, to: IpAddr, deadline: Instant) -> Result<()> {
    let target = to.to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let secs = left.as_secs().max(1).to_string();
        let out = run_in(
            from,
            "ping",
            &["-4", "-c", "1", "-i", "0.1", "-w", &secs, "-q", &target],
            left + Duration::from_secs(2),
        )?;
        if out.success {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{target} did not answer from {}", from.label());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
