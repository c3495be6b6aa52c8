//! From a CNI network config and request to netd's terms: the netd `Config`
//! of a network, the endpoint id of an attachment, the attach request, and
//! the CNI result of an attach. Shared by the standalone and daemon backends.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use md5::{Digest, Md5};

use crate::backend::{Addressing, AttachRequest};
use crate::delegated;
use crate::error::CniError;
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::types::{NetConf, PortMapping, DEFAULT_BRIDGE};

/// netd's state directory for the weft0 network; other bridges get their own
/// below it (one netd `Network` is one bridge).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";

/// Options of the reference bridge plugin weft reads but cannot honour:
/// code 2 naming key and value, before anything is touched.
pub fn refuse_unsupported(conf: &NetConf) -> Result<(), CniError> {
    let refuse = |key: &str, value: serde_json::Value, why: &str| {
        Err(CniError::unsupported_field(key, &value, why))
    };
    if let Some(vlan) = conf.vlan.filter(|v| *v != 0) {
        return refuse("vlan", vlan.into(), "weft's bridge does not tag VLANs");
    }
    if conf.promisc_mode {
        return refuse(
            "promiscMode",
            true.into(),
            "weft does not put its bridge into promiscuous mode",
        );
    }
    if conf.macspoofchk {
        return refuse(
            "macspoofchk",
            true.into(),
            "weft installs no MAC spoofing filter",
        );
    }
    if conf.force_address {
        return refuse(
            "forceAddress",
            true.into(),
            "weft never replaces the bridge's addresses; give each network its own bridge",
        );
    }
    Ok(())
}

/// The IPv4 subnet of the built-in IPAM: `subnet`, else `ipam.subnet`, else netd's default.
pub fn builtin_subnet(conf: &NetConf) -> Result<Option<IpNetwork>, CniError> {
    if let Some(subnet) = conf.subnet {
        return Ok(Some(subnet));
    }
    let Some(ipam) = &conf.ipam else {
        return Ok(None);
    };
    match ipam.settings.get("subnet") {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                CniError::invalid_config(
                    format!("invalid ipam.subnet {value}"),
                    "write a subnet in CIDR form, e.g. \"10.66.0.0/16\"",
                )
            }),
    }
}

/// The subnets an ADD will use, for the overlap check: the built-in IPAM's,
/// or those the delegated IPAM's config names (`ranges[][].subnet`, `subnet`).
pub fn configured_subnets(conf: &NetConf) -> Result<Vec<IpNetwork>, CniError> {
    let mut subnets = Vec::new();
    if conf.ipam_delegate().is_none() {
        let v4 = builtin_subnet(conf)?.unwrap_or_else(|| {
            netd::config::DEFAULT_SUBNET
                .parse()
                .expect("netd's default subnet")
        });
        subnets.push(v4);
        subnets.extend(conf.subnet6);
        return Ok(subnets);
    }
    let settings = &conf.ipam.as_ref().expect("delegated ipam").settings;
    let mut texts: Vec<&str> = Vec::new();
    if let Some(s) = settings.get("subnet").and_then(|v| v.as_str()) {
        texts.push(s);
    }
    if let Some(sets) = settings.get("ranges").and_then(|v| v.as_array()) {
        for set in sets.iter().filter_map(|s| s.as_array()) {
            texts.extend(
                set.iter()
                    .filter_map(|r| r.get("subnet").and_then(|s| s.as_str())),
            );
        }
    }
    subnets.extend(texts.iter().filter_map(|t| t.parse::<IpNetwork>().ok()));
    Ok(subnets)
}

/// The netd configuration of this CNI network, for the standalone backend.
/// For a delegated IPAM, `delegated` is the IPv4 network of the delegate's
/// address: the bridge gets its first address as the gateway.
pub fn netd_config(conf: &NetConf, delegated: Option<IpNetwork>) -> Result<netd::Config, CniError> {
    let mut config = netd::Config {
        // By path, not netd's default (the current namespace found by name).
        netns: Some(crate::netns::OWN_NETNS.to_string()),
        bridge: conf.bridge_name().to_string(),
        state_dir: state_dir(conf),
        mtu: conf.mtu,
        masquerade: conf.ip_masq || conf.ipam_delegate().is_none(),
        ..netd::Config::default()
    };
    if let Some(socket) = &conf.socket {
        config.socket = socket.clone();
    }
    let v4 = match delegated {
        Some(net) => Some(net),
        None => builtin_subnet(conf)?,
    };
    if let Some(net) = v4 {
        config.subnet = match net {
            IpNetwork::V4(n) => n,
            IpNetwork::V6(_) => {
                return Err(CniError::invalid_config(
                    format!("subnet {net} is IPv6"),
                    "`subnet` is the IPv4 subnet; put an IPv6 one in `subnet6`",
                ))
            }
        };
    }
    if delegated.is_none() {
        if let Some(net) = conf.subnet6 {
            config.subnet6 = match net {
                IpNetwork::V6(n) => Some(n),
                IpNetwork::V4(_) => {
                    return Err(CniError::invalid_config(
                        format!("subnet6 {net} is IPv4"),
                        "`subnet6` is the IPv6 subnet",
                    ))
                }
            };
        }
    }
    config.validate().map_err(|e| {
        CniError::invalid_config(
            format!("network {}: {e}", conf.name),
            "see docs/cni.md for the options",
        )
    })?;
    Ok(config)
}

