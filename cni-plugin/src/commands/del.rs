//! DEL: best effort and idempotent. Works without CNI_NETNS, with a namespace
//! that is already gone (or that is no container's: the host's is ignored,
//! not entered) and without `prevResult`, and always releases the address.

use super::{combine, Invocation};
use crate::backend::{Backend, DetachRequest};
use crate::error::CniError;
use crate::version::result_from_json;

pub fn run(inv: &Invocation, backend: &dyn Backend) -> Result<(), CniError> {
    let conf = &inv.conf;
    // A namespace that vanished (the container died first) is "already
    // gone"; one that is the host's is never handed on (None as well).
    let netns = inv.netns.clone();
    // A prevResult that does not parse was refused by NetConf::parse already.
    let prev_result = conf
        .prev_result
        .as_ref()
        .and_then(|v| result_from_json(v).ok());
    let mut errors = Vec::new();
    let request = DetachRequest {
        container_id: &inv.env.container_id,
        netns,
        ifname: &inv.env.ifname,
        network: conf,
        prev_result,
    };
    if let Err(e) = backend.del(&request) {
        errors.push(e.context("DEL"));
    }
    match inv.ipam_delegate() {
        Ok(Some(ipam)) => {
            if let Err(e) = ipam.del() {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.context("DEL: release the address")),
    }
    combine(errors)
}
