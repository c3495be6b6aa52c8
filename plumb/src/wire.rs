//! Pipework-style wiring: put a container ("guest") on a host interface.
//!
//! The host interface decides the wiring, as in pipework: a bridge gets a veth
//! pair (a bridge whose name starts with `br` is created on demand), any other
//! link gets a macvlan, on a VLAN sub-interface when a VLAN is asked for.
//!
//! What plumb makes is recorded in the kernel itself, in each link's alias
//! (`ip link` shows it), so `unwire` undoes exactly that and `inventory` lists
//! it without any state file, surviving restarts of plumb.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{BridgeVlanInfoFlags, LinkAttribute};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkBridge, LinkBridgeVlan};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::link::validate_vlan_id;
use crate::link::{validate_ifname, Link, LinkChange, LinkOptions, MacvlanMode};
use crate::mac::MacAddr;
use crate::netns::Netns;
use crate::route::Route;
use crate::Netlink;

/// Every alias plumb writes starts with this.
pub const ALIAS_PREFIX: &str = "plumb:";

/// One container interface to wire.
#[derive(Debug, Clone)]
pub struct WireSpec {
    /// The host link: a bridge (veth) or anything else (macvlan).
    pub host_if: String,
    /// The guest's namespace.
    pub guest: Netns,
    /// The interface name inside the guest (pipework's default is eth1).
    pub guest_if: String,
    /// Name of the host end of a veth; derived from the guest when None.
    pub host_side_name: Option<String>,
    /// Addresses with their gateways (the gateway becomes a default route).
    pub addresses: Vec<(IpNetwork, Option<IpAddr>)>,
    /// The guest link's MAC; the kernel picks one when None.
    pub mac: Option<MacAddr>,
    /// Put a macvlan on this VLAN of the host link (made on demand).
    pub vlan: Option<u32>,
    /// The macvlan mode (bridge, private, vepa, passthru).
    pub macvlan_mode: MacvlanMode,
    /// MTU of the guest link; the host interface's when None.
    pub mtu: Option<u32>,
}

/// What a wiring produced, as `plumb ls` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Wiring {
    /// The guest namespace as the user named it.
    pub guest: String,
    /// The interface's name in the guest.
    pub guest_if: String,
    /// "veth" or "macvlan".
    pub kind: String,
    /// The host link it hangs off.
    pub host_if: String,
    /// The host end of a veth.
    pub host_side: Option<String>,
    /// The VLAN its macvlan is on, if any.
    pub vlan: Option<u16>,
    /// The guest link's MAC.
    pub mac: Option<MacAddr>,
    /// The guest link's MTU in bytes.
    pub mtu: u32,
    /// The guest link's addresses with their prefix lengths.
    pub addresses: Vec<IpNetwork>,
}

/// The record kept in a link's alias: `plumb:key=value key=value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The `key=value` pairs, in order.
    pub fields: Vec<(String, String)>,
}

