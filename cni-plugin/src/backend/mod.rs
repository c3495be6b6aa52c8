//! The boundary between the CNI protocol and the host network model (netd).
//!
//! The CNI commands (the `commands` module) speak CNI; everything that
//! touches the kernel or IPAM state sits behind [`Backend`], so the protocol
//! is testable with a recording fake and the real work lives in netd once,
//! not here: netd (its library in `standalone`, its API in `daemon`) makes
//! every change to links, addresses and routes, a delegated IPAM's routes
//! and gateways included, and every look at them (CHECK, the overlap of a
//! subnet with the host's addresses). The two backends share what they
//! have in common through [`common`], not through each other.

use std::path::PathBuf;

pub mod common;

use crate::error::CniError;
use crate::result::CniResult;
use crate::types::{Attachment, NetConf};

/// Where a new attachment's addresses come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Addressing {
    /// The backend allocates from the network's own IPAM (netd's store).
    Builtin {
        /// Static addresses the runtime asked for (`ips` capability, `args.cni.ips`, `IP=`).
        requested: Vec<String>,
    },
    /// A delegated IPAM plugin already allocated these; netd applies them
    /// (addresses, default routes via the gateways, the other routes) to the
    /// container interface, and the gateways to the bridge when it is theirs.
    Delegated(CniResult),
}

/// ADD: wire `ifname` in `netns` for `container_id` on `network`.
#[derive(Clone, Debug)]
pub struct AttachRequest<'a> {
    pub container_id: &'a str,
    pub netns: PathBuf,
    pub ifname: &'a str,
    pub network: &'a NetConf,
    pub addressing: Addressing,
    /// The container's name from CNI_ARGS `K8S_POD_NAME` (podman puts its
    /// container name there): a DNS name of the container when valid.
    pub pod_name: Option<&'a str>,
}

/// DEL: undo an attachment, best effort. `netns` may be unset or gone.
#[derive(Clone, Debug)]
pub struct DetachRequest<'a> {
    pub container_id: &'a str,
    pub netns: Option<PathBuf>,
    pub ifname: &'a str,
    pub network: &'a NetConf,
    /// What ADD returned, when the runtime passed it.
    pub prev_result: Option<CniResult>,
}

/// CHECK: is everything ADD set up still there?
#[derive(Clone, Debug)]
pub struct CheckRequest<'a> {
    pub container_id: &'a str,
    pub netns: PathBuf,
    pub ifname: &'a str,
    pub network: &'a NetConf,
    /// The result of the ADD, which CHECK compares against.
    pub prev_result: CniResult,
}

/// What netd does for the CNI plugin. Errors carry their CNI code: code 2 for
/// an option this backend cannot honour, 3 for an unknown container, 7 for a
/// bad config, 11 for a transient condition, 50/51 from `status`, 100+ else.
pub trait Backend {
    /// Refuses options the backend cannot honour, before anything is touched.
    fn validate(&self, network: &NetConf) -> Result<(), CniError>;
    /// Creates the interface and returns what was created. On error, nothing
    /// this call created may remain.
    fn add(&self, request: &AttachRequest) -> Result<CniResult, CniError>;
    /// Removes the interface, rules and (built-in) reservations; succeeds when
    /// they are already gone.
    fn del(&self, request: &DetachRequest) -> Result<(), CniError>;
    fn check(&self, request: &CheckRequest) -> Result<(), CniError>;
    /// Removes everything of `network` not belonging to one of `valid`,
    /// carrying on past errors and reporting them all. Returns the stale
    /// attachments it removed, so a delegated IPAM plugin that predates GC
    /// can be told to release their addresses one by one.
    fn gc(&self, network: &NetConf, valid: &[Attachment]) -> Result<Vec<Attachment>, CniError>;
    /// Ok when ADD could succeed now; else code 50 or 51.
    fn status(&self, network: &NetConf) -> Result<(), CniError>;
}

/// netd is the one writer to the kernel of a host network: the plugin has
/// no netlink crate of its own and opens no plumb netlink connection.
#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The kernel interface the plugin must not use, written in two halves
    /// so that this file does not match itself.
    const KERNEL_SOCKET: &str = concat!("net", "link");

    #[test]
    fn the_plugin_depends_on_no_crate_for_the_kernel_socket() {
        let manifest =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .unwrap();
        let mut section = "";
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            assert!(
                section != "[dependencies]" || !name.to_ascii_lowercase().contains(KERNEL_SOCKET),
                "cni-plugin depends on {name}: kernel work belongs in netd"
            );
        }
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn the_plugin_opens_no_kernel_socket_itself() {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 10, "found only {files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                assert!(
                    !code.to_ascii_lowercase().contains(KERNEL_SOCKET),
                    "{}:{}: {line}: ask netd (library or API) instead",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
