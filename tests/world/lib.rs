//! The test world: simulated hosts and containers in network namespaces.
//!
//! Every integration test, the demo and the benchmarks build their worlds here,
//! so they all speak the same language:
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let world = world::World::new().await?;
//! let a = world.host("a").await?;          // namespace on the fabric, 198.18.0.1/15
//! let c1 = a.container("c1")?;            // bare namespace, to be wired by the code under test
//! # Ok(()) }
//! ```
//!
//! Layout: a fabric namespace holds the bridge `fabric0`; each host is a
//! namespace joined to it by a veth (`eth0` in the host) on 198.18.0.0/15, the
//! benchmarking range. Nothing is ever created in the root namespace.
//!
//! Names carry a per-run prefix `wt<pid>x<seq>`; dropping the world (also while
//! unwinding from a panic) removes every namespace and kills every process it
//! started, SIGINT and SIGTERM do the same before the process exits (130/143;
//! see `signals`), and `World::new` first sweeps worlds whose process has died.

mod bulk;
mod capture;
pub mod etcd;
mod exec;
mod forwarded;
mod netd_host;
mod signals;
pub use signals::wait_if_torn_down_by_signal;
mod traffic;

pub use bulk::tcp_bulk;
pub use capture::{classify_frame, contains, Capture, Frame};
pub use exec::{ip_json, run_in, workspace_bin, CommandOutput};
pub use forwarded::{sctp_available, sctp_part, sctp_via, tcp_via, udp_via};
pub use netd_host::{has_exited, scrape_metrics, NetdHost, WIREGUARD_PORT};
pub use traffic::{ping, ping6, tcp_exchange, udp_exchange};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use plumb::{LinkOptions, Netlink, Netns};

/// Every world's namespace names start with this.
pub const PREFIX_ROOT: &str = "wt";

/// The fabric's IPv4 underlay: the benchmarking range 198.18.0.0/15.
pub const FABRIC_PREFIX_LEN: u8 = 15;

static NEXT_WORLD: AtomicUsize = AtomicUsize::new(0);

/// Fails a test that is run without root, naming what it needs: everything
/// here needs CAP_NET_ADMIN. A test that cannot run must not report "ok".
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            panic!(
                "{} needs root (network namespaces): run `sudo scripts/test` or `sudo cargo test`",
                module_path!()
            );
        }
    };
}

/// Fails a test when a kernel module it needs is missing (not loaded or built
/// in). Such tests are `#[ignore]`d `vm_` tests that scripts/vm-test runs in
/// a VM whose kernel has the module; run on a kernel without it they fail.
#[macro_export]
macro_rules! require_kernel_module {
    ($module:expr) => {
        if !$crate::kernel_has($module) {
            if std::env::var_os("WEFT_IN_VM").is_some() {
                panic!("kernel module {} is missing inside the test VM", $module);
            }
            panic!(
                "{} needs kernel module {}, which this kernel lacks: scripts/vm-test runs it in a VM",
                module_path!(),
                $module
            );
        }
    };
}

/// True inside the test VM (scripts/vm-test sets WEFT_IN_VM=1).
pub fn in_vm() -> bool {
    std::env::var_os("WEFT_IN_VM").is_some()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when `module` is loaded or built in (it appears under /sys/module).
pub fn kernel_has(module: &str) -> bool {
    std::path::Path::new("/sys/module").join(module).exists()
}

struct Inner {
    prefix: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    hosts: Mutex<Vec<String>>,
    /// Files and directories of the run (configs, keys, logs), removed last.
    paths: Mutex<Vec<std::path::PathBuf>>,
}

/// A world of namespaces, torn down on drop.
#[derive(Clone)]
pub struct World {
    inner: Arc<Inner>,
    fabric: Netns,
}

/// A simulated host: a namespace on the fabric.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: Netns,
    /// Its address on the fabric (eth0).
    pub ip: Ipv4Addr,
    /// Its IPv6 address on the fabric (eth0).
    pub ip6: Ipv6Addr,
    /// The namespace name, for `ip netns exec` and for netd's `--netns` style flags.
    pub netns_name: String,
    world: Arc<Inner>,
}

