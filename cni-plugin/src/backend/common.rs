//! What the standalone and daemon backends share: after netd's attach, the
//! delegated IPAM's gateways and routes and the CNI result; CHECK's
//! comparisons; and the way back from netd's endpoint ids to attachments.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

use crate::backend::{Addressing, AttachRequest, CheckRequest};
use crate::error::{CniError, ErrorCode};
use crate::host;
use crate::result::CniResult;
use crate::types::Attachment;
use crate::wiring;

/// The single-threaded async runtime a backend runs netd's calls on (one
/// plugin call is one short sequence of them).
pub fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal("cannot start the async runtime", e.to_string()))
}

/// STATUS's answer for an error that keeps ADD from succeeding: code 50,
/// same message.
pub fn unavailable(e: CniError) -> CniError {
    CniError::new(ErrorCode::Unavailable, e.msg, e.details)
}

/// The IPv4 network of a delegated IPAM's first IPv4 address.
pub fn delegated_network(addressing: &Addressing) -> Option<IpNetwork> {
    let Addressing::Delegated(ipam) = addressing else {
        return None;
    };
    ipam.ips
        .iter()
        .map(|ip| ip.address)
        .find(IpNetwork::is_ipv4)
        .map(|a| IpNetwork::new(a.network(), a.prefix()).expect("prefix of an address"))
}

/// The CNI attachment an endpoint id stands for (readable ids only; hashed
/// ones cannot be turned back).
pub fn attachment_of(prefix: &str, ep: &netd::Endpoint) -> Option<Attachment> {
    let rest = ep.id.strip_prefix(prefix)?;
    let container = rest.strip_suffix(&format!(".{}", ep.ifname))?;
    Some(Attachment {
        container_id: container.to_string(),
        ifname: ep.ifname.clone(),
    })
}

/// After netd's attach: the delegated IPAM's gateways and routes, then the
/// result. `undo` detaches again when a step fails.
pub async fn finish_add<F, Fut>(
    nl: &plumb::Netlink,
    request: &AttachRequest<'_>,
    attached: &netd::AttachResult,
    undo: F,
) -> Result<CniResult, CniError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let conf = request.network;
    let ipam = match &request.addressing {
        Addressing::Delegated(ipam) => Some(ipam),
        Addressing::Builtin { .. } => None,
    };
    let extra = async {
        if let Some(ipam) = ipam {
            if conf.is_gateway || conf.is_default_gateway {
                host::ensure_bridge_gateways(nl, conf.bridge_name(), ipam).await?;
            }
            host::add_routes(
                &request.netns,
                request.ifname,
                ipam,
                &wiring::extra_routes(ipam),
            )
            .await?;
        }
        Ok::<(), CniError>(())
    };
    if let Err(e) = extra.await {
        undo().await;
        return Err(e);
    }
    let side = host::host_side(nl, conf.bridge_name(), &attached.interfaces[0].name).await;
    Ok(wiring::cni_result(
        conf,
        &wiring::Attached {
            bridge: conf.bridge_name(),
            bridge_mac: side.bridge_mac,
            host_mac: side.veth_mac,
            netd: attached,
            container_mtu: side.veth_mtu,
            ipam,
        },
    ))
}

/// CHECK's comparisons shared by both backends: the addresses recorded are
/// those of the ADD's result, and everything the result lists is in the kernel.
pub async fn check_common(
    request: &CheckRequest<'_>,
    recorded: &netd::AttachResult,
) -> Result<(), CniError> {
    let prev = &request.prev_result;
    let sandbox = request.netns.display().to_string();
    let index = prev
        .container_interface(request.ifname, &sandbox)
        .expect("checked by the CHECK command");
    let recorded_ips: BTreeSet<IpNetwork> = recorded.ips.iter().map(|i| i.address).collect();
    for ip in prev.ips.iter().filter(|ip| ip.interface == Some(index)) {
        if !recorded_ips.contains(&ip.address) {
            return Err(CniError::internal(
                format!(
                    "address {} of the ADD's result is not this attachment's",
                    ip.address
                ),
                format!("weft recorded {recorded_ips:?}"),
            ));
        }
    }
    host::check_container(&request.netns, request.ifname, prev, index).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_ids_turn_back_into_attachments() {
        let prefix = wiring::id_prefix("n");
        let id = wiring::endpoint_id("n", "abc", "eth1");
        let ep = netd::Endpoint {
            id,
            name: String::new(),
            netns: "/x".into(),
            netns_inode: 0,
            ifname: "eth1".into(),
            host_ifname: String::new(),
            mac: None,
            mtu: None,
            ips: vec![],
            gateways: vec![],
            ports: vec![],
            dns_names: vec![],
            phase: netd::Phase::Attached,
        };
        assert_eq!(
            attachment_of(&prefix, &ep),
            Some(Attachment {
                container_id: "abc".into(),
                ifname: "eth1".into()
            })
        );
    }
}
