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

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use world::{Container, Host, World};

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

// ---- netd, in-process -------------------------------------------------------

struct NetdLib {
    network: netd::Network,
}

/// netd's defaults, in `host`, with its state under `dir` (no daemon: the
/// socket is never made).
fn library_config(host: &Host, dir: &Path) -> netd::Config {
    netd::Config {
        state_dir: dir.join("state"),
        socket: dir.join("unused.sock"),
        netns: Some(host.netns.path_buf().display().to_string()),
        ..Default::default()
    }
}

impl NetdLib {
    async fn new(host: &Host, dir: &Path) -> Result<NetdLib> {
        Ok(NetdLib {
            network: netd::Network::open(library_config(host, dir)).await?,
        })
    }
}

fn netd_request(i: usize, c: &Container) -> netd::AttachRequest {
    netd::AttachRequest {
        netns: c.netns.path_buf().display().to_string(),
        id: Some(container_id(i)),
        name: Some(format!("bench{i}")),
        ports: vec![format!("{}:80", host_port(i))],
        ..Default::default()
    }
}

impl Driver for NetdLib {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        self.network.attach(netd_request(i, c)).await?;
        Ok(())
    }

    async fn detach(&mut self, i: usize, _c: &Container) -> Result<()> {
        let report = self.network.detach(&container_id(i)).await?;
        if !report.found {
            bail!("netd did not know container {i}");
        }
        Ok(())
    }
}

// ---- the kernel floor: netd's link requests alone ---------------------------

/// The bridge comes from netd (same settings: its MAC, no multicast
/// snooping, forward delay 0); each container's links are then made with
/// exactly the requests `netd::Network::attach` sends, in its order.
struct KernelFloor {
    host: plumb::Netns,
    nl: plumb::Netlink,
    bridge: u32,
    port_mac: plumb::MacAddr,
    subnet: ipnetwork::Ipv4Network,
}

impl KernelFloor {
    async fn new(host: &Host, dir: &Path) -> Result<KernelFloor> {
        let config = library_config(host, dir);
        let subnet = config.subnet;
        let bridge_name = config.bridge.clone();
        netd::Network::open(config).await?.ensure_host().await?;
        let nl = plumb::Netlink::open(&host.netns).await?;
        let bridge = nl.require_link(&bridge_name).await?.index;
        Ok(KernelFloor {
            host: host.netns.clone(),
            nl,
            bridge,
            port_mac: plumb::MacAddr::from_seed("bench-attach kernel floor ports"),
            subnet,
        })
    }

    fn host_ifname(i: usize) -> String {
        format!("wk{i:x}")
    }
}

impl Driver for KernelFloor {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        use plumb::{LinkChange, LinkOptions, Route};
        // netd opens this connection while it validates the request.
        let cnl = plumb::Netlink::open(&c.netns).await?;
        let host_if = Self::host_ifname(i);
        let host_opts = LinkOptions {
            mac: Some(self.port_mac),
            controller: Some(self.bridge),
            ..Default::default()
        };
        let peer_opts = LinkOptions {
            up: true,
            no_ipv6_link_local: true,
            ..Default::default()
        };
        let peer = self
            .nl
            .add_veth_beside(&host_if, &host_opts, &cnl, "eth0", &peer_opts)
            .await?;
        plumb::sysctl::write(
            &self.host,
            &format!("net/ipv6/conf/{host_if}/disable_ipv6"),
            "1",
        )?;
        let ip = self.subnet.nth(i as u32 + 2).context("subnet too small")?;
        let address = ipnetwork::Ipv4Network::new(ip, self.subnet.prefix())?;
        cnl.add_address_at(&peer, address.into(), true).await?;
        let gateway = self.subnet.nth(1).context("subnet too small")?;
        let route = Route {
            gateway: Some(gateway.into()),
            dev: Some("eth0".into()),
            ..Default::default()
        };
        cnl.add_route_at(&route, &peer).await?;
        let host_end = LinkChange {
            up: Some(true),
            alias: Some(format!("bench-attach kernel floor {i}")),
            hairpin: Some(true),
            ..Default::default()
        };
        self.nl.set_link(&host_if, &host_end).await?;
        Ok(())
    }

    async fn detach(&mut self, i: usize, _c: &Container) -> Result<()> {
        self.nl.delete_link(&Self::host_ifname(i)).await?;
        Ok(())
    }
}

// ---- netd, daemon over its socket --------------------------------------------

struct NetdApi {
    client: netd::api::client::Client,
}

