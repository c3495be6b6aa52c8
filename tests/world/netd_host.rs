//! A simulated host running netd with the WireGuard overlay from a static
//! peer list, as an admin would set it up: `netd pubkey` on each host, a
//! netd.toml per host listing the others, `netd run`, `netd attach`.
//!
//! The netd binary is found next to the running executable
//! (`workspace_bin("netd")`); each host's config, key, state and socket live
//! in its own directory (never /etc/weft, /var/lib/weft or /run/weft), and
//! netd runs inside the host's namespace, killed by PID when the world drops.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{run_in, workspace_bin, CommandOutput, Container, Host};

/// netd's WireGuard port.
pub const WIREGUARD_PORT: u16 = 51820;

/// One host's netd: paths, subnet and overlay public key.
pub struct NetdHost {
    pub host: Host,
    pub dir: PathBuf,
    /// This host's container subnet, e.g. 10.66.1.0/24.
    pub subnet: String,
    pub public_key: String,
    pub pid: Option<u32>,
    log_filter: String,
}

impl NetdHost {
    /// Makes the host's directory and asks `netd pubkey` for its public key
    /// (which generates the private key, mode 0600, in the state directory).
    pub fn prepare(host: &Host, dir: &Path, subnet: &str) -> Result<NetdHost> {
        std::fs::create_dir_all(dir)?;
        let mut netd = NetdHost {
            host: host.clone(),
            dir: dir.to_path_buf(),
            subnet: subnet.to_string(),
            public_key: String::new(),
            pid: None,
            log_filter: "netd=debug,info".into(),
        };
        let state = netd.state_dir();
        let out = netd.run(&[
            "pubkey",
            "--state-dir",
            state.to_str().context("state path")?,
        ])?;
        if !out.success {
            bail!("netd pubkey on {}: {}", host.name, out.stderr.trim());
        }
        netd.public_key = out.stdout.trim().to_string();
        Ok(netd)
    }

