//! Per-namespace sysctls under /proc/sys/net, read and written from a thread
//! inside the namespace (procfs resolves net sysctls by the caller's namespace).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// Turns `net.ipv4.ip_forward` or `net/ipv4/conf/eth1.10/forwarding` into a
/// path under /proc/sys. Use the slash form when a part (an interface name
/// with a VLAN suffix) contains dots.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(Error::invalid(
            "sysctl",
            key,
            "expected e.g. net.ipv4.ip_forward",
        ));
    }
    let relative = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    if !relative.starts_with("net/") {
        return Err(Error::invalid(
            "sysctl",
            key,
            "only per-namespace net.* keys can be set here",
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(relative))
}

/// Sets a net sysctl inside `netns`.
pub fn write(netns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    netns.run(|| std::fs::write(&path, value))?.map_err(|e| {
        Error::io(
            format!("set {key}={value} in namespace {}", netns.label()),
            e,
        )
    })
}

/// Reads a net sysctl inside `netns`, trimmed.
pub fn read(netns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    netns
        .run(|| std::fs::read_to_string(&path))?
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("read {key} in namespace {}", netns.label()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv6/conf/eth1.10/disable_ipv6").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/eth1.10/disable_ipv6")
        );
        assert!(sysctl_path("kernel.hostname").is_err());
        assert!(sysctl_path("net/../../etc").is_err());
    }

    #[test]
    fn reads_in_the_current_namespace() {
        let ns = Netns::current().unwrap();
        let v = read(&ns, "net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