impl NetdApi {
    async fn new(host: &Host, dir: &Path) -> Result<NetdApi> {
        let socket = dir.join("netd.sock");
        // WEFT_BENCH_NETD_LOG=FILE keeps the daemon's debug log (attach step timings).
        let (log_path, filter) = match std::env::var_os(NETD_LOG_ENV) {
            Some(path) => (PathBuf::from(path), "netd=debug,warn"),
            None => (dir.join("netd.log"), "warn"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut command = Command::new(world::workspace_bin("netd"));
        command
            .arg("run")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .env_remove("WEFT_CONFIG")
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        host.spawn(command)?;
        let client = netd::api::client::Client::new(&socket);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get::<Value>("/v1/status").await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    bail!("netd did not answer within 20 s: {e}\n{log}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(NetdApi { client })
    }
}

impl NetdApi {
    /// DELETE /v1/containers/<id> with `query` (`?wait=1`: answer once the
    /// veth pair is gone, not once the container is cut off).
    async fn delete(&mut self, i: usize, query: &str) -> Result<()> {
        let report: netd::DetachReport = self
            .client
            .delete(&format!("/v1/containers/{}{query}", container_id(i)))
            .await?;
        if !report.found {
            bail!("netd did not know container {i}");
        }
        Ok(())
    }
}

impl Driver for NetdApi {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        let _: netd::AttachResult = self
            .client
            .post("/v1/containers", &netd_request(i, c))
            .await?;
        Ok(())
    }

    async fn detach(&mut self, i: usize, _c: &Container) -> Result<()> {
        self.delete(i, "").await
    }

    async fn detach_fully(&mut self, i: usize, _c: &Container) -> Result<()> {
        self.delete(i, "?wait=1").await
    }

    /// The daemon forgets an endpoint once its veth pair is deleted.
    async fn settle(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left: Vec<Value> = self.client.get("/v1/containers").await?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} containers still detaching after 120 s", left.len());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

// ---- reference tools ------------------------------------------------------------

/// Runs `program` inside `host` with `env` and `input` on stdin; its stdout
/// when it succeeds.
fn run_tool(
    host: &Host,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    input: &str,
) -> Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = host
        .netns
        .run(move || command.spawn())?
        .with_context(|| format!("start {program} in {}", host.netns_name))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CNI `bridge` + `portmap` chain, as a runtime drives it.
struct Cni {
    host: Host,
    data_dir: PathBuf,
    results: BTreeMap<usize, Value>,
}

impl Cni {
    fn network(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "benchnet",
        })
    }

    fn bridge_conf(&self) -> Value {
        let mut conf = self.network();
        conf["type"] = json!("bridge");
        conf["bridge"] = json!("cni0");
        conf["isGateway"] = json!(true);
        conf["ipMasq"] = json!(true);
        conf["hairpinMode"] = json!(true);
        conf["ipam"] = json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.77.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": self.data_dir,
        });
        conf
    }

    fn portmap_conf(&self, i: usize, prev: Option<&Value>) -> Value {
        let mut conf = self.network();
        conf["type"] = json!("portmap");
        conf["capabilities"] = json!({"portMappings": true});
        conf["snat"] = json!(true);
        conf["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": host_port(i), "containerPort": 80, "protocol": "tcp"}
        ]});
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn call(
        &self,
        command: &str,
        plugin: &str,
        i: usize,
        c: &Container,
        conf: &Value,
    ) -> Result<String> {
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container_id(i)),
            ("CNI_NETNS", format!("/run/netns/{}", c.netns_name)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_PATH.to_string()),
        ];
        run_tool(
            &self.host,
            &format!("{CNI_PATH}/{plugin}"),
            &[],
            &env,
            &conf.to_string(),
        )
        .with_context(|| format!("CNI {command} {plugin} for container {i}"))
    }
}

impl Driver for Cni {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        let bridge: Value =
            serde_json::from_str(&self.call("ADD", "bridge", i, c, &self.bridge_conf())?)?;
        let result: Value = serde_json::from_str(&self.call(
            "ADD",
            "portmap",
            i,
            c,
            &self.portmap_conf(i, Some(&bridge)),
        )?)?;
        self.results.insert(i, result);
        Ok(())
    }

    async fn detach(&mut self, i: usize, c: &Container) -> Result<()> {
        let prev = self.results.remove(&i);
        self.call("DEL", "portmap", i, c, &self.portmap_conf(i, prev.as_ref()))?;
        let mut bridge = self.bridge_conf();
        if let Some(prev) = prev {
            bridge["prevResult"] = prev;
        }
        self.call("DEL", "bridge", i, c, &bridge)?;
        Ok(())
    }
}