/// `stateDir`, else /var/lib/weft for weft0, else `/var/lib/weft/cni/<bridge>`.
pub fn state_dir(conf: &NetConf) -> PathBuf {
    match &conf.state_dir {
        Some(dir) => dir.clone(),
        None if conf.bridge_name() == DEFAULT_BRIDGE => PathBuf::from(DEFAULT_STATE_DIR),
        None => PathBuf::from(DEFAULT_STATE_DIR)
            .join("cni")
            .join(conf.bridge_name()),
    }
}

fn hex(bytes: &[u8], n: usize) -> String {
    bytes.iter().take(n).map(|b| format!("{b:02x}")).collect()
}

/// The prefix of every endpoint id this CNI network owns in netd's state.
pub fn id_prefix(network: &str) -> String {
    format!("cni-{}-", hex(&Md5::digest(network.as_bytes()), 4))
}

/// netd's endpoint id for the CNI attachment (container id, ifname) on
/// `network`: `cni-<hash of network>-<container>.<ifname>`, or a hash of both
/// when they hold characters netd does not take in ids.
pub fn endpoint_id(network: &str, container_id: &str, ifname: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    };
    let prefix = id_prefix(network);
    let readable = format!("{prefix}{container_id}.{ifname}");
    if plain(container_id) && plain(ifname) && readable.len() <= 253 {
        return readable;
    }
    let mut hasher = Md5::new();
    hasher.update(container_id.as_bytes());
    hasher.update([0]);
    hasher.update(ifname.as_bytes());
    format!("{prefix}h{}", hex(&hasher.finalize(), 16))
}

/// A CNI `portMappings` entry as netd's typed [`netd::PortMapping`], checked
/// here, where the plugin reads it.
pub fn port_mapping(p: &PortMapping) -> Result<netd::PortMapping, CniError> {
    let protocol = p.protocol.parse::<netd::ports::Protocol>().map_err(|_| {
        CniError::unsupported_field(
            "runtimeConfig.portMappings[].protocol",
            &serde_json::json!(p.protocol),
            "weft publishes tcp, udp and sctp",
        )
    })?;
    let host_ip = match p.host_ip.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            CniError::invalid_config(
                format!("invalid portMappings hostIP {text:?}"),
                "hostIP is an IPv4 or IPv6 address",
            )
        })?),
    };
    netd::PortMapping::new(
        protocol,
        host_ip,
        netd::ports::PortRange::single(p.host_port),
        netd::ports::PortRange::single(p.container_port),
    )
    .map_err(|e| {
        CniError::invalid_config(
            format!("invalid portMappings entry: {e}"),
            "hostPort and containerPort are ports 1-65535",
        )
    })
}

/// The default gateways of a delegated result: the gateway of each address
/// family that has a default route in the result, or every gateway when
/// `isDefaultGateway` is set.
pub fn delegated_gateways(conf: &NetConf, ipam: &CniResult) -> Vec<IpAddr> {
    let mut gateways = Vec::new();
    for ip in &ipam.ips {
        let Some(gw) = ip.gateway else { continue };
        if gateways
            .iter()
            .any(|g: &IpAddr| g.is_ipv6() == gw.is_ipv6())
        {
            continue;
        }
        let default_route = ipam
            .routes
            .iter()
            .any(|r| r.dst.prefix() == 0 && r.dst.is_ipv6() == gw.is_ipv6());
        if conf.is_default_gateway || default_route {
            gateways.push(gw);
        }
    }
    gateways
}

