//! A real etcd (Debian's `etcd-server`) for cluster tests, running inside the
//! world's fabric namespace on a fabric address, with its own data directory.
//! Stopped by PID and cleaned on drop (also while unwinding from a panic).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plumb::{Netlink, Netns};

use crate::{run_in, World, FABRIC_PREFIX_LEN};

/// etcd's client address on the fabric: the top of 198.18.0.0/15, far from the hosts.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 250);
/// etcd's client port.
pub const ETCD_PORT: u16 = 2379;

/// A running (or stopped) etcd of one world.
pub struct Etcd {
    netns: Netns,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd in `world`'s fabric namespace and waits until it answers.
    pub async fn start(world: &World) -> Result<Etcd> {
        let nl = Netlink::open(world.fabric()).await?;
        nl.add_address(
            "fabric0",
            format!("{ETCD_IP}/{FABRIC_PREFIX_LEN}").parse()?,
            false,
        )
        .await
        .context("give the fabric bridge etcd's address")?;
        let data_dir = std::env::temp_dir().join(format!("{}-etcd", world.prefix()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("create etcd's data dir {}", data_dir.display()))?;
        let mut etcd = Etcd {
            netns: world.fabric().clone(),
            data_dir,
            child: None,
        };
        etcd.restart()?;
        Ok(etcd)
    }

    /// The client URL, `http://198.19.255.250:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{ETCD_IP}:{ETCD_PORT}")
    }

    /// Client endpoints, as the store configuration takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// Stops etcd (SIGKILL to its PID, as a crash would) and waits for it; data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by PID.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data (the first start uses this too).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("etcd is already running");
        }
        let log = std::fs::File::create(self.data_dir.join("etcd.log"))?;
        let peer = "http://127.0.0.1:2380";
        let mut command = Command::new("etcd");
        command
            .args(["--name", "weft-test", "--data-dir"])
            .arg(self.data_dir.join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("weft-test={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = self
            .netns
            .run(move || command.spawn())?
            .context("start etcd (is etcd-server installed? scripts/install-deps --test)")?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.etcdctl(&["endpoint", "health"])?;
            if out.success {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("etcd exited with {status}: {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd not healthy within 20 s: {} {}",
                    out.stderr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `etcdctl` (API v3) against this etcd, inside the fabric namespace, bounded to 20 s.
    pub fn etcdctl(&self, args: &[&str]) -> Result<crate::CommandOutput> {
        let endpoints = format!("--endpoints={}", self.endpoint());
        let mut all = vec![endpoints.as_str(), "--command-timeout=5s"];
        all.extend_from_slice(args);
        run_in(&self.netns, "etcdctl", &all, Duration::from_secs(20))
    }

    /// `etcdctl compact REVISION`: history before it is gone afterwards.
    pub fn compact(&self, revision: i64) -> Result<()> {
        let out = self.etcdctl(&["compact", &revision.to_string()])?;
        if !out.success {
            bail!("etcdctl compact {revision}: {}", out.stderr);
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd's log, last lines:\n{}", self.log_tail());
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs `body` on a fresh single-threaded runtime whose thread has entered
/// `netns`: every socket it opens (an etcd client's, say) belongs there,
/// never to the root namespace. Blocks the calling thread until it ends.
pub fn block_on_in<T, F, Fut>(netns: &Netns, body: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    netns
        .run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("build a runtime")?;
            Ok(runtime.block_on(body()))
        })
        .map_err(anyhow::Error::from)?
}
