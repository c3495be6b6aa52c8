//! What the kernel holds now, read once before planning: the host
//! namespace's links and addresses, and for each guest namespace its links,
//! addresses and routes. Planning works on this snapshot alone, so it is
//! tested without a kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Maker, Topology, NAMESPACE_MARK_PREFIX};
use crate::error::{Error, Result};
use crate::link::Link;
use crate::netns::Netns;
use crate::route::Route;
use crate::wire::ALIAS_PREFIX;
use crate::Netlink;

/// The kernel's view, as planning needs it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The namespace plumb runs in: bridges and host links.
    pub host: NamespaceState,
    /// Guest namespaces that exist, by name: those the file names, and with
    /// `--prune` those elsewhere in /run/netns that carry this topology's mark.
    pub namespaces: BTreeMap<String, NamespaceState>,
}

/// One namespace's links, addresses and main-table routes.
#[derive(Debug, Clone, Default)]
pub struct NamespaceState {
    /// Its links.
    pub links: Vec<Link>,
    /// Addresses by link index, link-local ones left out.
    pub addresses: Vec<(u32, IpNetwork)>,
    /// Its routes in the main table.
    pub routes: Vec<ObservedRoute>,
}

/// A route and whether plumb could have made it (protocol static), as
/// opposed to the kernel's own prefix routes or a DHCP client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRoute {
    /// The route.
    pub route: Route,
    /// True for protocol static (made by a tool such as plumb, not the kernel).
    pub is_static: bool,
}

impl NamespaceState {
    /// The link of this name, if the namespace has one.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The addresses on `link` (link-local ones left out).
    pub fn addresses_of(&self, link: &Link) -> Vec<IpNetwork> {
        self.addresses
            .iter()
            .filter(|(i, _)| *i == link.index)
            .map(|(_, a)| *a)
            .collect()
    }

    /// Who made this namespace: the mark on its `lo`.
    pub fn maker(&self) -> Maker {
        namespace_maker(&self.links)
    }
}

/// Who made the namespace holding `links`, read from the mark on its `lo`.
pub fn namespace_maker(links: &[Link]) -> Maker {
    links
        .iter()
        .find(|l| l.name == "lo")
        .and_then(|lo| lo.alias.as_deref())
        .and_then(|alias| alias.strip_prefix(NAMESPACE_MARK_PREFIX))
        .map(|rest| Maker::of_alias(Some(&format!("{ALIAS_PREFIX}{rest}"))))
        .unwrap_or(Maker::Other)
}

/// Reads what `topology` needs to be compared against, acting from `host`.
pub async fn observe(host: &Netlink, topology: &Topology, prune: bool) -> Result<Observed> {
    let host_inode = host.netns().inode();
    let mut observed = Observed {
        host: read_namespace(host, false).await?,
        namespaces: BTreeMap::new(),
    };
    for guest in &topology.guests {
        let ns = match Netns::named(&guest.name) {
            Ok(ns) => ns,
            Err(Error::NamespaceNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if ns.inode() == host_inode {
            return Err(Error::invalid(
                "guest",
                guest.name.as_str(),
                "is the namespace plumb runs in; a guest must be another namespace",
            ));
        }
        let nl = Netlink::open(&ns).await?;
        observed
            .namespaces
            .insert(guest.name.clone(), read_namespace(&nl, true).await?);
    }
    if prune {
        for name in Netns::list_named()? {
            if topology.guest(&name).is_some() {
                continue;
            }
            // Namespaces come and go while we look (other tools, other users):
            // one that cannot be read now holds nothing to prune for us.
            let Ok(ns) = Netns::named(&name) else {
                continue;
            };
            if ns.inode() == host_inode {
                continue;
            }
            let Ok(nl) = Netlink::open(&ns).await else {
                continue;
            };
            let Ok(links) = nl.links().await else {
                continue;
            };
            let ours = namespace_maker(&links).is_topology(&topology.name)
                || links
                    .iter()
                    .any(|l| Maker::of_alias(l.alias.as_deref()).is_topology(&topology.name));
            if ours {
                if let Ok(state) = read_namespace(&nl, true).await {
                    observed.namespaces.insert(name, state);
                }
            }
        }
    }
    Ok(observed)
}

async fn read_namespace(nl: &Netlink, with_routes: bool) -> Result<NamespaceState> {
    let links = nl.links().await?;
    let addresses = nl
        .addresses(None)
        .await?
        .into_iter()
        .filter(|a| !is_link_local(&a.network))
        .map(|a| (a.link, a.network))
        .collect();
    let mut routes = Vec::new();
    if with_routes {
        for ipv6 in [false, true] {
            routes.extend(main_routes(nl, &links, ipv6).await?);
        }
    }
    Ok(NamespaceState {
        links,
        addresses,
        routes,
    })
}

fn is_link_local(net: &IpNetwork) -> bool {
    match net.ip() {
        IpAddr::V6(ip) => ip.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(ip) => ip.is_link_local(),
    }
}

/// Unicast routes of the main table with their protocol.
async fn main_routes(nl: &Netlink, links: &[Link], ipv6: bool) -> Result<Vec<ObservedRoute>> {
    let mut request = RouteMessage::default();
    request.header.address_family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let replies = nl
        .dump(RouteNetlinkMessage::GetRoute(request), || {
            nl.target("list", "routes")
        })
        .await?;
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewRoute(msg) = reply else {
            continue;
        };
        if msg.header.kind != RouteType::Unicast {
            continue;
        }
        let mut table = u32::from(msg.header.table);
        let mut route = Route {
            ipv6,
            ..Default::default()
        };
        let mut destination = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => destination = ip_of(a),
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(index) => {
                    route.dev = links
                        .iter()
                        .find(|l| l.index == *index)
                        .map(|l| l.name.clone())
                }
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        route.destination =
            destination.and_then(|d| IpNetwork::new(d, msg.header.destination_prefix_length).ok());
        out.push(ObservedRoute {
            route,
            is_static: msg.header.protocol == RouteProtocol::Static,
        });
    }
    Ok(out)
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}
