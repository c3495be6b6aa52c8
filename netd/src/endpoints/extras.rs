//! What an attach may ask for beyond netd's own addressing: routes on the
//! container interface and addresses on the bridge (a CNI IPAM plugin's
//! routes, and its gateways when the bridge is their gateway). Validated
//! before anything changes, put in place with the rest of the endpoint,
//! recorded with it, checked, and repaired by reconciliation. The routes go
//! with the interface; a bridge address goes when no endpoint needs it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use plumb::{Link, Netlink, Route};

use super::request::{AttachRequest, CheckExpected};
use super::Endpoints;
use crate::action::Action;
use crate::config::Config;
use crate::error::{Error, KernelContext, Result};
use crate::state::{ContainerRoute, Endpoint, Phase};

/// The kernel's main routing table, which a route without a table lands in.
const MAIN_TABLE: u32 = 254;

fn invalid(name: &str, what: String) -> Error {
    Error::InvalidInput(format!("attach container {name}: {what}"))
}

fn family(v6: bool) -> u8 {
    if v6 {
        6
    } else {
        4
    }
}

/// Refuses extra routes and bridge addresses the kernel would refuse or
/// that would take over netd's own: those of `config`'s subnets, whose
/// gateways are `own_gateways`.
pub(super) fn validate(
    name: &str,
    req: &AttachRequest,
    config: &Config,
    own_gateways: &[IpAddr],
) -> Result<()> {
    // The address families the container gets an address in (v4, v6).
    let families = match &req.assigned {
        Some(a) => (
            a.ips.iter().any(|ip| ip.is_ipv4()),
            a.ips.iter().any(|ip| ip.is_ipv6()),
        ),
        None => (true, config.subnet6.is_some()),
    };
    let own_subnets = config.subnets();
    let mut seen = BTreeSet::new();
    for route in &req.routes {
        let dst = route.dst;
        let v6 = dst.is_ipv6();
        if dst.prefix() == 0 {
            return Err(invalid(
                name,
                format!("route to {dst} is a default route: netd adds those via the gateways (`assigned.gateways`)"),
            ));
        }
        if dst.ip() != dst.network() {
            return Err(invalid(
                name,
                format!(
                    "route destination {dst} has host bits set; write it {}/{}",
                    dst.network(),
                    dst.prefix()
                ),
            ));
        }
        if let Some(gw) = route.gw {
            if gw.is_ipv6() != v6 {
                return Err(invalid(
                    name,
                    format!(
                        "route to {dst} via {gw}: the gateway is IPv{}, the destination IPv{}",
                        family(gw.is_ipv6()),
                        family(v6)
                    ),
                ));
            }
            if gw.is_unspecified() || gw.is_multicast() || gw.is_loopback() {
                return Err(invalid(
                    name,
                    format!("route to {dst} via {gw}: {gw} cannot be a gateway"),
                ));
            }
        }
        if matches!(route.table, Some(0) | Some(255)) {
            return Err(invalid(
                name,
                format!(
                    "route to {dst}: table {} is not one a route can be added to; leave it out for the main table",
                    route.table.unwrap_or_default()
                ),
            ));
        }
        let has_family = if v6 { families.1 } else { families.0 };
        if !has_family {
            return Err(invalid(
                name,
                format!(
                    "route to {dst}: the container gets no IPv{} address to reach it with",
                    family(v6)
                ),
            ));
        }
        if !seen.insert((dst, table_of(route), route.metric)) {
            return Err(invalid(name, format!("route to {dst} is given twice")));
        }
    }
    let mut seen = BTreeSet::new();
    for addr in &req.bridge_addresses {
        let ip = addr.ip();
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(invalid(
                name,
                format!("bridge address {addr}: {ip} cannot be a gateway"),
            ));
        }
        if !seen.insert(ip) {
            return Err(invalid(name, format!("bridge address {ip} is given twice")));
        }
        // netd's own allocation would hand this address to a container.
        let own = own_subnets.iter().find(|s| s.contains(ip));
        if let Some(subnet) = own.filter(|_| req.assigned.is_none()) {
            if !own_gateways.contains(&ip) {
                return Err(invalid(
                    name,
                    format!(
                        "bridge address {addr} lies in {subnet}, which netd hands out to containers; use an address outside it"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The table a route lands in, the main one spelled out.
fn table_of(route: &ContainerRoute) -> u32 {
    route.table.unwrap_or(MAIN_TABLE)
}

fn plumb_route(route: &ContainerRoute, ifname: &str) -> Route {
    Route {
        destination: Some(route.dst),
        gateway: route.gw,
        dev: Some(ifname.to_string()),
        metric: route.metric,
        table: route.table,
        ipv6: route.dst.is_ipv6(),
        ..Default::default()
    }
}

/// True when `listed` (from the kernel) holds a route to `route`'s
/// destination via its gateway (any gateway when it names none and
/// `any_gateway`) in its table.
fn listed_has(listed: &[Route], route: &ContainerRoute, any_gateway: bool) -> bool {
    listed.iter().any(|k| {
        let dst = match k.destination {
            None => route.dst.prefix() == 0,
            Some(d) => d == route.dst,
        };
        let gw = (any_gateway && route.gw.is_none()) || k.gateway == route.gw;
        let table = route.table.is_none() || k.table.unwrap_or(MAIN_TABLE) == table_of(route);
        dst && gw && table
    })
}

/// The first of `routes` that is not in the namespace of `cnl`.
async fn first_missing(
    cnl: &Netlink,
    routes: &[ContainerRoute],
    any_gateway: bool,
) -> Result<Option<ContainerRoute>> {
    for v6 in [false, true] {
        let wanted: Vec<&ContainerRoute> =
            routes.iter().filter(|r| r.dst.is_ipv6() == v6).collect();
        if wanted.is_empty() {
            continue;
        }
        let all_tables = wanted.iter().any(|r| r.table.is_some());
        let listed = cnl
            .routes(v6, all_tables)
            .await
            .ctx(|| "list routes in the container")?;
        if let Some(r) = wanted
            .into_iter()
            .find(|r| !listed_has(&listed, r, any_gateway))
        {
            return Ok(Some(*r));
        }
    }
    Ok(None)
}

fn describe(route: &ContainerRoute) -> String {
    match route.gw {
        Some(gw) => format!("the route to {} via {gw}", route.dst),
        None => format!("the route to {}", route.dst),
    }
}

/// Adds the endpoint's extra routes on its interface `dev` (in `cnl`'s
/// namespace). One that is there already counts.
pub(super) async fn add_routes(cnl: &Netlink, ep: &Endpoint, dev: &Link) -> Result<()> {
    for route in &ep.routes {
        match cnl.add_route_at(&plumb_route(route, &ep.ifname), dev).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                return Err(Error::kernel(
                    format!("attach container {}: add {}", ep.name, describe(route)),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Why the endpoint's extra routes are not all in place, if they are not.
pub(super) async fn routes_missing(cnl: &Netlink, ep: &Endpoint) -> Result<Option<String>> {
    Ok(first_missing(cnl, &ep.routes, false)
        .await?
        .map(|r| format!("{} is missing", describe(&r))))
}

/// CHECK's comparison with what the caller expects: every address on the
/// interface `link` (which holds `addrs`), every route in the namespace.
pub(super) async fn expected_missing(
    cnl: &Netlink,
    link: &Link,
    addrs: &[plumb::Address],
    expected: &CheckExpected,
) -> Result<Option<String>> {
    if let Some(ip) = expected
        .ips
        .iter()
        .find(|ip| !addrs.iter().any(|a| a.network == **ip))
    {
        return Ok(Some(format!("address {ip} is missing on {}", link.name)));
    }
    Ok(first_missing(cnl, &expected.routes, true)
        .await?
        .map(|r| format!("{} is missing in the container", describe(&r))))
}

impl Endpoints {
    /// The addresses on the bridge, by IP.
    async fn bridge_ips(&self, nl: &Netlink, doing: &str) -> Result<BTreeSet<IpAddr>> {
        let bridge = &self.host.config().bridge;
        Ok(nl
            .link_addresses(bridge)
            .await
            .ctx(|| format!("{doing}: list the addresses of bridge {bridge}"))?
            .iter()
            .map(IpNetwork::ip)
            .collect())
    }

    /// Puts `wanted` on the bridge; an address whose IP is there already
    /// (with whatever prefix) counts. Returns what it added.
    async fn put_on_bridge(
        &self,
        nl: &Netlink,
        wanted: &[IpNetwork],
        doing: &str,
    ) -> Result<Vec<IpNetwork>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let bridge = &self.host.config().bridge;
        let present = self.bridge_ips(nl, doing).await?;
        let mut added = Vec::new();
        for addr in wanted.iter().filter(|a| !present.contains(&a.ip())) {
            match nl.add_address(bridge, *addr, true).await {
                Ok(()) => added.push(*addr),
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    return Err(Error::kernel(
                        format!("{doing}: add address {addr} to bridge {bridge}"),
                        e,
                    ))
                }
            }
        }
        Ok(added)
    }

    /// The endpoint's bridge addresses, for its attach (or its repair).
    pub(super) async fn add_bridge_addresses(&self, nl: &Netlink, ep: &Endpoint) -> Result<()> {
        let doing = format!("attach container {}", ep.name);
        self.put_on_bridge(nl, &ep.bridge_addresses, &doing)
            .await
            .map(drop)
    }

    /// The bridge addresses of every attached endpoint that are missing:
    /// why a reconciliation is needed (the quick check), if one is.
    pub(super) fn bridge_addresses_missing(
        state: &crate::state::State,
        present: &[IpNetwork],
    ) -> bool {
        state
            .endpoints
            .values()
            .filter(|ep| ep.phase == Phase::Attached)
            .flat_map(|ep| &ep.bridge_addresses)
            .any(|want| !present.iter().any(|p| p.ip() == want.ip()))
    }

    /// Reconciliation's part: puts back the bridge addresses attached
    /// endpoints need.
    pub(super) async fn restore_bridge_addresses(&self) -> Result<Vec<Action>> {
        let wanted: BTreeSet<IpNetwork> = self.host.store().read_with(|s| {
            s.endpoints
                .values()
                .filter(|ep| ep.phase == Phase::Attached)
                .flat_map(|ep| ep.bridge_addresses.iter().copied())
                .collect()
        })?;
        let wanted: Vec<IpNetwork> = wanted.into_iter().collect();
        let nl = self.host.netlink().await?;
        let bridge = &self.host.config().bridge;
        Ok(self
            .put_on_bridge(&nl, &wanted, "reconcile")
            .await?
            .into_iter()
            .map(|a| {
                Action::new(
                    "gateway_added",
                    format!("added address {a} to {bridge} (an endpoint's gateway)"),
                )
            })
            .collect())
    }

    /// After `gone` were forgotten: removes their bridge addresses that no
    /// remaining endpoint needs and that are not netd's own gateways. Best
    /// effort: what fails is logged (the address stays, harmless).
    pub(super) async fn release_bridge_addresses(&self, gone: &[Endpoint]) {
        let candidates: BTreeSet<IpNetwork> = gone
            .iter()
            .flat_map(|ep| ep.bridge_addresses.iter().copied())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let needed = self.host.store().read_with(|s| -> BTreeSet<IpAddr> {
            s.endpoints
                .values()
                .flat_map(|ep| ep.bridge_addresses.iter().map(IpNetwork::ip))
                .collect()
        });
        let needed = match needed {
            Ok(needed) => needed,
            Err(e) => {
                tracing::warn!("release bridge addresses: {e}; they stay");
                return;
            }
        };
        let own = self.host.gateways();
        let bridge = &self.host.config().bridge;
        let Ok(nl) = self.host.netlink().await else {
            return;
        };
        for addr in candidates {
            if needed.contains(&addr.ip()) || own.contains(&addr.ip()) {
                continue;
            }
            match nl.delete_address(bridge, addr).await {
                Ok(()) => tracing::info!(%addr, %bridge, "released a bridge address"),
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(%addr, %bridge, "release a bridge address: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: Option<&str>) -> ContainerRoute {
        ContainerRoute {
            dst: dst.parse().unwrap(),
            gw: gw.map(|g| g.parse().unwrap()),
            metric: None,
            table: None,
        }
    }

    fn check(routes: Vec<ContainerRoute>, bridge: &[&str], assigned: bool) -> Result<()> {
        let req = AttachRequest {
            routes,
            bridge_addresses: bridge.iter().map(|a| a.parse().unwrap()).collect(),
            assigned: assigned.then(|| super::super::request::AssignedAddresses {
                ips: vec!["10.7.0.5/24".parse().unwrap()],
                gateways: vec![],
            }),
            ..Default::default()
        };
        let config = Config {
            subnet: "10.66.0.0/16".parse().unwrap(),
            subnet6: None,
            ..Config::default()
        };
        validate("c", &req, &config, &["10.66.0.1".parse().unwrap()])
    }

    fn err(r: Result<()>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn good_extras_pass() {
        check(
            vec![
                route("192.0.2.0/24", None),
                route("198.51.100.0/24", Some("10.7.0.1")),
            ],
            &["10.7.0.1/24", "10.66.0.1/16"],
            true,
        )
        .unwrap();
    }

    #[test]
    fn bad_routes_are_refused_naming_them() {
        assert!(err(check(vec![route("0.0.0.0/0", None)], &[], true)).contains("default route"));
        assert!(err(check(vec![route("192.0.2.5/24", None)], &[], true)).contains("192.0.2.0/24"));
        assert!(err(check(
            vec![route("192.0.2.0/24", Some("fd00::1"))],
            &[],
            true
        ))
        .contains("gateway is IPv6"));
        assert!(err(check(vec![route("fd00::/64", None)], &[], true)).contains("no IPv6 address"));
        let twice = vec![route("192.0.2.0/24", None), route("192.0.2.0/24", None)];
        assert!(err(check(twice, &[], true)).contains("twice"));
        let mut local = route("192.0.2.0/24", None);
        local.table = Some(255);
        assert!(err(check(vec![local], &[], true)).contains("table 255"));
    }

    #[test]
    fn bridge_addresses_stay_out_of_netds_own_pool() {
        assert!(err(check(vec![], &["10.66.0.9/16"], false)).contains("hands out"));
        check(vec![], &["10.66.0.1/16"], false).unwrap();
        assert!(err(check(vec![], &["127.0.0.1/8"], true)).contains("cannot be a gateway"));
        assert!(err(check(vec![], &["10.7.0.1/24", "10.7.0.1/16"], true)).contains("twice"));
    }

    #[test]
    fn listed_routes_match_by_destination_gateway_and_table() {
        let listed = vec![Route {
            destination: Some("192.0.2.0/24".parse().unwrap()),
            gateway: Some("10.7.0.1".parse().unwrap()),
            ..Default::default()
        }];
        assert!(listed_has(
            &listed,
            &route("192.0.2.0/24", Some("10.7.0.1")),
            false
        ));
        assert!(!listed_has(&listed, &route("192.0.2.0/24", None), false));
        assert!(listed_has(&listed, &route("192.0.2.0/24", None), true));
        let mut other_table = route("192.0.2.0/24", Some("10.7.0.1"));
        other_table.table = Some(100);
        assert!(!listed_has(&listed, &other_table, false));
        other_table.table = Some(MAIN_TABLE);
        assert!(listed_has(&listed, &other_table, false));
    }
}
