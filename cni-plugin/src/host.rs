//! What the plugin does to the kernel itself, beside netd: the overlap check
//! of a network's subnets against the host's addresses, the gateway address
//! of a delegated subnet on the bridge, the routes a delegated IPAM asks for,
//! and reading back what CHECK compares. All in the namespace the plugin runs
//! in (the runtime's) or the container's.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use plumb::{Netlink, Netns};

use crate::error::CniError;
use crate::result::{CniResult, Route};

fn kernel(doing: &str, e: plumb::Error) -> CniError {
    CniError::internal(doing.to_string(), e.to_string())
}

/// The namespace the plugin runs in (the runtime's), by path:
/// `Netns::current` would also look for its name among every entry of
/// /run/netns (one stat each), which on a host with hundreds of containers
/// costs more than the whole ADD.
pub const OWN_NETNS: &str = "/proc/self/ns/net";

pub async fn own_netlink() -> Result<Netlink, CniError> {
    let ns = Netns::path(OWN_NETNS).map_err(|e| kernel("open the runtime's namespace", e))?;
    Netlink::open(&ns)
        .await
        .map_err(|e| kernel("open netlink in the runtime's namespace", e))
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Code 7 when one of `subnets` overlaps an address of this host outside the
/// bridge `bridge` (it would hijack the host's own traffic); the message
/// names both.
pub async fn check_overlap(
    nl: &Netlink,
    subnets: &[IpNetwork],
    bridge: &str,
) -> Result<(), CniError> {
    let links = nl.links().await.map_err(|e| kernel("list links", e))?;
    let addrs = nl
        .addresses(None)
        .await
        .map_err(|e| kernel("list addresses", e))?;
    for addr in &addrs {
        let Some(link) = links.iter().find(|l| l.index == addr.link) else {
            continue;
        };
        if link.name == bridge || addr.network.ip().is_loopback() || addr.network.prefix() == 0 {
            continue;
        }
        if addr.network.ip().is_ipv6() && addr.network.ip().to_string().starts_with("fe80") {
            continue;
        }
        let host_net = IpNetwork::new(addr.network.network(), addr.network.prefix())
            .expect("a prefix from the kernel");
        if let Some(subnet) = subnets.iter().find(|s| overlaps(s, &host_net)) {
            return Err(CniError::invalid_config(
                format!(
                    "subnet {subnet} overlaps {} on {} of this host",
                    addr.network, link.name
                ),
                "containers on it would shadow the host's own network; pick a subnet no host interface uses",
            ));
        }
    }
    Ok(())
}

/// Puts each gateway of a delegated IPAM result on the bridge (with the
/// prefix of its address), as the reference bridge plugin's `isGateway` does.
pub async fn ensure_bridge_gateways(
    nl: &Netlink,
    bridge: &str,
    ipam: &CniResult,
) -> Result<(), CniError> {
    let present = nl
        .link_addresses(bridge)
        .await
        .map_err(|e| kernel(&format!("list the addresses of {bridge}"), e))?;
    for ip in &ipam.ips {
        let Some(gw) = ip.gateway else { continue };
        let net = IpNetwork::new(gw, ip.address.prefix()).expect("prefix of an address");
        if present.iter().any(|p| p.ip() == gw) {
            continue;
        }
        match nl.add_address(bridge, net, true).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(kernel(&format!("add gateway {net} to {bridge}"), e)),
        }
    }
    Ok(())
}

/// What the ADD result reports of the host side, from one link dump: the
/// bridge's MAC, the host end's MAC, and the host end's MTU (the container
/// end was created with it, as a pair).
pub struct HostSide {
    pub bridge_mac: Option<String>,
    pub veth_mac: Option<String>,
    pub veth_mtu: Option<u32>,
}

pub async fn host_side(nl: &Netlink, bridge: &str, veth: &str) -> HostSide {
    let links = nl.links().await.unwrap_or_default();
    let find = |name: &str| links.iter().find(|l| l.name == name);
    HostSide {
        bridge_mac: find(bridge).and_then(|l| l.mac).map(|m| m.to_string()),
        veth_mac: find(veth).and_then(|l| l.mac).map(|m| m.to_string()),
        veth_mtu: find(veth).map(|l| l.mtu),
    }
}

/// Opens netlink in the container's namespace.
async fn container_netlink(netns: &Path) -> Result<Netlink, CniError> {
    let ns = Netns::path(netns)
        .map_err(|e| kernel(&format!("open namespace {}", netns.display()), e))?;
    Netlink::open(&ns)
        .await
        .map_err(|e| kernel(&format!("open netlink in {}", netns.display()), e))
}

fn plumb_route(route: &Route, ifname: &str, fallback_gw: Option<IpAddr>) -> plumb::Route {
    plumb::Route {
        destination: Some(route.dst),
        gateway: route.gw.or(fallback_gw),
        dev: Some(ifname.to_string()),
        metric: route.priority,
        table: route.table,
        ipv6: route.dst.is_ipv6(),
        ..Default::default()
    }
}

/// The gateway of the result's address in `route`'s family.
fn family_gateway(ipam: &CniResult, route: &Route) -> Option<IpAddr> {
    ipam.ips
        .iter()
        .filter(|ip| ip.address.is_ipv6() == route.dst.is_ipv6())
        .find_map(|ip| ip.gateway)
}

/// Adds the non-default routes of a delegated IPAM result in the container.
pub async fn add_routes(
    netns: &Path,
    ifname: &str,
    ipam: &CniResult,
    routes: &[Route],
) -> Result<(), CniError> {
    if routes.is_empty() {
        return Ok(());
    }
    let nl = container_netlink(netns).await?;
    for route in routes {
        let r = plumb_route(route, ifname, family_gateway(ipam, route));
        match nl.add_route(&r).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                return Err(kernel(
                    &format!("add route {} in the container", route.dst),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// CHECK: the container interface holds every address of `expected`, and
/// every non-default route of `expected` is in place.
pub async fn check_container(
    netns: &Path,
    ifname: &str,
    expected: &CniResult,
    container_index: usize,
) -> Result<(), CniError> {
    let nl = container_netlink(netns).await?;
    let link = nl
        .link(ifname)
        .await
        .map_err(|e| kernel(&format!("read {ifname}"), e))?
        .ok_or_else(|| {
            CniError::internal(
                format!("{ifname} is missing in {}", netns.display()),
                "run DEL and ADD again to re-create it",
            )
        })?;
    let addrs = nl
        .addresses(Some(link.index))
        .await
        .map_err(|e| kernel(&format!("list the addresses of {ifname}"), e))?;
    for ip in expected
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(container_index))
    {
        if !addrs.iter().any(|a| a.network == ip.address) {
            return Err(CniError::internal(
                format!("address {} is missing on {ifname}", ip.address),
                "run DEL and ADD again to restore it",
            ));
        }
    }
    for v6 in [false, true] {
        let wanted: Vec<&Route> = expected
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv6() == v6)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let routes = nl
            .routes(v6, true)
            .await
            .map_err(|e| kernel("list routes in the container", e))?;
        for r in wanted {
            let found = routes.iter().any(|k| {
                let dst_matches = match k.destination {
                    None => r.dst.prefix() == 0,
                    Some(d) => d == r.dst,
                };
                dst_matches && (r.gw.is_none() || k.gateway == r.gw)
            });
            if !found {
                return Err(CniError::internal(
                    format!(
                        "route to {}{} is missing in the container",
                        r.dst,
                        r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
                    ),
                    "run DEL and ADD again to restore it",
                ));
            }
        }
    }
    Ok(())
}
