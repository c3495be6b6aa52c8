//! What an attach asks for and answers, what a detach reports, the names
//! netd gives host links, and the checks every attach makes against the
//! state. The work itself is in `attach.rs` and `detach.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::ports::{PortMapping, PublishedPort};
use ipnetwork::IpNetwork;
use md5::{Digest, Md5};
use plumb::{MacAddr, Netns};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{ContainerRoute, Endpoint};

/// The container interface's default name.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Host ends of container veths are named `wv` + 12 hex digits of md5(id).
pub const HOST_IFNAME_PREFIX: &str = "wv";
/// The alias netd writes on the host end: `weft:<container id>`.
pub const ALIAS_PREFIX: &str = "weft:";

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// What a caller asks for. Only `netns` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The container's namespace: a path, a name in /run/netns, or a PID.
    pub netns: String,
    /// Container id; defaults to the name, then to the namespace's file name.
    #[serde(default)]
    pub id: Option<String>,
    /// Unique human name; defaults to the id. When given and a valid DNS
    /// name, the network's DNS server answers it (see `aliases`).
    #[serde(default)]
    pub name: Option<String>,
    /// Further names the DNS server answers for the container (podman's
    /// container name and network aliases come here from the CNI plugin).
    /// Each must be a valid DNS name, unique on the network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Interface name inside the container; `eth0` by default.
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Take the IPv4 address from this part of the subnet (when `ip` is not
    /// given): CNI's `rangeStart`/`rangeEnd` and `ipRanges`.
    #[serde(default)]
    pub ip_range: Option<Ipv4Range>,
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// `aa:bb:cc:dd:ee:ff`, or `U:<seed>` for a MAC derived from a seed.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Ports to publish, typed; the `[hostip:]hostport[-end]:ctrport[-end][/proto]`
    /// strings older clients send are read too.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Addresses allocated elsewhere (a CNI IPAM plugin such as host-local):
    /// netd applies them as given instead of allocating from its subnets, and
    /// reserves nothing for them. Excludes `ip` and `ip6`.
    #[serde(default)]
    pub assigned: Option<AssignedAddresses>,
    /// Routes to add on the container interface beside the default ones
    /// (a CNI IPAM plugin's): recorded, checked, repaired, and gone with the
    /// interface. Left out of the JSON when empty, so that a netd from
    /// before these fields takes every request that does not use them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ContainerRoute>,
    /// Addresses to put on the bridge beside netd's own gateways (a CNI IPAM
    /// plugin's gateways, `isGateway`), with their prefix: kept while an
    /// endpoint needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_addresses: Vec<IpNetwork>,
}

/// What CHECK expects in the container beyond the endpoint's record: the
/// addresses on its interface and the routes (destination, and gateway when
/// given; metric and table are not compared) of a CNI `prevResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckExpected {
    #[serde(default)]
    pub ips: Vec<IpNetwork>,
    #[serde(default)]
    pub routes: Vec<ContainerRoute>,
}

/// Addresses and default gateways decided outside netd, for [`AttachRequest::assigned`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignedAddresses {
    /// Addresses with their prefix length, e.g. `10.77.0.5/24`.
    pub ips: Vec<IpNetwork>,
    /// A default route is added via each (one per address family at most).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
}

/// The outcome, shaped like a CNI result so the plugin can pass it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachResult {
    pub id: String,
    pub name: String,
    pub interfaces: Vec<InterfaceInfo>,
    pub ips: Vec<IpInfo>,
    pub routes: Vec<RouteInfo>,
    pub mac: Option<MacAddr>,
    pub ports: Vec<PublishedPort>,
    /// The routes beside the default ones, as recorded.
    #[serde(default)]
    pub extra_routes: Vec<ContainerRoute>,
    /// The bridge's MAC, read by the attach (none from a lookup).
    #[serde(default)]
    pub bridge_mac: Option<MacAddr>,
    /// The host end's MAC, known to the attach (none from a lookup).
    #[serde(default)]
    pub host_mac: Option<MacAddr>,
    /// The MTU of both ends of the pair, as the kernel set it (the
    /// recorded one from a lookup, none when the kernel's default was taken).
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub mac: Option<MacAddr>,
    /// The container namespace's path; None for the host end.
    pub sandbox: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpInfo {
    pub address: IpNetwork,
    pub gateway: IpAddr,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub dst: IpNetwork,
    pub gw: IpAddr,
}

