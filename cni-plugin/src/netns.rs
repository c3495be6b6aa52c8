//! CNI_NETNS: the container's network namespace, and never the host's.
//!
//! `CNI_NETNS=/proc/self/ns/net` (or PID 1's namespace, or a mount or user
//! namespace handle, or a plain file) would otherwise have the plugin wire
//! the host itself as a container: an `eth0`, a second route to the subnet
//! and a new default route in the host namespace. The handle is checked with
//! [`plumb::Netns::kind_check`] (nsfs, `NS_GET_NSTYPE`, (st_dev, st_ino)
//! against the plugin's own and PID 1's namespace) before anything is done.
//!
//! Every refusal is code 4 (invalid environment variable) naming CNI_NETNS:
//! the spec gives 4 to a necessary variable with an invalid value, and the
//! variable — not the network config — is what is wrong.

use std::path::{Path, PathBuf};

use plumb::netns::NetnsCheckError;
use plumb::Netns;

use crate::error::{CniError, PluginError};

/// The namespace the plugin runs in (the runtime's), by path:
/// `Netns::current` would also look for its name among every entry of
/// /run/netns (one stat each), which on a host with hundreds of containers
/// costs more than the whole ADD.
pub const OWN_NETNS: &str = "/proc/self/ns/net";

/// Checks CNI_NETNS for ADD and CHECK: Ok with the path when it is a network
/// namespace other than the plugin's own and the initial one.
pub fn container_netns(path: &Path) -> Result<PathBuf, CniError> {
    let identity = Netns::kind_check(path).map_err(|source| match source {
        NetnsCheckError::NotFound { .. } => PluginError::MissingNetns {
            path: path.to_path_buf(),
        },
        source => PluginError::NotNetns {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let whose = if identity.is_callers {
        "the plugin's own network namespace (the runtime's, usually the host's)"
    } else if identity.is_initial == Some(true) {
        "the initial network namespace (PID 1's: the host's)"
    } else {
        return Ok(path.to_path_buf());
    };
    Err(PluginError::HostNetns {
        path: path.to_path_buf(),
        whose,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &str, words: &[&str]) {
        let e = container_netns(Path::new(path)).unwrap_err();
        assert_eq!(e.code.number(), 4, "{path}: {e}");
        let text = e.to_string();
        for w in words {
            assert!(text.contains(w), "{path}: {text} does not say {w:?}");
        }
    }

    #[test]
    fn the_host_and_handles_that_are_no_network_namespace_are_code_4() {
        refused(
            "/proc/self/ns/net",
            &["CNI_NETNS", "/proc/self/ns/net", "own"],
        );
        refused(
            &format!("/proc/{}/ns/net", std::process::id()),
            &["CNI_NETNS", "own"],
        );
        // PID 1's handle is readable by root; where it is, it is refused as
        // the initial namespace (or as our own, when we run in it).
        if Netns::kind_check("/proc/1/ns/net").is_ok() {
            refused("/proc/1/ns/net", &["CNI_NETNS", "/proc/1/ns/net", "host"]);
        }
        refused("/proc/self/ns/mnt", &["CNI_NETNS", "mount namespace"]);
        refused("/proc/self/ns/user", &["CNI_NETNS", "user namespace"]);
        refused("/proc/self/status", &["CNI_NETNS", "regular file"]);
        refused(
            "/run/netns/weft-no-such-namespace",
            &["CNI_NETNS", "does not exist"],
        );
    }
}
