//! A real etcd (Debian's `etcd-server`) for cluster tests, running inside the
//! world's fabric namespace on a fabric address, with its own data directory.
//! Stopped by PID and cleaned on drop (also while unwinding from a panic);
//! started through the world, so that Ctrl-C's teardown kills it too.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plumb::{Netlink, Netns};

use crate::netd_host::has_exited;
use crate::{run_in, World, FABRIC_PREFIX_LEN};

/// etcd's client address on the fabric: the top of 198.18.0.0/15, far from the hosts.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 250);
/// etcd's client port.
pub const ETCD_PORT: u16 = 2379;

/// A running (or stopped) etcd of one world.
pub struct Etcd {
    world: World,
    netns: Netns,
    data_dir: PathBuf,
    /// The running etcd, a child the world owns (and reaps on teardown).
    pid: Option<u32>,
    tls: Option<EtcdTlsFiles>,
}

/// The PEM files of an etcd started with TLS: the CA that signed everything,
/// and a client certificate (CN `root`) with its key.
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client key.
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl Etcd {
    /// Starts etcd in `world`'s fabric namespace and waits until it answers.
    pub async fn start(world: &World) -> Result<Etcd> {
        Etcd::start_inner(world, false).await
    }

    /// Like [`Etcd::start`], serving only TLS and requiring client
    /// certificates signed by a CA made for this etcd (`openssl`).
    pub async fn start_tls(world: &World) -> Result<Etcd> {
        Etcd::start_inner(world, true).await
    }

    async fn start_inner(world: &World, tls: bool) -> Result<Etcd> {
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
        let tls = if tls {
            Some(make_certificates(&data_dir)?)
        } else {
            None
        };
        world.remove_on_teardown(&data_dir);
        let mut etcd = Etcd {
            world: world.clone(),
            netns: world.fabric().clone(),
            data_dir,
            pid: None,
            tls,
        };
        etcd.restart()?;
        Ok(etcd)
    }

    /// The client URL, `http://198.19.255.250:2379` (`https://` with TLS).
    /// The running etcd's PID.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{ETCD_IP}:{ETCD_PORT}")
    }

    /// The certificates, for an etcd started with TLS.
    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// Client endpoints, as the store configuration takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// Stops etcd (SIGKILL to its PID, as a crash would) and waits for it; data stays.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        // SAFETY: kill(2) takes no pointers; `pid` is our own child, which
        // the world reaps only on teardown, so it cannot have been reused.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // Dead once it is a zombie: its ports are free for a restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !has_exited(pid) && Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                eprintln!("etcd {pid} still runs 10 s after SIGKILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts etcd again on the same data (the first start uses this too).
    pub fn restart(&mut self) -> Result<()> {
        if self.pid.is_some() {
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
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let pid = self
            .world
            .spawn(&self.netns, command)
            .context("start etcd (is etcd-server installed? scripts/install-deps --test)")?;
        self.pid = Some(pid);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.etcdctl(&["endpoint", "health"])?;
            if out.success {
                return Ok(());
            }
            if self
                .pid
                .is_some_and(|pid| has_exited(pid) || !Path::new(&format!("/proc/{pid}")).exists())
            {
                bail!("etcd exited: {}", self.log_tail());
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
        let mut all = vec![
            format!("--endpoints={}", self.endpoint()),
            "--command-timeout=5s".into(),
        ];
        if let Some(tls) = &self.tls {
            all.push(format!("--cacert={}", tls.ca.display()));
            all.push(format!("--cert={}", tls.client_cert.display()));
            all.push(format!("--key={}", tls.client_key.display()));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
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

/// A CA, a server certificate for [`ETCD_IP`] and a client certificate
/// (CN `root`), EC P-256, made with `openssl` in `dir`.
fn make_certificates(dir: &Path) -> Result<EtcdTlsFiles> {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("run openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=weft-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    )?;
    for (name, cn, ext) in [
        ("server", "etcd", format!("subjectAltName=IP:{ETCD_IP}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")),
        ("client", "root", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n".to_string()),
    ] {
        std::fs::write(path(&format!("{name}.ext")), ext)?;
        let (key, csr, pem, extfile) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]].concat())?;
        openssl(&["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", &pem, "-days", "2", "-extfile", &extfile])?;
    }
    Ok(EtcdTlsFiles {
        ca: path("ca.pem"),
        client_cert: path("client.pem"),
        client_key: path("client.key"),
        server_cert: path("server.pem"),
        server_key: path("server.key"),
    })
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