impl Record {
    /// A record of these pairs.
    pub fn new(fields: &[(&str, &str)]) -> Record {
        Record {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Reads an alias; None when it is not plumb's (no `plumb:` prefix).
    pub fn parse(alias: &str) -> Option<Record> {
        let rest = alias.strip_prefix(ALIAS_PREFIX)?;
        let fields = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Record { fields })
    }

    /// The value of `key`, if the record has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The alias text: `plumb:` then the pairs, space-separated.
    pub fn render(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{ALIAS_PREFIX}{}", body.join(" "))
    }
}

fn record_of(link: &Link) -> Option<Record> {
    link.alias.as_deref().and_then(Record::parse)
}

/// The default host end name of a veth: short, stable, unique per guest and
/// interface (`pl` + 8 hex digits of a hash of both).
pub fn default_host_side_name(guest: &Netns, guest_if: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in guest
        .inode()
        .to_le_bytes()
        .iter()
        .chain(guest_if.as_bytes())
    {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("pl{hash:08x}")
}

/// Things created so far, undone in reverse if a later step fails.
#[derive(Default)]
struct Undo {
    host_links: Vec<String>,
    guest_links: Vec<String>,
}

impl Undo {
    async fn run(self, host: &Netlink, guest: &Netlink) {
        for name in self.guest_links.iter().rev() {
            let _ = guest.delete_link(name).await;
        }
        for name in self.host_links.iter().rev() {
            let _ = host.delete_link(name).await;
        }
    }
}

impl WireSpec {
    /// Checks everything that can be checked before touching the kernel.
    pub fn validate(&self) -> Result<()> {
        validate_ifname(&self.host_if)?;
        validate_ifname(&self.guest_if)?;
        if let Some(name) = &self.host_side_name {
            validate_ifname(name)?;
        }
        if let Some(vlan) = self.vlan {
            validate_vlan_id(vlan)?;
            let sub = format!("{}.{vlan}", self.host_if);
            if sub.len() > crate::link::MAX_IFNAME_LEN {
                return Err(Error::invalid(
                    "VLAN sub-interface name",
                    sub,
                    "would exceed 15 bytes; rename the host interface",
                ));
            }
        }
        for (net, gw) in &self.addresses {
            if let Some(gw) = gw {
                if gw.is_ipv4() != net.is_ipv4() {
                    return Err(Error::invalid(
                        "gateway",
                        gw.to_string(),
                        format!("is not of the same IP version as {net}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Wires `spec.guest` to `spec.host_if`, acting in namespace `host`.
pub async fn wire(host: &Netlink, spec: &WireSpec) -> Result<Wiring> {
    spec.validate()?;
    let guest = Netlink::open(&spec.guest).await?;
    if guest.link(&spec.guest_if).await?.is_some() {
        return Err(Error::AlreadyExists(
            guest.target("wire", format!("link {}", spec.guest_if)),
        ));
    }
    let host_link = match host.link(&spec.host_if).await? {
        Some(link) => link,
        None if spec.host_if.starts_with("br") => {
            let record = Record::new(&[("made", "bridge")]);
            host.add_bridge(
                &spec.host_if,
                &LinkOptions {
                    up: true,
                    alias: Some(record.render()),
                    ..Default::default()
                },
            )
            .await?;
            host.require_link(&spec.host_if).await?
        }
        None => {
            return Err(Error::NotFound(
                host.target("wire to", format!("host interface {}", spec.host_if)),
            ))
        }
    };
    let mut undo = Undo::default();
    let result = if host_link.is_kind("bridge") {
        wire_veth(host, &guest, spec, &host_link, &mut undo).await
    } else {
        wire_macvlan(host, &guest, spec, &host_link, &mut undo).await
    };
    match result {
        Ok(wiring) => Ok(wiring),
        Err(e) => {
            undo.run(host, &guest).await;
            Err(e)
        }
    }
}

async fn wire_veth(
    host: &Netlink,
    guest: &Netlink,
    spec: &WireSpec,
    bridge: &Link,
    undo: &mut Undo,
) -> Result<Wiring> {
    let host_side = spec
        .host_side_name
        .clone()
        .unwrap_or_else(|| default_host_side_name(&spec.guest, &spec.guest_if));
    let mtu = spec.mtu.unwrap_or(bridge.mtu);
    let guest_label = spec.guest.label().to_string();
    let vlan = spec.vlan.map(|v| v.to_string()).unwrap_or_default();
    let host_record = Record::new(&[
        ("guest", &guest_label),
        ("if", &spec.guest_if),
        ("vlan", &vlan),
    ]);
    let guest_record = Record::new(&[
        ("host", &spec.host_if),
        ("peer", &host_side),
        ("vlan", &vlan),
    ]);
    host.add_veth(
        &host_side,
        &LinkOptions {
            mtu: Some(mtu),
            alias: Some(host_record.render()),
            ..Default::default()
        },
        &spec.guest_if,
        &LinkOptions {
            mtu: Some(mtu),
            mac: spec.mac,
            alias: Some(guest_record.render()),
            netns: Some(spec.guest.clone()),
            ..Default::default()
        },
    )
    .await?;
    undo.host_links.push(host_side.clone());
    host.set_link(
        &host_side,
        &LinkChange {
            controller: Some(Some(bridge.index)),
            up: Some(true),
            ..Default::default()
        },
    )
    .await?;
    if let Some(vlan) = spec.vlan {
        put_port_in_vlan(host, &spec.host_if, &host_side, validate_vlan_id(vlan)?).await?;
    }
    configure_guest(guest, spec).await?;
    describe(guest, spec, "veth", Some(host_side)).await
}

/// Makes the bridge VLAN-aware and the port an untagged member of `vlan` only.
async fn put_port_in_vlan(host: &Netlink, bridge: &str, port: &str, vlan: u16) -> Result<()> {
    let bridge_link = host.require_link(bridge).await?;
    let filtering = LinkBridge::new(bridge).vlan_filtering(true).build();
    let mut msg = rtnetlink::LinkUnspec::new_with_index(bridge_link.index).build();
    // Only the bridge's VLAN filtering switch changes, nothing else.
    msg.attributes = filtering
        .attributes
        .into_iter()
        .filter(|a| matches!(a, LinkAttribute::LinkInfo(_)))
        .collect();
    // Kind-specific settings change through RTM_NEWLINK on the existing link.
    host.request_ack(RouteNetlinkMessage::NewLink(msg), 0, || {
        host.target("enable VLAN filtering on", format!("bridge {bridge}"))
    })
    .await?;
    let port_link = host.require_link(port).await?;
    let untagged = BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
    let add = LinkBridgeVlan::new(port_link.index)
        .vlan(vlan, untagged)
        .build();
    host.request_ack(RouteNetlinkMessage::SetLink(add), 0, || {
        host.target(format!("add VLAN {vlan} to"), format!("bridge port {port}"))
    })
    .await?;
    if vlan != 1 {
        let remove_default = LinkBridgeVlan::new(port_link.index)
            .vlan(1, BridgeVlanInfoFlags::empty())
            .build();
        host.request_ack(RouteNetlinkMessage::DelLink(remove_default), 0, || {
            host.target("remove default VLAN 1 from", format!("bridge port {port}"))
        })
        .await?;
    }
    Ok(())
}

async fn wire_macvlan(
    host: &Netlink,
    guest: &Netlink,
    spec: &WireSpec,
    host_link: &Link,
    undo: &mut Undo,
) -> Result<Wiring> {
    let lower = match spec.vlan {
        Some(vlan) => {
            let sub = format!("{}.{vlan}", spec.host_if);
            if host.link(&sub).await?.is_none() {
                host.add_vlan(
                    &sub,
                    &spec.host_if,
                    vlan,
                    &LinkOptions {
                        up: true,
                        mtu: Some(host_link.mtu),
                        alias: Some(Record::new(&[("made", "vlan")]).render()),
                        ..Default::default()
                    },
                )
                .await?;
                undo.host_links.push(sub.clone());
            }
            sub
        }
        None => spec.host_if.clone(),
    };
    if !host_link.up {
        host.set_up(&spec.host_if).await?;
    }
    let vlan = spec.vlan.map(|v| v.to_string()).unwrap_or_default();
    let mode = spec.macvlan_mode.to_string();
    let record = Record::new(&[("host", &spec.host_if), ("vlan", &vlan), ("mode", &mode)]);
    host.add_macvlan(
        &spec.guest_if,
        &lower,
        spec.macvlan_mode,
        &LinkOptions {
            mtu: Some(spec.mtu.unwrap_or(host_link.mtu)),
            mac: spec.mac,
            alias: Some(record.render()),
            netns: Some(spec.guest.clone()),
            ..Default::default()
        },
    )
    .await?;
    undo.guest_links.push(spec.guest_if.clone());
    configure_guest(guest, spec).await?;
    describe(guest, spec, "macvlan", None).await
}

/// Addresses, link up, default routes and gratuitous ARP inside the guest.
async fn configure_guest(guest: &Netlink, spec: &WireSpec) -> Result<()> {
    for (network, _) in &spec.addresses {
        guest.add_address(&spec.guest_if, *network, true).await?;
    }
    guest.set_up(&spec.guest_if).await?;
    for (_, gateway) in &spec.addresses {
        if let Some(gateway) = gateway {
            // As pipework: the given gateway replaces the guest's default route.
            guest
                .replace_route(&Route {
                    gateway: Some(*gateway),
                    dev: Some(spec.guest_if.clone()),
                    ..Default::default()
                })
                .await?;
        }
    }
    let link = guest.require_link(&spec.guest_if).await?;
    if let Some(mac) = link.mac {
        // An announcement sent before the link is running is dropped by the
        // kernel. One that still is not (no carrier) is sent all the same.
        guest
            .wait_running(&spec.guest_if, std::time::Duration::from_secs(1))
            .await?;
        for (network, _) in &spec.addresses {
            if let IpAddr::V4(ip) = network.ip() {
                crate::arp::announce(guest.netns(), link.index, mac, ip)?;
            }
        }
    }
    Ok(())
}

async fn describe(
    guest: &Netlink,
    spec: &WireSpec,
    kind: &str,
    host_side: Option<String>,
) -> Result<Wiring> {
    let link = guest.require_link(&spec.guest_if).await?;
    Ok(Wiring {
        guest: spec.guest.label().to_string(),
        guest_if: spec.guest_if.clone(),
        kind: kind.to_string(),
        host_if: spec.host_if.clone(),
        host_side,
        vlan: spec.vlan.map(|v| v as u16),
        mac: link.mac,
        mtu: link.mtu,
        addresses: spec.addresses.iter().map(|(n, _)| *n).collect(),
    })
}

/// Removes what plumb wired into `guest` (one interface, or all of them), and
/// then what it made on the host for them and nobody else uses any more.
/// Returns the interfaces removed.
pub async fn unwire(host: &Netlink, guest: &Netns, guest_if: Option<&str>) -> Result<Vec<String>> {
    let guest_nl = Netlink::open(guest).await?;
    let mut removed = Vec::new();
    let mut hosts_touched = HashSet::new();
    let mut errors = Vec::new();
    for link in guest_nl.links().await? {
        let Some(record) = record_of(&link) else {
            continue;
        };
        if guest_if.is_some_and(|want| want != link.name) {
            continue;
        }
        if let Some(h) = record.get("host") {
            hosts_touched.insert(h.to_string());
            if let Some(vlan) = record.get("vlan").filter(|v| !v.is_empty()) {
                hosts_touched.insert(format!("{h}.{vlan}"));
            }
        }
        match guest_nl.delete_link(&link.name).await {
            Ok(()) => removed.push(link.name.clone()),
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(want) = guest_if {
        if removed.is_empty() && errors.is_empty() {
            return Err(Error::NotFound(
                guest_nl.target("unwire", format!("link {want} wired by plumb")),
            ));
        }
    }
    // Host-side objects plumb created on demand go once nothing uses them.
    let still_used = inventory_host_users(host).await?;
    for name in hosts_touched {
        let Some(link) = host.link(&name).await? else {
            continue;
        };
        let made = record_of(&link).and_then(|r| r.get("made").map(String::from));
        let has_ports = host
            .links()
            .await?
            .iter()
            .any(|l| l.controller == Some(link.index));
        let unused = match made.as_deref() {
            Some("bridge") => !has_ports,
            Some("vlan") => !still_used.contains(&name),
            _ => false,
        };
        if unused {
            if let Err(e) = host.delete_link(&name).await {
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(Error::Other(format!(
            "unwire in namespace {}: {}",
            guest.label(),
            errors.join("; ")
        )))
    }
}

/// Lower links (VLAN sub-interfaces) that plumb-made macvlans in any
/// namespace still sit on, by name.
async fn inventory_host_users(host: &Netlink) -> Result<HashSet<String>> {
    let mut used = HashSet::new();
    for wiring in inventory(host).await? {
        if wiring.kind == "macvlan" {
            match wiring.vlan {
                Some(v) => used.insert(format!("{}.{v}", wiring.host_if)),
                None => used.insert(wiring.host_if.clone()),
            };
        }
    }
    Ok(used)
}

/// Everything plumb wired, found in every named namespace and in the
/// namespaces of running processes.
pub async fn inventory(host: &Netlink) -> Result<Vec<Wiring>> {
    let mut seen = HashSet::new();
    seen.insert(host.netns().inode());
    let mut guests = Vec::new();
    for name in Netns::list_named()? {
        if let Ok(ns) = Netns::named(&name) {
            if seen.insert(ns.inode()) {
                guests.push(ns);
            }
        }
    }
    // Containers whose namespace is not in /run/netns (docker, podman rootful).
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            if seen.insert(meta.ino()) {
                if let Ok(ns) = Netns::pid(pid) {
                    guests.push(ns);
                }
            }
        }
    }
    let mut out = Vec::new();
    for ns in guests {
        let Ok(nl) = Netlink::open(&ns).await else {
            continue;
        };
        let Ok(links) = nl.links().await else {
            continue;
        };
        for link in links {
            let Some(record) = record_of(&link) else {
                continue;
            };
            let Some(host_if) = record.get("host") else {
                continue;
            };
            let addresses = nl
                .addresses(Some(link.index))
                .await?
                .into_iter()
                .map(|a| a.network)
                .filter(|n| !is_link_local(n))
                .collect();
            out.push(Wiring {
                guest: ns.label().to_string(),
                guest_if: link.name.clone(),
                kind: link.kind.clone().unwrap_or_default(),
                host_if: host_if.to_string(),
                host_side: record.get("peer").map(String::from),
                vlan: record.get("vlan").and_then(|v| v.parse().ok()),
                mac: link.mac,
                mtu: link.mtu,
                addresses,
            });
        }
    }
    out.sort_by(|a, b| (&a.guest, &a.guest_if).cmp(&(&b.guest, &b.guest_if)));
    Ok(out)
}

fn is_link_local(net: &IpNetwork) -> bool {
    match net.ip() {
        IpAddr::V6(ip) => ip.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(ip) => ip.is_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_alias() {
        let r = Record::new(&[("host", "br0"), ("peer", "pl1234abcd"), ("vlan", "")]);
        let alias = r.render();
        assert_eq!(alias, "plumb:host=br0 peer=pl1234abcd vlan=");
        let back = Record::parse(&alias).unwrap();
        assert_eq!(back.get("host"), Some("br0"));
        assert_eq!(back.get("vlan"), Some(""));
        assert!(Record::parse("someone else's alias").is_none());
    }

    #[test]
    fn host_side_names_fit_and_differ() {
        let ns = Netns::current().unwrap();
        let a = default_host_side_name(&ns, "eth1");
        let b = default_host_side_name(&ns, "eth2");
        assert_ne!(a, b);
        assert_eq!(a.len(), 10);
        assert!(validate_ifname(&a).is_ok());
    }
}