/// netd's attach request for a CNI ADD. `ip` and `ip6` come from the
/// requested static addresses or from the range (`range`), which netd
/// allocates from under its lock.
pub fn attach_request(
    request: &AttachRequest,
    id: &str,
    range: Option<crate::range::AddressRange>,
) -> Result<netd::AttachRequest, CniError> {
    let conf = request.network;
    let mut netd_req = netd::AttachRequest {
        netns: request.netns.display().to_string(),
        id: Some(id.to_string()),
        // No name: netd names the endpoint after the id, and answers no
        // DNS name for it; the container's names are the aliases.
        name: None,
        aliases: crate::names::dns_aliases(conf, request.pod_name)?,
        ifname: Some(request.ifname.to_string()),
        mac: conf.runtime_config.mac.clone(),
        mtu: conf.mtu,
        ports: conf
            .runtime_config
            .port_mappings
            .iter()
            .map(port_mapping)
            .collect::<Result<_, _>>()?,
        ..Default::default()
    };
    match &request.addressing {
        Addressing::Delegated(ipam) => {
            if ipam.ips.is_empty() {
                return Err(CniError::internal(
                    format!(
                        "IPAM plugin {} returned no address",
                        conf.ipam_delegate().unwrap_or("?")
                    ),
                    "check the ipam section of the network config",
                ));
            }
            netd_req.assigned = Some(netd::AssignedAddresses {
                ips: ipam.ips.iter().map(|ip| ip.address).collect(),
                gateways: delegated_gateways(conf, ipam),
            });
            netd_req.routes = delegated::extra_routes(ipam);
            netd_req.bridge_addresses = delegated::bridge_addresses(conf, ipam);
        }
        Addressing::Builtin { requested } => {
            for text in requested {
                let addr: IpAddr = text
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| {
                        CniError::invalid_config(
                            format!("invalid requested address {text:?}"),
                            "the `ips` capability takes addresses such as 10.66.0.9 or 10.66.0.9/16",
                        )
                    })?;
                let slot = match addr {
                    IpAddr::V4(v4) => netd_req.ip.replace(v4).map(IpAddr::V4),
                    IpAddr::V6(v6) => netd_req.ip6.replace(v6).map(IpAddr::V6),
                };
                if slot.is_some() {
                    return Err(CniError::invalid_config(
                        format!("more than one address of a family requested: {requested:?}"),
                        "weft gives one IPv4 and one IPv6 address per interface",
                    ));
                }
            }
            if netd_req.ip.is_none() {
                netd_req.ip_range = range.map(|r| r.to_netd());
            }
        }
    }
    Ok(netd_req)
}

/// The CNI result of an attach: the bridge, the host end, the container end.
pub struct Attached<'a> {
    pub bridge: &'a str,
    /// netd's answer, which also reports the MACs and the MTU.
    pub netd: &'a netd::AttachResult,
    /// The delegated IPAM's result, whose gateways, routes and DNS are kept.
    pub ipam: Option<&'a CniResult>,
}