/// `netavark setup`/`teardown` with Podman's network JSON.
struct Netavark {
    host: Host,
    config_dir: PathBuf,
}

impl Netavark {
    fn options(&self, i: usize) -> Value {
        // Podman does the IPAM: addresses 10.88.0.2 onwards, one per container.
        let n = i as u32 + 2;
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 88, 0, 0)) + n);
        json!({
            "container_id": container_id(i),
            "container_name": format!("bench{i}"),
            "port_mappings": [
                {"host_ip": "", "container_port": 80, "host_port": host_port(i), "range": 1, "protocol": "tcp"}
            ],
            "networks": {"benchnet": {"static_ips": [ip.to_string()], "interface_name": "eth0"}},
            "network_info": {"benchnet": {
                "name": "benchnet",
                "id": format!("{:064x}", 0xbe_u64),
                "driver": "bridge",
                "network_interface": "podman0",
                "created": "2026-11-25T00:00:00Z",
                "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
                "ipv6_enabled": false,
                "internal": false,
                "dns_enabled": false,
                "ipam_options": {"driver": "host-local"}
            }}
        })
    }

    fn call(&self, command: &str, i: usize, c: &Container) -> Result<()> {
        let config = self.config_dir.display().to_string();
        let netns = format!("/run/netns/{}", c.netns_name);
        let env = [("NETAVARK_FW", "iptables".to_string())];
        run_tool(
            &self.host,
            NETAVARK,
            &["--config", &config, command, &netns],
            &env,
            &self.options(i).to_string(),
        )
        .with_context(|| format!("netavark {command} for container {i}"))?;
        Ok(())
    }
}

impl Driver for Netavark {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        self.call("setup", i, c)
    }

    async fn detach(&mut self, i: usize, c: &Container) -> Result<()> {
        self.call("teardown", i, c)
    }
}

// ---- the runs -----------------------------------------------------------------

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
            let mut d = Cni {
                host: host.clone(),
                data_dir: dir.join("host-local"),
                results: BTreeMap::new(),
            };
            measure(&mut d, mode, warmup, timed).await?
        }
        Mode::Kernel => {
            let mut d = KernelFloor::new(&host, &dir).await?;
            measure(&mut d, mode, warmup, timed).await?
        }
        Mode::Netavark => {
            let config_dir = dir.join("netavark");
            std::fs::create_dir_all(&config_dir)?;
            let mut d = Netavark {
                host: host.clone(),
                config_dir,
            };
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

// ---- container #1 and container #N at the same moments -----------------------------

/// netd's two modes and the kernel floor behind one type, for the paired
/// measurement.
enum Netd {
    Lib(Box<NetdLib>),
    Api(NetdApi),
    Kernel(KernelFloor),
}

impl Netd {
    async fn new(mode: Mode, host: &Host, dir: &Path) -> Result<Netd> {
        std::fs::create_dir_all(dir)?;
        Ok(match mode {
            Mode::NetdLib => Netd::Lib(Box::new(NetdLib::new(host, dir).await?)),
            Mode::NetdApi => Netd::Api(NetdApi::new(host, dir).await?),
            Mode::Kernel => Netd::Kernel(KernelFloor::new(host, dir).await?),
            other => bail!("{} has no paired measurement", other.name()),
        })
    }

    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        match self {
            Netd::Lib(d) => d.attach(i, c).await,
            Netd::Api(d) => d.attach(i, c).await,
            Netd::Kernel(d) => d.attach(i, c).await,
        }
    }

    async fn detach_fully(&mut self, i: usize, c: &Container) -> Result<()> {
        match self {
            Netd::Lib(d) => d.detach_fully(i, c).await,
            Netd::Api(d) => d.detach_fully(i, c).await,
            Netd::Kernel(d) => d.detach_fully(i, c).await,
        }
    }

    async fn detach(&mut self, i: usize, c: &Container) -> Result<()> {
        match self {
            Netd::Lib(d) => d.detach(i, c).await,
            Netd::Api(d) => d.detach(i, c).await,
            Netd::Kernel(d) => d.detach(i, c).await,
        }
    }

    async fn settle(&mut self) -> Result<()> {
        match self {
            Netd::Lib(d) => d.settle().await,
            Netd::Api(d) => d.settle().await,
            Netd::Kernel(d) => d.settle().await,
        }
    }
}