impl From<&Endpoint> for AttachResult {
    fn from(ep: &Endpoint) -> AttachResult {
        let ips = ep
            .ips
            .iter()
            .map(|a| IpInfo {
                address: *a,
                gateway: gateway_for(ep, a),
                interface: 1,
            })
            .collect();
        let routes = ep
            .gateways
            .iter()
            .map(|gw| RouteInfo {
                dst: if gw.is_ipv6() {
                    "::/0".parse().expect("default route")
                } else {
                    "0.0.0.0/0".parse().expect("default route")
                },
                gw: *gw,
            })
            .collect();
        AttachResult {
            id: ep.id.clone(),
            name: ep.name.clone(),
            interfaces: vec![
                InterfaceInfo {
                    name: ep.host_ifname.clone(),
                    mac: None,
                    sandbox: None,
                },
                InterfaceInfo {
                    name: ep.ifname.clone(),
                    mac: ep.mac,
                    sandbox: Some(ep.netns.clone()),
                },
            ],
            ips,
            routes,
            mac: ep.mac,
            ports: ep.ports.clone(),
            extra_routes: ep.routes.clone(),
            bridge_mac: None,
            host_mac: None,
            mtu: ep.mtu,
        }
    }
}

fn gateway_for(ep: &Endpoint, addr: &IpNetwork) -> IpAddr {
    ep.gateways
        .iter()
        .copied()
        .find(|g| g.is_ipv6() == addr.is_ipv6())
        .unwrap_or_else(|| crate::ipam::gateway(*addr))
}

/// What `detach` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachReport {
    /// The id or name asked for.
    pub container: String,
    /// False when nothing was attached under that id or name (detach is idempotent).
    pub found: bool,
    pub released: Vec<IpAddr>,
}

