//! ADD: validate, allocate (delegated IPAM or netd's), attach; on failure after
//! a delegated allocation, release it before returning the error.

use serde_json::Value;

use super::Invocation;
use crate::backend::{Addressing, AttachRequest, Backend};
use crate::error::CniError;
use crate::version::{result_from_json, result_to_json};

pub fn run(inv: &Invocation, backend: &dyn Backend) -> Result<Value, CniError> {
    let conf = &inv.conf;
    // Everything that can be refused is refused before anything is touched.
    backend.validate(conf)?;
    tracing::debug!("ADD validated");
    let netns = inv.netns.clone().expect("checked for ADD");
    let prev = conf
        .prev_result
        .as_ref()
        .map(result_from_json)
        .transpose()
        .map_err(|e| e.context("prevResult"))?;
    let delegate = inv.ipam_delegate()?;
    let addressing = match &delegate {
        Some(ipam) => Addressing::Delegated(ipam.add()?),
        None => Addressing::Builtin {
            requested: conf.requested_ips(inv.env.arg("IP")),
        },
    };
    let request = AttachRequest {
        container_id: &inv.env.container_id,
        netns,
        ifname: &inv.env.ifname,
        network: conf,
        addressing,
        pod_name: inv.env.arg("K8S_POD_NAME"),
    };
    let ours = match backend.add(&request) {
        Ok(result) => result,
        Err(mut e) => {
            if let Some(ipam) = &delegate {
                if let Err(release) = ipam.del() {
                    e.details = format!(
                        "{}{}releasing the address again also failed: {release}",
                        e.details,
                        if e.details.is_empty() { "" } else { "; " }
                    );
                }
            }
            return Err(e.context("ADD"));
        }
    };
    let result = match prev {
        Some(prev) => prev.chain(ours),
        None => ours,
    };
    Ok(result_to_json(&result, conf.version()))
}