    /// Sets RUST_LOG for the next start (default `netd=debug,info`).
    pub fn log_filter(&mut self, filter: &str) {
        self.log_filter = filter.to_string();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("netd.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("netd.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("netd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// This host's `[[overlay.peer]]` entry for the others' configs.
    pub fn peer_entry(&self) -> String {
        format!(
            "[[overlay.peer]]\npublic_key = \"{}\"\nendpoint = \"{}\"\nsubnet = \"{}\"\n",
            self.public_key,
            SocketAddr::new(self.host.ip_addr(), WIREGUARD_PORT),
            self.subnet
        )
    }

    /// Writes netd.toml: this host's subnet, the overlay on with
    /// `cluster_range`, `peers` as its static peer list, then `extra` lines.
    pub fn write_config(
        &self,
        cluster_range: &str,
        peers: &[&NetdHost],
        extra: &str,
    ) -> Result<()> {
        let mut text = format!(
            "subnet = \"{}\"\nreconcile_interval_secs = 1\n{extra}\n[overlay]\nenabled = true\ncluster_range = \"{cluster_range}\"\n",
            self.subnet
        );
        for peer in peers {
            text.push('\n');
            text.push_str(&peer.peer_entry());
        }
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Writes every host's netd.toml with all the others as its static
    /// peers (a full mesh), each with `cluster_range` and `extra` lines.
    pub fn write_mesh_configs(netds: &[NetdHost], cluster_range: &str, extra: &str) -> Result<()> {
        for (i, netd) in netds.iter().enumerate() {
            let others: Vec<&NetdHost> = netds
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n)
                .collect();
            netd.write_config(cluster_range, &others, extra)?;
        }
        Ok(())
    }

    /// Starts `netd run --config netd.toml` in the host and waits until its
    /// API answers.
    pub fn start(&mut self) -> Result<()> {
        self.start_with(&[])
    }

    /// Like [`NetdHost::start`], with `extra` arguments for `netd run`
    /// (`--store etcd://…`, `--host-name a`).
    pub fn start_with(&mut self, extra: &[&str]) -> Result<()> {
        self.spawn_with(extra)?;
        self.wait_ready(Duration::from_secs(20))
    }

    /// Starts `netd run --config netd.toml EXTRA…` in the host without
    /// waiting for it (many hosts starting at once); see [`NetdHost::wait_ready`].
    pub fn spawn_with(&mut self, extra: &[&str]) -> Result<u32> {
        let command = self.run_command(&[], extra)?;
        self.spawn_command(command)
    }

    /// The `netd run` command [`NetdHost::spawn_with`] starts, run by
    /// `launcher` when one is given (a program and its first arguments,
    /// netd's path and arguments following), for [`NetdHost::spawn_command`].
    pub fn run_command(&self, launcher: &[&str], extra: &[&str]) -> Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let netd = workspace_bin("netd");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&netd);
                command
            }
            None => Command::new(&netd),
        };
        command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(extra)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, _) in std::env::vars() {
            if key.starts_with("WEFT_") {
                command.env_remove(key);
            }
        }
        Ok(command)
    }

    /// Starts `command` (from [`NetdHost::run_command`]) in the host.
    pub fn spawn_command(&mut self, command: Command) -> Result<u32> {
        let pid = self.host.spawn(command)?;
        self.pid = Some(pid);
        Ok(pid)
    }

    /// Waits until the started netd's API answers, failing with its log if it
    /// exits or stays silent for `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let Some(pid) = self.pid else {
            bail!("netd on {} was not started", self.host.name)
        };
        let deadline = Instant::now() + timeout;
        loop {
            if self.socket().exists() && self.cli(&["status"]).map(|o| o.success).unwrap_or(false) {
                return Ok(());
            }
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() || has_exited(pid) {
                bail!(
                    "netd on {} exited during start-up:\n{}",
                    self.host.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "netd on {} did not answer within {timeout:?}:\n{}",
                    self.host.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to this host's netd (our own child, by PID).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let Some(pid) = self.pid else {
            bail!("netd on {} was not started", self.host.name)
        };
        // SAFETY: kill(2) takes no pointers; `pid` is a child the world
        // started and reaps only on drop, so it cannot have been reused.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("signal netd {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs the netd binary with `args` inside the host, bounded in time.
    pub fn run(&self, args: &[&str]) -> Result<CommandOutput> {
        let bin = workspace_bin("netd");
        run_in(
            &self.host.netns,
            bin.to_str().context("netd path")?,
            args,
            Duration::from_secs(30),
        )
    }

    /// A client command against this host's netd (`--socket` added).
    pub fn cli(&self, args: &[&str]) -> Result<CommandOutput> {
        let socket = self.socket();
        let mut full = args.to_vec();
        full.extend(["--socket", socket.to_str().context("socket path")?]);
        self.run(&full)
    }

    /// A client command with `--json`, parsed; fails with netd's words.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full)?;
        if !out.success {
            bail!(
                "netd {} on {}: {}",
                args.join(" "),
                self.host.name,
                out.stderr.trim()
            );
        }
        serde_json::from_str(&out.stdout).with_context(|| format!("netd output: {}", out.stdout))
    }

    /// `netd attach` of `container` under its own name; returns its IPv4 address.
    pub fn attach(&self, container: &Container, extra: &[&str]) -> Result<IpAddr> {
        let mut args = vec!["attach", &container.netns_name, "--name", &container.name];
        args.extend_from_slice(extra);
        let result = self.json(&args)?;
        let cidr = result["ips"][0]["address"]
            .as_str()
            .with_context(|| format!("attach result without an address: {result}"))?;
        Ok(cidr.split('/').next().unwrap_or_default().parse()?)
    }

    /// `netd peers --json`.
    pub fn peers(&self) -> Result<Vec<Value>> {
        Ok(self
            .json(&["peers"])?
            .as_array()
            .context("peers output is a list")?
            .clone())
    }
}

/// Whether process `pid` (our child, not yet reaped) has ended: every
/// thread of it is a zombie or gone. The group leader shows `Z` as soon as
/// its own thread exits, while the others may still be exiting and holding
/// the process's sockets (a restart would find its ports in use).
pub fn has_exited(pid: u32) -> bool {
    let state = |path: String| {
        std::fs::read_to_string(path).ok().and_then(|stat| {
            let i = stat.rfind(')')?;
            stat[i + 1..].trim_start().chars().next()
        })
    };
    let ended = |c: Option<char>| matches!(c, None | Some('Z') | Some('X'));
    if !ended(state(format!("/proc/{pid}/stat"))) {
        return false;
    }
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.filter_map(|t| t.ok()).all(|t| {
            ended(state(format!(
                "/proc/{pid}/task/{}/stat",
                t.file_name().to_string_lossy()
            )))
        }),
        Err(_) => true,
    }
}

/// `GET /metrics` from netd's metrics listener at `addr`, inside `netns`.
pub fn scrape_metrics(netns: &plumb::Netns, addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = netns
        .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: netd\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}
