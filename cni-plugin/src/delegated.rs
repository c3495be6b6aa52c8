//! What a delegated IPAM plugin's result asks of netd beside the addresses
//! and default gateways (`wiring::attach_request`): its other routes, for
//! the container, and its gateways, for the bridge when the bridge is the
//! containers' gateway. netd puts both in place, records, checks, repairs
//! and removes them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::result::CniResult;
use crate::types::NetConf;

/// The routes of a delegated result other than the default routes netd
/// adds, as netd's container routes: a route without a gateway goes via the
/// result's gateway of its family, as the reference bridge plugin does.
pub fn extra_routes(ipam: &CniResult) -> Vec<netd::ContainerRoute> {
    ipam.routes
        .iter()
        .filter(|r| r.dst.prefix() != 0)
        .map(|r| netd::ContainerRoute {
            dst: r.dst,
            gw: r.gw.or_else(|| family_gateway(ipam, r.dst.is_ipv6())),
            metric: r.priority,
            table: r.table,
        })
        .collect()
}

/// The gateway of the result's first address in a family that has one.
fn family_gateway(ipam: &CniResult, v6: bool) -> Option<IpAddr> {
    ipam.ips
        .iter()
        .filter(|ip| ip.address.is_ipv6() == v6)
        .find_map(|ip| ip.gateway)
}

/// The addresses a delegated result puts on the bridge when it is the
/// containers' gateway (`isGateway`, `isDefaultGateway`): each gateway with
/// the prefix of its address.
pub fn bridge_addresses(conf: &NetConf, ipam: &CniResult) -> Vec<IpNetwork> {
    if !(conf.is_gateway || conf.is_default_gateway) {
        return Vec::new();
    }
    let mut addresses: Vec<IpNetwork> = Vec::new();
    for ip in &ipam.ips {
        let Some(gw) = ip.gateway else { continue };
        let net = IpNetwork::new(gw, ip.address.prefix()).expect("prefix of an address");
        if !addresses.iter().any(|a| a.ip() == gw) {
            addresses.push(net);
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: serde_json::Value) -> NetConf {
        NetConf::parse(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_delegated_results_routes_and_gateways_go_to_netd() {
        let ipam: CniResult = serde_json::from_value(serde_json::json!({
            "ips": [{"address": "10.7.0.5/24", "gateway": "10.7.0.254"},
                    {"address": "fd07::5/64", "gateway": "fd07::1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24"},
                       {"dst": "198.51.100.0/24", "gw": "10.7.0.9", "priority": 5, "table": 100},
                       {"dst": "2001:db8::/32"}]
        }))
        .unwrap();
        let route = |dst: &str, gw: &str, metric, table| netd::ContainerRoute {
            dst: dst.parse().unwrap(),
            gw: Some(gw.parse().unwrap()),
            metric,
            table,
        };
        assert_eq!(
            extra_routes(&ipam),
            [
                route("192.0.2.0/24", "10.7.0.254", None, None),
                route("198.51.100.0/24", "10.7.0.9", Some(5), Some(100)),
                route("2001:db8::/32", "fd07::1", None, None),
            ]
        );
        let gateway = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n",
            "type": "weft", "isGateway": true}));
        let addrs: Vec<String> = bridge_addresses(&gateway, &ipam)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.7.0.254/24", "fd07::1/64"]);
        let plain = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft"}));
        assert!(
            bridge_addresses(&plain, &ipam).is_empty(),
            "not the bridge's unless isGateway"
        );
    }
}
