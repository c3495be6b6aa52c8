//! What an attach asks for and answers, what a detach reports, the names
//! netd gives host links, and the checks every attach makes against the
//! state. The work itself is in `attach.rs` and `detach.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use md5::{Digest, Md5};
use plumb::firewall::PublishedPort;
use plumb::{MacAddr, Netns};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::Endpoint;

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
    /// Unique human name; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
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
    /// Ports to publish: `[hostip:]hostport[-end]:ctrport[-end][/proto]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Addresses allocated elsewhere (a CNI IPAM plugin such as host-local):
    /// netd applies them as given instead of allocating from its subnets, and
    /// reserves nothing for them. Excludes `ip` and `ip6`.
    #[serde(default)]
    pub assigned: Option<AssignedAddresses>,
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

/// The longest container id: the host link carries the alias `weft:<id>`,
/// and the kernel holds an alias of at most IFALIASZ − 2 = 254 bytes (the
/// 256-byte buffer less its NUL, and `dev_set_alias` counts the NUL netlink
/// carries: 255 is refused). Checked against the kernel by
/// tests/netd_lifecycle.rs.
pub const MAX_ID_LEN: usize = 254 - ALIAS_PREFIX.len();
/// The longest container name: no link carries it.
pub const MAX_NAME_LEN: usize = 253;

/// Container ids and names: what CNI and runtimes use, nothing that breaks a
/// path, a log line or the kernel's alias; `.` and `..` name no container.
pub(crate) fn validate_id(what: &str, value: &str) -> Result<()> {
    let max = if what == "id" {
        MAX_ID_LEN
    } else {
        MAX_NAME_LEN
    };
    let chars_ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let why = if value.is_empty() {
        "it is empty".to_string()
    } else if value.len() > max {
        format!("it is {} bytes long", value.len())
    } else if !chars_ok {
        "it holds a character other than a letter, digit, '-', '_' or '.'".to_string()
    } else if value == "." || value == ".." {
        "'.' and '..' name no container".to_string()
    } else {
        return Ok(());
    };
    let shown: String = value.chars().take(64).collect();
    let more = if value.chars().count() > 64 {
        "…"
    } else {
        ""
    };
    Err(Error::InvalidInput(format!(
        "container {what} {shown:?}{more} is not valid: {why}; use 1–{max} letters, digits, '-', '_' or '.'"
    )))
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
    fn ids_are_checked() {
        assert!(validate_id("id", "abc-DEF_1.2").is_ok());
        assert!(validate_id("id", "").is_err());
        let err = validate_id("name", "a/b").unwrap_err().to_string();
        assert!(err.contains("container name \"a/b\""), "{err}");
        for bad in [".", "..", "a\0b", "a\nb", "a b", "ä"] {
            let err = validate_id("id", bad).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(validate_id("id", "...").is_ok());
        assert!(validate_id("id", &"i".repeat(MAX_ID_LEN)).is_ok());
        let err = validate_id("id", &"i".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("1–249"), "{err}");
        assert!(validate_id("name", &"n".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_id("name", &"n".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