/// A container: a bare namespace with loopback up, to be wired by the code under test.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub netns: Netns,
    pub netns_name: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl World {
    /// Builds an empty fabric. Sweeps leftovers of dead runs first.
    pub async fn new() -> Result<World> {
        if !is_root() {
            bail!("the test world needs root (network namespaces)");
        }
        sweep_dead_worlds();
        let prefix = format!(
            "{PREFIX_ROOT}{}x{}",
            std::process::id(),
            NEXT_WORLD.fetch_add(1, Ordering::Relaxed)
        );
        let inner = Arc::new(Inner {
            prefix: prefix.clone(),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            hosts: Mutex::new(Vec::new()),
            paths: Mutex::new(Vec::new()),
        });
        signals::watch(&inner);
        let fabric = inner.create_namespace(&format!("{prefix}-fab"))?;
        let world = World { inner, fabric };
        let nl = Netlink::open(&world.fabric).await?;
        nl.set_up("lo").await?;
        nl.add_bridge(
            "fabric0",
            &LinkOptions {
                up: true,
                ..Default::default()
            },
        )
        .await
        .context("create the fabric bridge")?;
        Ok(world)
    }

    /// The per-run prefix all of this world's names start with.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    /// Adds simulated host `name` (≤ 12 bytes) to the fabric. Hosts are numbered
    /// in order of creation: the first is 198.18.0.1, the second 198.18.0.2, …
    pub async fn host(&self, name: &str) -> Result<Host> {
        if name.len() > 12 || name.contains(['/', '-']) {
            bail!("host name {name:?}: at most 12 bytes, no '/' or '-'");
        }
        let number = {
            let mut hosts = self.inner.hosts.lock().unwrap();
            if hosts.iter().any(|h| h == name) {
                bail!("host {name} already exists in this world");
            }
            hosts.push(name.to_string());
            hosts.len() as u32
        };
        if number > 60_000 {
            bail!("too many hosts");
        }
        let netns_name = format!("{}-{name}", self.inner.prefix);
        let netns = self.inner.create_namespace(&netns_name)?;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + number);
        let ip6: Ipv6Addr = format!("fd00:198:18::{number:x}").parse()?;

        let fabric = Netlink::open(&self.fabric).await?;
        let port = format!("h-{name}");
        fabric
            .add_veth(
                &port,
                &LinkOptions {
                    up: true,
                    ..Default::default()
                },
                "eth0",
                &LinkOptions {
                    netns: Some(netns.clone()),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("wire host {name} to the fabric"))?;
        fabric.attach_to_bridge(&port, "fabric0").await?;

        let nl = Netlink::open(&netns).await?;
        nl.set_up("lo").await?;
        nl.add_address("eth0", format!("{ip}/{FABRIC_PREFIX_LEN}").parse()?, false)
            .await?;
        nl.add_address("eth0", format!("{ip6}/64").parse()?, true)
            .await?;
        nl.set_up("eth0").await?;
        Ok(Host {
            name: name.to_string(),
            netns,
            ip,
            ip6,
            netns_name,
            world: self.inner.clone(),
        })
    }

    /// A namespace of this world that is neither host nor container (a client,
    /// a router, a VM-less switch): `name` is suffixed to the prefix.
    pub fn namespace(&self, name: &str) -> Result<(String, Netns)> {
        let netns_name = format!("{}-{name}", self.inner.prefix);
        let netns = self.inner.create_namespace(&netns_name)?;
        netns_lo_up(&netns)?;
        Ok((netns_name, netns))
    }

    /// Hands the world a namespace the code under test created (named with
    /// this world's prefix), so that the world removes it on drop like its own.
    pub fn adopt_namespace(&self, name: &str) -> Result<()> {
        if !name.starts_with(&format!("{}-", self.inner.prefix)) {
            bail!(
                "namespace {name} does not carry this world's prefix {}",
                self.inner.prefix
            );
        }
        let mut namespaces = self.inner.namespaces.lock().unwrap();
        if !namespaces.iter().any(|n| n == name) {
            namespaces.push(name.to_string());
        }
        Ok(())
    }

    /// Removes `path` (a file or a directory tree of this run) when the world
    /// is torn down: on drop, or on SIGINT/SIGTERM.
    pub fn remove_on_teardown(&self, path: impl Into<std::path::PathBuf>) {
        self.inner
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.into());
    }

    /// Starts `program` inside `netns`; the world kills it (by PID) on drop.
    pub fn spawn(&self, netns: &Netns, command: std::process::Command) -> Result<u32> {
        self.inner.spawn(netns, command)
    }
}