/// The host end's name for container `id`: ≤ 15 bytes, stable, and kept in
/// the state so teardown never has to recompute it.
pub fn host_ifname(id: &str) -> String {
    let digest = Md5::digest(id.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{HOST_IFNAME_PREFIX}{hex}")
}

/// Container ids and names: what CNI and runtimes use, nothing that breaks a path or a log line.
pub(crate) fn validate_id(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "container {what} {value:?} is not valid: use 1–253 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The names DNS answers for a container, primary first, lowercase: the
/// `name` asked for when it is a valid DNS name (an id-like name is not
/// answered, silently), then every alias, which must be valid.
pub(crate) fn dns_names(req: &AttachRequest, id: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    if let Some(name) = &req.name {
        if let Ok(name) = crate::names::normalized_name(id, name) {
            names.push(name);
        }
    }
    for alias in &req.aliases {
        let alias = crate::names::normalized_name(id, alias).map_err(|e| {
            Error::InvalidInput(format!(
                "attach container {id}: alias {alias:?}: {e}; aliases are DNS names"
            ))
        })?;
        if !names.contains(&alias) {
            names.push(alias);
        }
    }
    Ok(names)
}

/// A DNS name held by another container on the network is refused before
/// anything is created. A scan: only the containers' names are compared.
pub(crate) fn check_dns_names_free(
    state: &crate::state::State,
    id: &str,
    names: &[String],
) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    for key in state.endpoints.keys() {
        let Some(ep) = state.endpoints.get(key) else {
            continue;
        };
        if ep.id == id {
            continue;
        }
        if let Some(taken) = ep.dns_names.iter().find(|n| names.contains(n)) {
            return Err(Error::Conflict(format!(
                "DNS name {taken:?} is already held by container {} ({}) on this network; pick another --name/--alias or detach {} first",
                ep.id, ep.name, ep.name
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_unique(
    state: &crate::state::State,
    id: &str,
    name: &str,
    netns: &Netns,
    ifname: &str,
) -> Result<()> {
    if let Some(ep) = state.endpoints.get(id) {
        return Err(Error::Conflict(format!(
            "container id {id} is already attached (as {}, host link {}); detach it first",
            ep.name, ep.host_ifname
        )));
    }
    if let Some(ep) = state.endpoints.named(name) {
        return Err(Error::Conflict(format!(
            "container name {name} is already taken by container {}; choose another --name",
            ep.id
        )));
    }
    if let Some(ep) = state.endpoints.on_interface(netns.inode(), ifname) {
        return Err(Error::Conflict(format!(
            "namespace {} already has {ifname} attached by netd (container {}); choose another --ifname",
            netns.label(),
            ep.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_short_stable_and_distinct() {
        let a = host_ifname("c1");
        assert_eq!(a, host_ifname("c1"));
        assert_ne!(a, host_ifname("c2"));
        assert_eq!(a.len(), 14);
        assert!(plumb::validate_ifname(&host_ifname(&"x".repeat(200))).is_ok());
    }

    #[test]
    fn requests_without_routes_or_bridge_addresses_are_written_as_before() {
        let plain = serde_json::to_string(&AttachRequest {
            netns: "/run/netns/c1".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(
            !plain.contains("routes") && !plain.contains("bridge_addresses"),
            "{plain}"
        );
        let old: AttachRequest = serde_json::from_str(r#"{"netns": "/run/netns/c1"}"#).unwrap();
        assert!(old.routes.is_empty() && old.bridge_addresses.is_empty());
        let bad = serde_json::from_str::<AttachRequest>(
            r#"{"netns": "x", "routes": [{"dst": "192.0.2.0/24", "via": "10.0.0.1"}]}"#,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("via"), "{bad}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("id", "abc-DEF_1.2").is_ok());
        assert!(validate_id("id", "").is_err());
        let err = validate_id("name", "a/b").unwrap_err().to_string();
        assert!(err.contains("container name \"a/b\""), "{err}");
    }

    #[test]
    fn dns_names_take_a_valid_name_then_the_aliases() {
        let req = |name: Option<&str>, aliases: &[&str]| AttachRequest {
            name: name.map(String::from),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            dns_names(&req(Some("Web"), &["www", "WEB"]), "c1").unwrap(),
            ["web", "www"]
        );
        // An id-like name is not answered; the aliases still are.
        let long = "x".repeat(70);
        assert_eq!(dns_names(&req(Some(&long), &["db"]), "c1").unwrap(), ["db"]);
        assert!(dns_names(&req(None, &[]), "c1").unwrap().is_empty());
        let err = dns_names(&req(None, &["bad name"]), "c1").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("alias \"bad name\""), "{err}");
    }

    #[test]
    fn a_dns_name_held_elsewhere_is_a_conflict() {
        let mut state = crate::state::State::default();
        let mut held = Endpoint::for_tests("c1", "web", 1, &[]);
        held.dns_names = vec!["web".into(), "www".into()];
        state
            .endpoints
            .insert("c1".into(), std::sync::Arc::new(held));
        let err = check_dns_names_free(&state, "c2", &["db".into(), "www".into()]).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Conflict, "{err}");
        assert!(
            err.to_string()
                .contains("\"www\" is already held by container c1"),
            "{err}"
        );
        // Its own names are no conflict (a re-check under the lock).
        assert!(check_dns_names_free(&state, "c1", &["www".into()]).is_ok());
        assert!(check_dns_names_free(&state, "c2", &["db".into()]).is_ok());
    }
}
