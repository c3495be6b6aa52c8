//! CHECK: compare the kernel and the reservations with the ADD's result.

use super::Invocation;
use crate::backend::{Backend, CheckRequest};
use crate::error::CniError;
use crate::version::result_from_json;

pub fn run(inv: &Invocation, backend: &dyn Backend) -> Result<(), CniError> {
    let conf = &inv.conf;
    backend.validate(conf)?;
    let netns = inv.netns.clone().expect("checked for CHECK");
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::invalid_config(
            "CHECK needs prevResult",
            "the runtime must pass the result of the ADD (SPEC.md, CHECK)",
        ));
    };
    let prev_result = result_from_json(prev).map_err(|e| e.context("prevResult"))?;
    let sandbox = netns.display().to_string();
    if prev_result
        .container_interface(&inv.env.ifname, &sandbox)
        .is_none()
    {
        return Err(CniError::invalid_config(
            format!(
                "prevResult lists no interface {} in {sandbox}",
                inv.env.ifname
            ),
            "CHECK must be called with the CNI_IFNAME, CNI_NETNS and result of the ADD",
        ));
    }
    if let Some(ipam) = inv.ipam_delegate()? {
        ipam.check()?;
    }
    backend.check(&CheckRequest {
        container_id: &inv.env.container_id,
        netns,
        ifname: &inv.env.ifname,
        network: conf,
        prev_result,
    })
}
