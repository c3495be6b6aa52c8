//! What the standalone and daemon backends share: the CNI result of netd's
//! attach; what CHECK compares itself and what it asks netd to find in the
//! container; the overlap check of a network's subnets (netd's); and the way
//! back from netd's endpoint ids to attachments.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

use crate::backend::{Addressing, AttachRequest, CheckRequest};
use crate::error::{netd_error, CniError, ErrorCode};
use crate::netns::OWN_NETNS;
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

/// The CNI result of netd's attach: netd did all the work, including the
/// delegated IPAM's routes and gateways, and reports the MACs and the MTU.
pub fn add_result(request: &AttachRequest<'_>, attached: &netd::AttachResult) -> CniResult {
    let conf = request.network;
    let ipam = match &request.addressing {
        Addressing::Delegated(ipam) => Some(ipam),
        Addressing::Builtin { .. } => None,
    };
    wiring::cni_result(
        conf,
        &wiring::Attached {
            bridge: conf.bridge_name(),
            netd: attached,
            ipam,
        },
    )
}

/// CHECK's part that needs no kernel: the addresses of the ADD's result are
/// the ones netd recorded for this attachment. Returns what netd's check
/// must then find in the container: the result's addresses on the
/// interface and its routes.
pub fn expected_by_check(
    request: &CheckRequest<'_>,
    recorded: &netd::AttachResult,
) -> Result<netd::CheckExpected, CniError> {
    let prev = &request.prev_result;
    let sandbox = request.netns.display().to_string();
    let index = prev
        .container_interface(request.ifname, &sandbox)
        .expect("checked by the CHECK command");
    let recorded_ips: BTreeSet<IpNetwork> = recorded.ips.iter().map(|i| i.address).collect();
    let ips: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| ip.address)
        .collect();
    if let Some(ip) = ips.iter().find(|ip| !recorded_ips.contains(ip)) {
        return Err(CniError::internal(
            format!("address {ip} of the ADD's result is not this attachment's"),
            format!("weft recorded {recorded_ips:?}"),
        ));
    }
    Ok(netd::CheckExpected {
        ips,
        routes: prev
            .routes
            .iter()
            .map(|r| netd::ContainerRoute {
                dst: r.dst,
                gw: r.gw,
                metric: None,
                table: r.table,
            })
            .collect(),
    })
}

/// Code 7 when one of `subnets` overlaps an address of this host (the
/// runtime's namespace) outside `bridge`: containers on it would hijack the
/// host's own traffic. netd looks at the kernel; the message names both.
pub async fn refuse_overlap(subnets: &[IpNetwork], bridge: &str) -> Result<(), CniError> {
    let netns = plumb::Netns::path(OWN_NETNS)
        .map_err(|e| CniError::internal("open the runtime's network namespace", e.to_string()))?;
    let found = netd::overlap::find(&netns, subnets, bridge)
        .await
        .map_err(|e| netd_error(e).context("look for subnets the host uses"))?;
    match found {
        None => Ok(()),
        Some(o) => Err(CniError::invalid_config(
            format!(
                "subnet {} overlaps {} on {} of this host",
                o.subnet, o.address, o.link
            ),
            "containers on it would shadow the host's own network; pick a subnet no host interface uses",
        )),
    }
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
            routes: vec![],
            bridge_addresses: vec![],
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
