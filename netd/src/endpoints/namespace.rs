//! The namespace an attach names, opened and checked: a network namespace
//! that is not the host's. Wiring the host's own namespace as a container
//! gives it an `eth0`, a second route to the subnet and a new default route.

use plumb::netns::NetnsCheckError;
use plumb::Netns;

use super::Endpoints;
use crate::error::{Error, Result};

/// The longest namespace path the kernel opens (PATH_MAX less its NUL).
const MAX_SPEC_LEN: usize = 4095;

impl Endpoints {
    /// Opens `spec` (a path, a name in /run/netns, or a PID) and refuses
    /// what is no container's namespace (InvalidInput).
    pub(super) fn container_netns_of(&self, spec: &str) -> Result<Netns> {
        // What no path or name can be: refused as such, not as a kernel error.
        if spec.is_empty() || spec.len() > MAX_SPEC_LEN || spec.contains('\0') {
            let shown: String = spec.chars().take(64).collect();
            return Err(Error::InvalidInput(format!(
                "attach: namespace {shown:?} is not valid: give a path, a name in /run/netns or a PID, 1–{MAX_SPEC_LEN} bytes, no NUL"
            )));
        }
        // A path is looked at before it is opened: a FIFO or a device must
        // never be (the open could block or act).
        if spec.starts_with('/') {
            match Netns::kind_check(spec) {
                Ok(_) | Err(NetnsCheckError::NotFound { .. }) => {}
                Err(e) => {
                    return Err(Error::InvalidInput(format!(
                        "attach: {e}; give the container's network namespace"
                    )))
                }
            }
        }
        let netns = Netns::resolve(spec).map_err(|e| match e {
            plumb::Error::NamespaceNotFound(_) => Error::NotFound(format!(
                "attach: namespace {} not found — is the container still running?",
                spec
            )),
            other => Error::kernel(format!("attach: open namespace {}", spec), other),
        })?;
        self.refuse_host_namespace(spec, &netns)?;
        Ok(netns)
    }

    /// A handle on something other than a network namespace, on the
    /// namespace netd manages (the host's), on netd's own or on the initial
    /// one is no container's: wiring it would give the host an `eth0`, a
    /// second route to the subnet and a new default route.
    fn refuse_host_namespace(&self, asked: &str, netns: &Netns) -> Result<()> {
        let refuse = |why: String| {
            Error::InvalidInput(format!(
                "attach: namespace {asked} {why}; give the container's network namespace (/proc/PID/ns/net of a process in it, or /run/netns/NAME)"
            ))
        };
        let identity = netns
            .kind_check_open()
            .map_err(|e| refuse(format!("is refused: {e}")))?;
        let managed = self.host.netns().kind_check_open().ok();
        let whose = if managed.is_some_and(|m| (m.dev, m.ino) == (identity.dev, identity.ino)) {
            "is the host namespace netd manages"
        } else if identity.is_callers {
            "is netd's own network namespace"
        } else if identity.is_initial == Some(true) {
            "is the initial network namespace (the host's)"
        } else {
            return Ok(());
        };
        Err(refuse(whose.to_string()))
    }
}
