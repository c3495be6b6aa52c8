//! Running netd inside a simulated host for the netd integration tests.
//!
//! The `netd` binary belongs to another package, so `CARGO_BIN_EXE_netd` does
//! not exist here: `world::workspace_bin("netd")` finds it next to the test
//! executable (target/<profile>/netd). Build the workspace first
//! (`cargo build -p netd`, or `cargo test` at the root).
//!
//! Each `Netd` gets its own state directory and socket under a per-test
//! directory in the system temp dir, never /var/lib/weft or /run/weft.

#![allow(dead_code)] // each test file uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use world::{Host, World};

/// A per-test directory, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(world: &World) -> Result<TestDir> {
        let dir = std::env::temp_dir().join(format!("weft-netd-{}", world.prefix()));
        std::fs::create_dir_all(&dir)?;
        Ok(TestDir(dir))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A netd process running inside a simulated host.
pub struct Netd {
    pub pid: u32,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    world: World,
    /// The namespace netd runs in (a simulated host, normally).
    netns: plumb::Netns,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The arguments every test netd runs with besides its paths.
pub fn default_args(subnet: &str) -> Vec<String> {
    vec![
        "--subnet".into(),
        subnet.into(),
        "--reconcile-interval-secs".into(),
        "1".into(),
    ]
}

impl Netd {
    /// Starts netd in `host` with `args` (besides --state-dir and --socket)
    /// and waits until its API answers.
    pub fn start(world: &World, host: &Host, dir: &Path, args: &[impl AsRef<str>]) -> Result<Netd> {
        Self::start_with_env(world, host, dir, args, &[])
    }

    pub fn start_with_env(
        world: &World,
        host: &Host,
        dir: &Path,
        args: &[impl AsRef<str>],
        env: &[(&str, &str)],
    ) -> Result<Netd> {
        Self::start_in(world, &host.netns, dir, args, env)
    }

    /// Starts netd inside any namespace of the world (e.g. a control
    /// namespace managing a host through `--netns`).
    pub fn start_in(
        world: &World,
        netns: &plumb::Netns,
        dir: &Path,
        args: &[impl AsRef<str>],
        env: &[(&str, &str)],
    ) -> Result<Netd> {
        let mut netd = Netd {
            pid: 0,
            socket: dir.join("run/netd.sock"),
            state_dir: dir.join("state"),
            log: dir.join("netd.log"),
            world: world.clone(),
            netns: netns.clone(),
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        netd.launch()?;
        Ok(netd)
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(world::workspace_bin("netd"));
        command
            .arg("run")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.args)
            .env_remove("WEFT_CONFIG")
            .env("RUST_LOG", "netd=debug,info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.pid = self.world.spawn(&self.netns, command)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() && self.cli(&["status"]).map(|o| o.success).unwrap_or(false) {
                return Ok(());
            }
            if !self.is_running() {
                bail!("netd exited during start-up:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("netd did not answer within 20 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process is running (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        !world::has_exited(self.pid)
    }

    /// Sends `signal` to this netd (our own child, by PID).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the PID of a child this test started and has not
        // reaped (the world reaps it on drop), so the PID cannot have been reused.
        unsafe {
            libc::kill(self.pid as i32, signal);
        }
    }

    /// Waits (bounded) until the process has exited.
    pub fn wait_exit(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                bail!("netd (PID {}) still runs after {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn kill9(&self) -> Result<()> {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5))
    }

    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Starts netd again with the same paths and arguments, and no extra environment.
    pub fn restart(&mut self) -> Result<()> {
        self.env.clear();
        self.launch()
    }

    /// Runs `netd ARGS --socket S` (a client command; it needs no namespace).
    pub fn cli(&self, args: &[&str]) -> Result<world::CommandOutput> {
        let mut full: Vec<&str> = args.to_vec();
        let socket = self.socket.to_str().context("socket path")?;
        full.extend(["--socket", socket]);
        let bin = world::workspace_bin("netd");
        world::run_in(
            &self.netns,
            bin.to_str().context("netd path")?,
            &full,
            Duration::from_secs(60),
        )
    }

    /// Runs a client command with `--json` and parses its output; fails with
    /// netd's words when the command fails.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full)?;
        if !out.success {
            bail!("netd {}: {}", args.join(" "), out.stderr.trim());
        }
        serde_json::from_str(&out.stdout).with_context(|| format!("netd output: {}", out.stdout))
    }

    /// Runs a client command expected to fail; returns what it printed on stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if out.success {
            bail!(
                "netd {} succeeded but should have failed: {}",
                args.join(" "),
                out.stdout
            );
        }
        Ok(out.stderr)
    }

    /// `netd attach <container namespace> --name NAME [extra]` → the result JSON.
    pub fn attach(&self, netns_name: &str, name: &str, extra: &[&str]) -> Result<Value> {
        let mut args = vec!["attach", netns_name, "--name", name];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// netd's state as its store reads it (snapshot plus journal), as pretty
    /// JSON: what tests compare to see whether something changed the state.
    pub fn state_text(&self) -> String {
        let state = netd::Store::open(&self.state_dir)
            .and_then(|store| store.read())
            .expect("read netd's state");
        serde_json::to_string_pretty(&state).expect("state serializes")
    }

    /// The endpoints netd lists.
    pub fn endpoints(&self) -> Result<Vec<Value>> {
        Ok(self.json(&["ls"])?.as_array().context("ls output")?.clone())
    }
}

/// The first IPv4 address of an attach result.
pub fn result_ip(result: &Value) -> std::net::IpAddr {
    let cidr = result["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap().parse().expect("an IP")
}

/// Names of the links in `netns` whose names start with `prefix`.
pub fn links_with_prefix(netns: &plumb::Netns, prefix: &str) -> Vec<String> {
    let links = world::ip_json(netns, &["link", "show"]).expect("ip link");
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// The addresses (CIDR) on `dev` in `netns`, empty when the link is absent.
pub fn addresses(netns: &plumb::Netns, dev: &str) -> Vec<String> {
    let Ok(shown) = world::ip_json(netns, &["addr", "show", "dev", dev]) else {
        return Vec::new();
    };
    shown
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link" && a["scope"] != "host")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Waits (bounded) for `check` to hold, polling every 100 ms.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