pub fn cni_result(conf: &NetConf, a: &Attached) -> CniResult {
    let host = &a.netd.interfaces[0];
    let container = &a.netd.interfaces[1];
    let interfaces = vec![
        Interface {
            name: a.bridge.to_string(),
            mac: a.netd.bridge_mac.map(|m| m.to_string()),
            ..Default::default()
        },
        Interface {
            name: host.name.clone(),
            mac: a.netd.host_mac.map(|m| m.to_string()),
            ..Default::default()
        },
        Interface {
            name: container.name.clone(),
            mac: container.mac.map(|m| m.to_string()),
            mtu: a.netd.mtu,
            sandbox: container.sandbox.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        },
    ];
    let (ips, routes, dns) = match a.ipam {
        Some(ipam) => (
            ipam.ips
                .iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: Some(2),
                })
                .collect(),
            {
                let mut routes = ipam.routes.clone();
                for r in &a.netd.routes {
                    if !routes.iter().any(|x| x.dst == r.dst) {
                        routes.push(Route::new(r.dst, Some(r.gw)));
                    }
                }
                routes
            },
            if ipam.dns.is_empty() {
                conf.dns.clone().unwrap_or_default()
            } else {
                ipam.dns.clone()
            },
        ),
        None => (
            a.netd
                .ips
                .iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: Some(ip.gateway),
                    interface: Some(2),
                })
                .collect(),
            a.netd
                .routes
                .iter()
                .map(|r| Route::new(r.dst, Some(r.gw)))
                .collect(),
            conf.dns.clone().unwrap_or_default(),
        ),
    };
    CniResult {
        interfaces,
        ips,
        routes,
        dns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: serde_json::Value) -> NetConf {
        NetConf::parse(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn endpoint_ids_are_readable_scoped_and_stable() {
        let a = endpoint_id("net1", "abc123", "eth0");
        assert!(
            a.starts_with(&id_prefix("net1")) && a.ends_with("-abc123.eth0"),
            "{a}"
        );
        assert_ne!(id_prefix("net1"), id_prefix("net2"));
        let hashed = endpoint_id("net1", "a.b", "eth0");
        assert!(hashed.starts_with(&id_prefix("net1")));
        assert_ne!(hashed, endpoint_id("net1", "a", "b.eth0"));
        assert!(endpoint_id("n", &"x".repeat(300), "eth0").len() < 64);
    }

    #[test]
    fn port_mappings_become_netd_mappings() {
        let p = |json: serde_json::Value| serde_json::from_value::<PortMapping>(json).unwrap();
        assert_eq!(
            port_mapping(&p(
                serde_json::json!({"hostPort": 8080, "containerPort": 80})
            ))
            .unwrap(),
            "8080:80/tcp".parse().unwrap()
        );
        assert_eq!(
            port_mapping(&p(serde_json::json!({"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "fd00::1"}))).unwrap(),
            "[fd00::1]:53:53/udp".parse().unwrap()
        );
        // An empty or unspecified hostIP means every address.
        assert_eq!(
            port_mapping(&p(
                serde_json::json!({"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": ""})
            ))
            .unwrap()
            .host_ip,
            None
        );
    }

    #[test]
    fn bad_port_mappings_give_clear_errors() {
        let err = |json: serde_json::Value| {
            let m = serde_json::from_value::<PortMapping>(json).unwrap();
            port_mapping(&m).unwrap_err()
        };
        let e = err(serde_json::json!({"hostPort": 1, "containerPort": 1, "protocol": "icmp"}));
        assert_eq!(e.code.number(), 2, "{e:?}");
        let e = err(serde_json::json!({"hostPort": 0, "containerPort": 80}));
        assert!(
            e.msg.contains("host port: port 0 cannot be published"),
            "{e:?}"
        );
        let e = err(serde_json::json!({"hostPort": 80, "containerPort": 0}));
        assert!(e.msg.contains("container port: port 0"), "{e:?}");
        let e =
            err(serde_json::json!({"hostPort": 80, "containerPort": 80, "hostIP": "300.1.1.1"}));
        assert!(
            e.msg.contains("invalid portMappings hostIP \"300.1.1.1\""),
            "{e:?}"
        );
        // Out of range never becomes a u16: the network config is refused as JSON.
        assert!(serde_json::from_value::<PortMapping>(
            serde_json::json!({"hostPort": 70000, "containerPort": 80})
        )
        .is_err());
    }

    #[test]
    fn options_weft_cannot_honour_are_code_2() {
        for (key, value) in [
            ("vlan", serde_json::json!(100)),
            ("promiscMode", serde_json::json!(true)),
            ("macspoofchk", serde_json::json!(true)),
            ("forceAddress", serde_json::json!(true)),
        ] {
            let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft"});
            v[key] = value.clone();
            let e = refuse_unsupported(&conf(v)).unwrap_err();
            assert_eq!(e.code.number(), 2);
            assert!(e.msg.contains(&format!("{key}={value}")), "{e}");
        }
        let plain = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft", "vlan": 0}),
        );
        assert!(refuse_unsupported(&plain).is_ok());
    }

    #[test]
    fn config_mapping() {
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
            "bridge": "br9", "subnet": "10.9.0.0/24", "mtu": 1400}),
        );
        let n = netd_config(&c, None).unwrap();
        assert_eq!(
            (n.bridge.as_str(), n.subnet.to_string(), n.mtu),
            ("br9", "10.9.0.0/24".into(), Some(1400))
        );
        assert_eq!(n.state_dir, PathBuf::from("/var/lib/weft/cni/br9"));
        assert!(n.masquerade);
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
            "ipam": {"type": "weft", "subnet": "10.8.0.0/16"}}),
        );
        assert_eq!(
            netd_config(&c, None).unwrap().subnet.to_string(),
            "10.8.0.0/16"
        );
        assert_eq!(
            netd_config(&c, None).unwrap().state_dir,
            PathBuf::from("/var/lib/weft")
        );
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.7.0.0/24"}]]}}),
        );
        assert!(
            !netd_config(&c, None).unwrap().masquerade,
            "ipMasq defaults to off as with bridge"
        );
        assert_eq!(
            configured_subnets(&c).unwrap(),
            ["10.7.0.0/24".parse::<IpNetwork>().unwrap()]
        );
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft", "subnet": "10.9.0.1/24"}),
        );
        assert_eq!(netd_config(&c, None).unwrap_err().code.number(), 7);
    }
}
