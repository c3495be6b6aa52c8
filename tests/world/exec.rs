//! Running commands inside a namespace, bounded in time.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use plumb::Netns;

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct CommandOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` inside `netns`, killing it after `timeout`.
pub fn run_in(
    netns: &Netns,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<CommandOutput> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The child inherits the namespace of the thread that forks it.
    let child = netns
        .run(move || command.spawn())?
        .with_context(|| format!("start {program} in namespace {}", netns.label()))?;
    wait_bounded(child, timeout).with_context(|| format!("{program} {}", args.join(" ")))
}

fn wait_bounded(child: std::process::Child, timeout: Duration) -> Result<CommandOutput> {
    let pid = child.id();
    let (done, outcome) = std::sync::mpsc::channel();
    // Reading both pipes while waiting: a child printing more than a pipe
    // holds (64 KiB) would otherwise block forever.
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(timeout) {
        Ok(out) => {
            let out = out?;
            Ok(CommandOutput {
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
            bail!("timed out after {timeout:?}");
        }
    }
}

/// `ip -j ARGS` inside `netns`, parsed: the kernel's view, independent of plumb.
pub fn ip_json(netns: &Netns, args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = run_in(netns, "ip", &full, Duration::from_secs(10))?;
    if !out.success {
        bail!("ip {}: {}", args.join(" "), out.stderr.trim());
    }
    if out.stdout.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    Ok(serde_json::from_str(&out.stdout)?)
}

/// A binary of this workspace (`plumb`, `netd`, `weft`) next to the running
/// test executable: target/<profile>/deps/<test> → target/<profile>/<name>.
/// `cargo test` at the workspace root builds them; a lone `cargo test --test X`
/// may not, hence the message.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build, or scripts/test)",
        path.display()
    );
    path
}
