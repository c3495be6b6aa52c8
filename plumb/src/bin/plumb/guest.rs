//! Finding the guest's namespace from a user's word.

use std::process::Command;

use plumb::error::{Error, Result};
use plumb::netns::Netns;

/// A namespace name, path or PID; failing that, a podman or docker container.
pub fn resolve(spec: &str) -> Result<Netns> {
    match Netns::resolve(spec) {
        Ok(ns) => Ok(ns),
        Err(Error::NamespaceNotFound(_)) => {
            for runtime in ["podman", "docker"] {
                if let Some(pid) = container_pid(runtime, spec) {
                    let mut ns = Netns::pid(pid)?;
                    ns.set_label(format!("{spec} ({runtime} container)"));
                    return Ok(ns);
                }
            }
            Err(Error::invalid(
                "guest",
                spec,
                "is not a namespace in /run/netns, a namespace path, a PID, or a running podman/docker container",
            ))
        }
        Err(e) => Err(e),
    }
}

/// The PID of a running container, asking the runtime when it is installed.
fn container_pid(runtime: &str, name: &str) -> Option<u32> {
    let out = Command::new(runtime)
        .args(["inspect", "--format", "{{.State.Pid}}", name])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}