impl Host {
    /// Runs the workspace's `plumb` binary inside this host (never in the root
    /// namespace), bounded to 60 s.
    pub fn plumb(&self, args: &[&str]) -> CommandOutput {
        let bin = workspace_bin("plumb");
        run_in(
            &self.netns,
            bin.to_str().expect("UTF-8 path"),
            args,
            std::time::Duration::from_secs(60),
        )
        .expect("run plumb")
    }

    /// Like `plumb`, failing the test with plumb's stderr unless it succeeds.
    pub fn plumb_ok(&self, args: &[&str]) -> String {
        let out = self.plumb(args);
        assert!(out.success, "plumb {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// A container namespace on this host, named `<prefix>-<host>-<name>`.
    pub fn container(&self, name: &str) -> Result<Container> {
        let netns_name = format!("{}-{name}", self.netns_name);
        let netns = self.world.create_namespace(&netns_name)?;
        netns_lo_up(&netns)?;
        Ok(Container {
            name: name.to_string(),
            netns,
            netns_name,
        })
    }

    /// Starts `command` inside this host; killed (by PID) when the world drops.
    pub fn spawn(&self, command: std::process::Command) -> Result<u32> {
        self.world.spawn(&self.netns, command)
    }

    pub fn ip_addr(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }
}

/// Brings loopback up with a one-shot runtime, so sync callers can use it too.
fn netns_lo_up(netns: &Netns) -> Result<()> {
    let netns = netns.clone();
    let run = move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let nl = Netlink::open(&netns).await?;
            nl.set_up("lo").await?;
            Ok(())
        })
    };
    // Called from inside async tests too: a fresh thread has no runtime to clash with.
    std::thread::spawn(run)
        .join()
        .map_err(|_| anyhow::anyhow!("loopback setup panicked"))?
}

impl Inner {
    fn create_namespace(&self, name: &str) -> Result<Netns> {
        let netns = Netns::create(name).with_context(|| format!("create namespace {name}"))?;
        self.namespaces.lock().unwrap().push(name.to_string());
        Ok(netns)
    }

    fn spawn(&self, netns: &Netns, mut command: std::process::Command) -> Result<u32> {
        let child = netns
            .run(move || command.spawn())?
            .with_context(|| format!("start a process in namespace {}", netns.label()))?;
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        Ok(pid)
    }
}

impl Inner {
    /// Kills the processes this world started and removes its namespaces; on
    /// drop, and from the signal thread on SIGINT/SIGTERM. Idempotent.
    fn tear_down(&self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for mut child in children {
            // Only our own children, by PID, as the machine is shared.
            let _ = child.kill();
            let _ = child.wait();
        }
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        // Containers before hosts before the fabric: reverse creation order.
        for name in namespaces.iter().rev() {
            if let Err(e) = Netns::delete(name) {
                if !e.is_not_found() {
                    eprintln!("test world: could not remove namespace {name}: {e}");
                }
            }
        }
        let paths = std::mem::take(&mut *self.paths.lock().unwrap_or_else(|e| e.into_inner()));
        for path in paths {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// Removes namespaces of worlds whose process is gone (killed, or aborted
/// without unwinding). Worlds of live processes are left alone.
pub fn sweep_dead_worlds() {
    let Ok(names) = Netns::list_named() else {
        return;
    };
    for name in names {
        let Some(pid) = world_pid(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = Netns::delete(&name) {
            eprintln!("test world: could not sweep namespace {name}: {e}");
        }
    }
}

/// The PID encoded in a world namespace name `wt<pid>x<seq>-…`.
fn world_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX_ROOT)?;
    let (pid, rest) = rest.split_once('x')?;
    let (seq, _) = rest.split_once('-')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_names_encode_their_pid() {
        assert_eq!(world_pid("wt1234x0-fab"), Some(1234));
        assert_eq!(world_pid("wt1234x12-a-c1"), Some(1234));
        assert_eq!(world_pid("wtx0-fab"), None);
        assert_eq!(world_pid("weft-other"), None);
        assert_eq!(world_pid("wt12x-a"), None);
    }
}
