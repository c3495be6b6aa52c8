//! Real container runtimes inside a simulated host: podman 4.3 (CNI backend,
//! runc, cgroupfs, its own root, runroot, tmpdir and network config dir) and a
//! private containerd, each with a busybox-static image. Everything they
//! create lives in the test's scratch directory and the host's namespace;
//! drop removes the containers, unmounts what they left under the scratch
//! directory and deletes it.

#![allow(dead_code)] // each test binary uses its part

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plumb::Netns;

/// The image both runtimes import.
pub const IMAGE: &str = "localhost/weft-busybox:latest";

/// Output of a command, with its exit status.
#[derive(Debug)]
pub struct Out {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(self, what: &str) -> Result<String> {
        if !self.success {
            bail!("{what}: {}{}", self.stderr.trim(), self.stdout.trim());
        }
        Ok(self.stdout)
    }
}

/// Runs `program args` in `netns` with `env`, bounded by `timeout`.
pub fn run(
    netns: &Netns,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<Out> {
    run_with_stdin(netns, program, args, env, None, timeout)
}

/// The same, writing `stdin` to the program. The wait blocks in a helper
/// thread (no polling), so a benchmark measures the program, not a sleep.
pub fn run_with_stdin(
    netns: &Netns,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Out> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = netns
        .run(move || command.spawn())?
        .with_context(|| format!("start {program}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        // A program may exit without reading all of it.
        let _ = pipe.write_all(input);
    }
    let pid = child.id();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(timeout) {
        Ok(out) => {
            let out = out?;
            Ok(Out {
                success: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Err(_) => {
            // Our own child, by PID; the waiting thread then reaps it.
            // SAFETY: kill takes no pointers; pid is a child we started and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = outcome.recv_timeout(Duration::from_secs(5));
            bail!("{program} {} timed out after {timeout:?}", args.join(" "));
        }
    }
}

/// The `weft` binary's directory (CNI plugin dirs list it before /usr/lib/cni).
pub fn weft_dir() -> PathBuf {
    let bin = match std::env::var_os("WEFT_CNI_PLUGIN") {
        Some(path) => PathBuf::from(path),
        None => world::workspace_bin("weft"),
    };
    bin.parent().expect("a directory").to_path_buf()
}

/// A rootfs tarball of busybox-static: /bin/busybox and its applets.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copy /bin/busybox (apt-get install busybox-static)")?;
    for applet in [
        "sh", "nc", "cat", "echo", "sleep", "ip", "ifconfig", "hostname", "true", "wget", "ls",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .args([
            "-C",
            &root.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ])
        .output()?;
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(tar)
}

/// Unmounts every mount point under `dir` (deepest first): what a runtime
/// left behind in the test's own directory.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: c is a valid NUL-terminated path; MNT_DETACH on our own mount point.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Waits (bounded) until no process has `path` on its command line.
pub fn wait_for_processes_using(path: &Path, timeout: Duration) {
    let needle = path.display().to_string();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let busy = std::fs::read_dir("/proc")
            .map(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        && std::fs::read(e.path().join("cmdline"))
                            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                            .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP client in `netns`: sends `payload` to `to` and returns what comes
/// back before the server closes (busybox `nc -e /bin/cat` echoes it).
pub fn tcp_echo(netns: &Netns, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read;
    let payload = payload.to_vec();
    netns.run(move || -> Result<Vec<u8>> {
        let mut last = None;
        for _ in 0..20 {
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(mut s) => {
                    use std::io::Write;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.write_all(&payload)?;
                    let mut back = vec![0u8; payload.len()];
                    s.read_exact(&mut back)?;
                    return Ok(back);
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        bail!("connect to {to}: {:?}", last)
    })?
}

/// podman with its own everything, run inside a host namespace.
pub struct Podman {
    pub dir: PathBuf,
    pub netns: Netns,
    pub net_dir: PathBuf,
    conf: PathBuf,
    /// podman refuses a runroot longer than 50 bytes: a short one in /tmp,
    /// named by a hash of `dir`, removed on drop.
    runroot: PathBuf,
}

impl Podman {
    /// Writes containers.conf (CNI backend, runc, cgroupfs, weft's plugin dir
    /// first) and imports the busybox image.
    pub fn new(dir: &Path, netns: &Netns) -> Result<Podman> {
        Podman::with_backend(dir, netns, "cni")
    }

    /// The same with `network_backend` = `backend` ("cni" or "netavark").
    pub fn with_backend(dir: &Path, netns: &Netns, backend: &str) -> Result<Podman> {
        let net_dir = dir.join("net.d");
        std::fs::create_dir_all(&net_dir)?;
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "{backend}"
cni_plugin_dirs = ["{}", "/usr/lib/cni"]
network_config_dir = "{}"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{}"
"#,
                weft_dir().display(),
                net_dir.display(),
                dir.join("events.log").display(),
                backend = backend,
            ),
        )?;
        let runroot = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut h);
            std::env::temp_dir().join(format!("wpr-{:016x}", h.finish()))
        };
        std::fs::create_dir_all(&runroot)?;
        let podman = Podman {
            dir: dir.to_path_buf(),
            netns: netns.clone(),
            net_dir,
            conf,
            runroot,
        };
        let tar = busybox_rootfs(dir)?;
        podman
            .run(
                &["import", &tar.display().to_string(), IMAGE],
                Duration::from_secs(120),
            )?
            .ok("podman import")?;
        Ok(podman)
    }

    /// `podman <global flags> args`, in the host namespace.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<Out> {
        let d = |s: &str| self.dir.join(s).display().to_string();
        let mut full: Vec<String> = vec![
            "--root".into(),
            d("root"),
            "--runroot".into(),
            self.runroot.display().to_string(),
            "--tmpdir".into(),
            d("t"),
            "--storage-driver".into(),
            "vfs".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--runtime".into(),
            "runc".into(),
            "--network-config-dir".into(),
            self.net_dir.display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        run(
            &self.netns,
            "podman",
            &refs,
            &[
                ("CONTAINERS_CONF", self.conf.display().to_string()),
                (
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
            ],
            timeout,
        )
    }

    /// Writes a conflist into podman's network config dir.
    pub fn network(&self, name: &str, conflist: &serde_json::Value) -> Result<()> {
        std::fs::write(
            self.net_dir.join(format!("{name}.conflist")),
            serde_json::to_string_pretty(conflist)?,
        )?;
        Ok(())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(
            &["rm", "--all", "--force", "--time", "0"],
            Duration::from_secs(60),
        );
        // conmon runs `podman container cleanup` when a container exits, with
        // our --runroot: wait for those (ours, never killed) before removing it.
        wait_for_processes_using(&self.runroot, Duration::from_secs(15));
        unmount_under(&self.dir);
        unmount_under(&self.runroot);
        let _ = std::fs::remove_dir_all(&self.runroot);
    }
}

/// A private containerd (own root, state, socket) started in a host
/// namespace, and `ctr` run in a mount namespace of its own where
/// /etc/cni/net.d and /usr/lib/cni are the test's directories: ctr 1.6 reads
/// CNI configs only from /etc/cni/net.d, and this keeps the real one untouched.
pub struct Containerd {
    pub dir: PathBuf,
    pub netns: Netns,
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

impl Containerd {
    /// Writes the config, starts containerd through `spawn` (the world kills
    /// it by PID on drop) and waits for its socket.
    pub fn start(
        dir: &Path,
        netns: &Netns,
        spawn: impl FnOnce(Command) -> Result<u32>,
    ) -> Result<Containerd> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display()
            ),
        )?;
        let mut command = Command::new("containerd");
        command
            .args(["--config", &config.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log"))?);
        spawn(command)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not open {}: {}",
                    socket.display(),
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let conf_dir = dir.join("cni-conf");
        let bin_dir = dir.join("cni-bin");
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::create_dir_all(&bin_dir)?;
        // Inside ctr's mount namespace /usr/lib/cni is bin_dir: copies, not
        // symlinks into the directory it hides.
        for plugin in ["loopback", "portmap", "host-local"] {
            std::fs::copy(Path::new("/usr/lib/cni").join(plugin), bin_dir.join(plugin))?;
        }
        std::fs::copy(weft_dir().join("weft"), bin_dir.join("weft"))?;
        Ok(Containerd {
            dir: dir.to_path_buf(),
            netns: netns.clone(),
            socket,
            conf_dir,
            bin_dir,
        })
    }

    /// Writes the one conflist ctr will load.
    pub fn network(&self, conflist: &serde_json::Value) -> Result<()> {
        std::fs::write(
            self.conf_dir.join("10-weft.conflist"),
            serde_json::to_string_pretty(conflist)?,
        )?;
        Ok(())
    }

    /// `ctr --address … --namespace weft args` in the host namespace, with the
    /// test's CNI directories bound over the system's in a private mount namespace.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> Result<Out> {
        let mut script = format!(
            "mount --bind {} /etc/cni/net.d && mount --bind {} /usr/lib/cni && exec ctr --address {} --namespace weft",
            self.conf_dir.display(),
            self.bin_dir.display(),
            self.socket.display()
        );
        for a in args {
            script.push_str(" '");
            script.push_str(&a.replace('\'', "'\\''"));
            script.push('\'');
        }
        run(
            &self.netns,
            "unshare",
            &["--mount", "--propagation", "private", "sh", "-c", &script],
            &[(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            )],
            timeout,
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        unmount_under(&self.dir);
        // runc's state directory for this test's containerd namespace, empty
        // once the containers are gone (remove_dir refuses a non-empty one).
        let _ = std::fs::remove_dir("/run/containerd/runc/weft");
    }
}