/// Attach times of container #1 (an empty host) and container #N (a host
/// already holding N−1), taken in pairs at the same moments.
struct Paired {
    mode: Mode,
    n: usize,
    first: Vec<Duration>,
    nth: Vec<Duration>,
}

/// Two hosts of one mode, one empty and one holding N−1 containers; one
/// probe container is attached to each in turn (which goes first
/// alternates) and fully detached before the next. Whatever else the
/// machine does at that moment falls on both sides of a pair, which the
/// first and last 10% of a sequential run, seconds apart, cannot promise.
async fn paired(
    world: &World,
    mode: Mode,
    n: usize,
    pairs: usize,
    containers: &[Container],
    dir: &Path,
) -> Result<Paired> {
    let started = Instant::now();
    let (warmup, rest) = containers.split_first().context("no containers")?;
    let (filler, probe) = (&rest[..n - 1], &rest[n - 1]);
    let empty_host = world.host(&format!("{}e", mode.host_name())).await?;
    let full_host = world.host(&format!("{}f", mode.host_name())).await?;
    let mut empty = Netd::new(
        mode,
        &empty_host,
        &dir.join(format!("{}-empty", mode.name())),
    )
    .await?;
    let mut full = Netd::new(mode, &full_host, &dir.join(format!("{}-full", mode.name()))).await?;
    for side in [&mut empty, &mut full] {
        side.attach(0, warmup).await.context("warm-up attach")?;
        side.detach_fully(0, warmup)
            .await
            .context("warm-up detach")?;
    }
    for (k, c) in filler.iter().enumerate() {
        full.attach(k + 1, c).await?;
    }
    let mut result = Paired {
        mode,
        n,
        first: Vec::with_capacity(pairs),
        nth: Vec::with_capacity(pairs),
    };
    for round in 0..pairs {
        let mut order = [
            (&mut empty, &mut result.first),
            (&mut full, &mut result.nth),
        ];
        if round % 2 == 1 {
            order.reverse();
        }
        for (side, times) in order {
            let t = Instant::now();
            side.attach(n, probe).await?;
            times.push(t.elapsed());
            side.detach_fully(n, probe).await?;
            // The kernel finishes a removed port's clean-up in the
            // background (more of it on the full host): let it end, so that
            // neither side pays for the other's detach.
            tokio::time::sleep(AFTER_DETACH).await;
        }
    }
    // Untimed: the daemon deletes the veth pairs in batches meanwhile.
    for (k, c) in filler.iter().enumerate() {
        full.detach(k + 1, c).await?;
    }
    full.settle().await?;
    eprintln!(
        "bench-attach: {:<9} #1 and #{n} in {pairs} pairs, done in {:.1} s",
        mode.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(result)
}

// ---- statistics -----------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(samples: &[Duration]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Medians of the first and the last 10% (at least one container each).
fn ends(samples: &[Duration]) -> (f64, f64) {
    let k = samples.len().div_ceil(10).max(1);
    (median(&samples[..k]), median(&samples[samples.len() - k..]))
}

fn report_pairs(pairs: &[Paired]) {
    if pairs.is_empty() {
        return;
    }
    println!();
    println!("container #1 and #N attached at the same moments (goal: #N ≤ 1.2× #1):");
    let growth = |p: &Paired| median(&p.nth) - median(&p.first);
    for p in pairs {
        let (first, nth) = (median(&p.first), median(&p.nth));
        println!(
            "  {:<9} #1 {:.2} ms, #{} {:.2} ms (medians of {} pairs): {:.2}×, {:+.2} ms",
            p.mode.name(),
            first,
            p.n,
            nth,
            p.first.len(),
            nth / first,
            growth(p)
        );
    }
    let Some(floor) = pairs.iter().find(|p| p.mode == Mode::Kernel) else {
        return;
    };
    // What the kernel adds is added to netd's attach whatever netd does:
    // within 1.2× only an attach that costs five times that at #1.
    for p in pairs.iter().filter(|p| p.mode.is_weft()) {
        println!(
            "  {:<9} of its {:+.2} ms at #{}, the kernel floor's {:+.2} ms; with that alone, 1.2× needs #1 ≥ {:.2} ms (it is {:.2})",
            p.mode.name(),
            growth(p),
            p.n,
            growth(floor),
            5.0 * growth(floor),
            median(&p.first)
        );
    }
}

fn report(opts: &Options, runs: &[Run]) {
    println!();
    println!("bench-attach: per container, attach = create its network and publish one port (host port 20000+i → 80/tcp),");
    println!(
        "detach = remove both. All N attached one after the other, then all detached. Times in ms."
    );
    if runs.iter().any(|r| r.mode == Mode::Kernel) {
        println!("kernel = the floor: only the link requests a netd attach sends (no IPAM, state, checks or port), through plumb.");
    }
    println!(
        "References run up to N={} (bridge+portmap took 352 s at N=500 in baselines.md); larger N compare with their N={} run.",
        opts.reference_cap, opts.reference_cap
    );
    println!();
    println!(
        "{:<9} {:>5} | {:>8} {:>8} {:>8} {:>6} | {:>8} {:>8} {:>8} {:>6}",
        "mode",
        "N",
        "attach",
        "first10%",
        "last10%",
        "last/1",
        "detach",
        "first10%",
        "last10%",
        "last/1"
    );
    println!("{}", "-".repeat(96));
    for run in runs {
        let (af, al) = ends(&run.attach);
        let (df, dl) = ends(&run.detach);
        println!(
            "{:<9} {:>5} | {:>8.2} {:>8.2} {:>8.2} {:>6.2} | {:>8.2} {:>8.2} {:>8.2} {:>6.2}",
            run.mode.name(),
            run.n,
            median(&run.attach),
            af,
            al,
            al / af,
            median(&run.detach),
            df,
            dl,
            dl / df
        );
    }
    for run in runs
        .iter()
        .filter(|r| r.settle > Duration::from_micros(500))
    {
        let total: Duration = run.detach.iter().sum::<Duration>() + run.settle;
        println!(
            "{:<9} {:>5}   veth pairs deleted in the background: all gone {:.1} ms after the last detach returned; \
             all detaches end to end {:.2} ms per container",
            run.mode.name(),
            run.n,
            ms(run.settle),
            ms(total) / run.n as f64
        );
    }
    println!();
    println!("reference ÷ weft, per-container medians (higher is better for weft; goal ≥ 10):");
    println!(
        "{:<9} {:>5} | {:<10} {:>5} | {:>8} {:>8} {:>8}",
        "weft", "N", "reference", "at N", "attach", "detach", "both"
    );
    println!("{}", "-".repeat(66));
    for weft in runs.iter().filter(|r| r.mode.is_weft()) {
        for reference in [Mode::Cni, Mode::Netavark] {
            let at = weft.n.min(opts.reference_cap);
            let Some(r) = runs.iter().find(|r| r.mode == reference && r.n == at) else {
                continue;
            };
            let both = |run: &Run| median(&run.attach) + median(&run.detach);
            println!(
                "{:<9} {:>5} | {:<10} {:>5} | {:>7.1}× {:>7.1}× {:>7.1}×",
                weft.mode.name(),
                weft.n,
                reference.name(),
                at,
                median(&r.attach) / median(&weft.attach),
                median(&r.detach) / median(&weft.detach),
                both(r) / both(weft)
            );
        }
    }
    println!();
    println!("growth (goal: the last 10% of attaches cost ≤ 1.2× the first 10%):");
    for run in runs.iter().filter(|r| r.n >= 100) {
        let (af, al) = ends(&run.attach);
        println!(
            "  {:<9} N={:<5} #{}..{} {:.2} ms → #{}..{} {:.2} ms: {:.2}×",
            run.mode.name(),
            run.n,
            1,
            run.n.div_ceil(10),
            af,
            run.n - run.n.div_ceil(10) + 1,
            run.n,
            al,
            al / af
        );
    }
}

fn write_json(path: &Path, runs: &[Run], pairs: &[Paired]) -> Result<()> {
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "mode": r.mode.name(),
                "n": r.n,
                "attach_ms": r.attach.iter().copied().map(ms).collect::<Vec<_>>(),
                "detach_ms": r.detach.iter().copied().map(ms).collect::<Vec<_>>(),
                "settle_ms": ms(r.settle),
            })
        })
        .collect();
    let pairs: Vec<Value> = pairs
        .iter()
        .map(|p| {
            json!({
                "mode": p.mode.name(),
                "n": p.n,
                "first_ms": p.first.iter().copied().map(ms).collect::<Vec<_>>(),
                "nth_ms": p.nth.iter().copied().map(ms).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&json!({ "runs": runs, "pairs": pairs }))?,
    )?;
    Ok(())
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
    runtime.block_on(bench(opts))
}
