//! Comparing a topology with what the kernel holds: the list of actions that
//! makes the kernel match the file, in the order they can run.
//!
//! Removals come first (an old address must go before a new one is added on
//! its subnet, or the kernel drops the new secondary with the old primary),
//! then bridges, namespaces, interfaces and finally routes, which need the
//! interfaces' addresses. A planning conflict (an interface name taken by a
//! link plumb did not make, a host link that does not exist) stops everything
//! before any change.

use std::collections::HashSet;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::action::{Action, Place, WireKind};
use super::observe::{NamespaceState, Observed};
use super::{Error, Guest, Interface, Maker, Result, Topology};
use crate::link::Link;
use crate::route::Route;
use crate::wire::Record;

/// The actions that make the kernel match a topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The topology's name.
    pub topology: String,
    /// The actions, in the order they must run (removals first).
    pub actions: Vec<Action>,
}

impl Plan {
    /// True when the kernel already matches the file.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The metric the kernel gives a route added without one.
fn effective_metric(route: &Route) -> u32 {
    route
        .metric
        .unwrap_or(if route.is_ipv6() { 1024 } else { 0 })
}

/// True when `have` is the route `want` asks for (`want.dev` None: any link).
fn route_matches(want: &Route, have: &Route) -> bool {
    want.destination == have.destination
        && want.gateway == have.gateway
        && want.is_ipv6() == have.is_ipv6()
        && effective_metric(want) == effective_metric(have)
        && want
            .dev
            .as_ref()
            .is_none_or(|d| have.dev.as_ref() == Some(d))
}

/// Compares `topology` with `observed`; with `prune`, also removes what this
/// topology made that the file no longer names.
pub fn plan(topology: &Topology, observed: &Observed, prune: bool) -> Result<Plan> {
    let mut planner = Planner {
        topology,
        observed,
        prune,
        actions: Vec::new(),
        conflicts: Vec::new(),
        gone_interfaces: HashSet::new(),
        gone_namespaces: HashSet::new(),
    };
    for guest in &topology.guests {
        planner.guest(guest);
    }
    if prune {
        planner.namespaces_not_in_file();
    }
    planner.bridges();
    if !planner.conflicts.is_empty() {
        return Err(Error::Conflicts {
            topology: topology.name.clone(),
            problems: planner.conflicts,
        });
    }
    let mut actions = planner.actions;
    actions.sort_by_key(Action::phase);
    Ok(Plan {
        topology: topology.name.clone(),
        actions,
    })
}

struct Planner<'a> {
    topology: &'a Topology,
    observed: &'a Observed,
    prune: bool,
    actions: Vec<Action>,
    conflicts: Vec<String>,
    /// (guest, interface) pairs whose current link goes away (removed or re-wired).
    gone_interfaces: HashSet<(String, String)>,
    gone_namespaces: HashSet<String>,
}

impl Planner<'_> {
    fn ours(&self, maker: &Maker) -> bool {
        maker.is_topology(&self.topology.name)
    }

    /// How an interface on `host` is wired, or None (with a conflict) when
    /// the host link is neither in the file nor in the kernel.
    fn wire_kind(&mut self, guest: &str, iface: &Interface) -> Option<WireKind> {
        if self.topology.bridge(&iface.host).is_some() {
            return Some(WireKind::Veth);
        }
        match self.observed.host.link(&iface.host) {
            Some(link) if link.is_kind("bridge") => {
                if iface.mode.is_some() {
                    self.conflicts.push(format!(
                        "{guest}/{}: mode is for macvlan interfaces, but host {} is a bridge (a veth)",
                        iface.name, iface.host
                    ));
                }
                Some(WireKind::Veth)
            }
            Some(_) => Some(WireKind::Macvlan),
            None => {
                self.conflicts.push(format!(
                    "{guest}/{}: host link {} does not exist in the host namespace (declare it as a [[bridge]] to have apply create it)",
                    iface.name, iface.host
                ));
                None
            }
        }
    }

    fn guest(&mut self, guest: &Guest) {
        let state = self.observed.namespaces.get(&guest.name);
        let mut wired_here = state.is_none();
        if state.is_none() {
            self.actions.push(Action::CreateNamespace {
                name: guest.name.clone(),
            });
        }
        // Interfaces whose routes and addresses stay as they are: candidates
        // for pruning of what the file no longer names.
        let mut kept_ours = Vec::new();
        let mut routes_disturbed = false;
        for iface in &guest.interfaces {
            let Some(wiring) = self.wire_kind(&guest.name, iface) else {
                continue;
            };
            let existing = state.and_then(|s| s.link(&iface.name));
            let Some(link) = existing else {
                self.actions.push(Action::Wire {
                    guest: guest.name.clone(),
                    interface: iface.clone(),
                    wiring,
                    replaces: None,
                });
                wired_here = true;
                continue;
            };
            let state = state.expect("a link was found in it");
            let maker = Maker::of_alias(link.alias.as_deref());
            match &maker {
                Maker::Other => {
                    self.conflicts.push(format!(
                        "{}/{}: a link of that name exists in namespace {} and was not made by plumb; apply does not change it (rename the interface in the file, or remove the link)",
                        guest.name, iface.name, guest.name
                    ));
                    continue;
                }
                Maker::Topology(other) if *other != self.topology.name => {
                    self.conflicts.push(format!(
                        "{}/{}: made by topology {other}, not {}; apply one topology per interface",
                        guest.name, iface.name, self.topology.name
                    ));
                    continue;
                }
                _ => {}
            }
            let differences = self.differences(iface, wiring, link);
            if !differences.is_empty() {
                self.actions.push(Action::Wire {
                    guest: guest.name.clone(),
                    interface: iface.clone(),
                    wiring,
                    replaces: Some(differences.join(", ")),
                });
                self.gone_interfaces
                    .insert((guest.name.clone(), iface.name.clone()));
                wired_here = true;
                continue;
            }
            if maker == Maker::PlumbWire {
                self.actions.push(Action::MarkInterface {
                    guest: guest.name.clone(),
                    interface: iface.name.clone(),
                });
            }
            let place = Place::guest(&guest.name, &iface.name);
            if !link.up {
                self.actions.push(Action::BringUp {
                    place: place.clone(),
                });
            }
            let disturbed =
                self.addresses(&place, &iface.addresses, &state.addresses_of(link), true);
            routes_disturbed |= disturbed;
            for route in iface.gateway_routes() {
                if disturbed || !state.routes.iter().any(|r| route_matches(&route, &r.route)) {
                    self.actions.push(Action::AddRoute {
                        guest: guest.name.clone(),
                        route,
                    });
                }
            }
            kept_ours.push(iface.name.clone());
        }
        for route in &guest.routes {
            let route = route.to_route();
            let present =
                state.is_some_and(|s| s.routes.iter().any(|r| route_matches(&route, &r.route)));
            // A (re)wired interface, or one losing an IPv4 address, may take
            // the routes through it along: add them all again (adding is a
            // replace, harmless when present).
            if wired_here || routes_disturbed || !present {
                self.actions.push(Action::AddRoute {
                    guest: guest.name.clone(),
                    route,
                });
            }
        }
        if let (true, Some(state)) = (self.prune, state) {
            self.prune_guest(guest, state, &kept_ours);
        }
    }

    /// Why an existing interface does not match the file (empty: it does).
    fn differences(&self, iface: &Interface, wiring: WireKind, link: &Link) -> Vec<String> {
        let mut out = Vec::new();
        let record = link
            .alias
            .as_deref()
            .and_then(Record::parse)
            .unwrap_or_default();
        let kind = link.kind.as_deref().unwrap_or("device");
        if kind != wiring.to_string() {
            out.push(format!("is a {kind}, not a {wiring}"));
        }
        let host = record.get("host").unwrap_or("");
        if host != iface.host {
            out.push(format!("host {host} → {}", iface.host));
        }
        let vlan = record.get("vlan").unwrap_or("");
        let want_vlan = iface.vlan.map(|v| v.to_string()).unwrap_or_default();
        if vlan != want_vlan {
            let show = |v: &str| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.to_string()
                }
            };
            out.push(format!("VLAN {} → {}", show(vlan), show(&want_vlan)));
        }
        if let Some(mac) = iface.mac {
            if link.mac != Some(mac) {
                let have = link.mac.map(|m| m.to_string()).unwrap_or_default();
                out.push(format!("MAC {have} → {mac}"));
            }
        }
        if wiring == WireKind::Macvlan {
            let want = iface.mode.unwrap_or_default();
            if link.macvlan_mode != Some(want) {
                let have = link
                    .macvlan_mode
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "unknown".into());
                out.push(format!("mode {have} → {want}"));
            }
        }
        if let Some(mtu) = iface.mtu {
            if link.mtu != mtu {
                out.push(format!("MTU {} → {mtu}", link.mtu));
            }
        }
        if wiring == WireKind::Veth && kind == "veth" {
            let peer = record.get("peer").unwrap_or("");
            let bridge = self.observed.host.link(&iface.host);
            let host_end = self.observed.host.link(peer);
            let attached = match (bridge, host_end) {
                (Some(b), Some(h)) => h.controller == Some(b.index),
                _ => false,
            };
            if !attached {
                out.push(format!(
                    "its host end {peer} is not a port of {} here",
                    iface.host
                ));
            }
        }
        out
    }

    /// Adds what is missing; with prune on an object of ours, removes the
    /// rest. Returns true when an IPv4 address goes: the kernel may then take
    /// routes through the link and same-subnet addresses along (deleting a
    /// primary drops its secondaries unless promote_secondaries is set), so
    /// those kept are added again (adding a present one is a no-op).
    fn addresses(
        &mut self,
        place: &Place,
        want: &[IpNetwork],
        have: &[IpNetwork],
        ours: bool,
    ) -> bool {
        let mut removed_v4 = Vec::new();
        if self.prune && ours {
            for address in have.iter().filter(|a| !want.contains(a)) {
                self.actions.push(Action::RemoveAddress {
                    place: place.clone(),
                    address: *address,
                });
                if address.is_ipv4() {
                    removed_v4.push(*address);
                }
            }
        }
        for address in want {
            let missing = !have.contains(address);
            let shares_subnet = address.is_ipv4()
                && removed_v4
                    .iter()
                    .any(|r| r.prefix() == address.prefix() && r.contains(address.ip()));
            if missing || shares_subnet {
                self.actions.push(Action::AddAddress {
                    place: place.clone(),
                    address: *address,
                });
            }
        }
        !removed_v4.is_empty()
    }

    /// Interfaces of ours the file no longer names, and static routes on
    /// kept interfaces of ours that the file does not ask for.
    fn prune_guest(&mut self, guest: &Guest, state: &NamespaceState, kept_ours: &[String]) {
        for link in &state.links {
            let named = guest.interfaces.iter().any(|i| i.name == link.name);
            if !named && self.ours(&Maker::of_alias(link.alias.as_deref())) {
                self.remove_interface(&guest.name, &link.name);
            }
        }
        let wanted: Vec<Route> = guest
            .routes
            .iter()
            .map(|r| r.to_route())
            .chain(guest.interfaces.iter().flat_map(|i| i.gateway_routes()))
            .collect();
        for observed in &state.routes {
            let on_kept = observed
                .route
                .dev
                .as_ref()
                .is_some_and(|d| kept_ours.contains(d));
            if observed.is_static
                && on_kept
                && !wanted.iter().any(|w| route_matches(w, &observed.route))
            {
                self.actions.push(Action::RemoveRoute {
                    guest: guest.name.clone(),
                    route: observed.route.clone(),
                });
            }
        }
    }

    fn remove_interface(&mut self, guest: &str, interface: &str) {
        self.actions.push(Action::RemoveInterface {
            guest: guest.to_string(),
            interface: interface.to_string(),
        });
        self.gone_interfaces
            .insert((guest.to_string(), interface.to_string()));
    }

    /// Namespaces this topology created, and its interfaces in namespaces it
    /// did not create, that the file no longer names.
    fn namespaces_not_in_file(&mut self) {
        for (name, state) in &self.observed.namespaces {
            if self.topology.guest(name).is_some() {
                continue;
            }
            if self.ours(&state.maker()) {
                self.actions
                    .push(Action::RemoveNamespace { name: name.clone() });
                self.gone_namespaces.insert(name.clone());
                continue;
            }
            for link in &state.links {
                if self.ours(&Maker::of_alias(link.alias.as_deref())) {
                    self.remove_interface(name, &link.name);
                }
            }
        }
    }

    fn bridges(&mut self) {
        let host = &self.observed.host;
        for bridge in &self.topology.bridges {
            let place = Place::host(&bridge.name);
            let Some(link) = host.link(&bridge.name) else {
                self.actions.push(Action::CreateBridge {
                    name: bridge.name.clone(),
                    mtu: bridge.mtu,
                });
                self.addresses(&place, &bridge.addresses, &[], true);
                continue;
            };
            if !link.is_kind("bridge") {
                self.conflicts.push(format!(
                    "bridge {}: a link of that name exists in the host namespace and is a {}, not a bridge",
                    bridge.name,
                    link.kind.as_deref().unwrap_or("device")
                ));
                continue;
            }
            let maker = Maker::of_alias(link.alias.as_deref());
            if maker == Maker::PlumbWire {
                self.actions.push(Action::MarkBridge {
                    name: bridge.name.clone(),
                });
            }
            if let Some(mtu) = bridge.mtu.filter(|m| *m != link.mtu) {
                self.actions.push(Action::SetBridgeMtu {
                    name: bridge.name.clone(),
                    mtu,
                });
            }
            if !link.up {
                self.actions.push(Action::BringUp {
                    place: place.clone(),
                });
            }
            let ours = self.ours(&maker) || maker == Maker::PlumbWire;
            let have = host.addresses_of(link);
            self.addresses(&place, &bridge.addresses, &have, ours);
        }
        if !self.prune {
            return;
        }
        for link in &host.links {
            let ours = self.ours(&Maker::of_alias(link.alias.as_deref()));
            if !ours || !link.is_kind("bridge") || self.topology.bridge(&link.name).is_some() {
                continue;
            }
            let ports_left = host
                .links
                .iter()
                .filter(|p| p.controller == Some(link.index))
                .any(|port| !self.port_goes(port));
            if !ports_left {
                self.actions.push(Action::RemoveBridge {
                    name: link.name.clone(),
                });
            }
        }
    }

    /// True when a bridge port is the host end of a veth this plan removes.
    fn port_goes(&self, port: &Link) -> bool {
        let Some(record) = port.alias.as_deref().and_then(Record::parse) else {
            return false;
        };
        match (record.get("guest"), record.get("if")) {
            (Some(guest), Some(interface)) => {
                self.gone_namespaces.contains(guest)
                    || self
                        .gone_interfaces
                        .contains(&(guest.to_string(), interface.to_string()))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::MacAddr;
    use crate::topology::observe::ObservedRoute;
    use crate::topology::parse;
    use crate::MacvlanMode;

    const FILE: &str = r#"
name = "lab"
[[bridge]]
name = "br-app"
addresses = ["10.10.0.1/24"]

[[guest]]
name = "web1"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.2/24", "fd10::2/64"]
gateway = "10.10.0.1"
mac = "U:web1"
[[guest.route]]
to = "10.20.0.0/16"
via = "10.10.0.254"
metric = 10

[[guest]]
name = "db1"
[[guest.interface]]
name = "eth1"
host = "eth0"
addresses = ["198.18.9.2/15"]
"#;

    fn topology(text: &str) -> Topology {
        parse(text, "t.toml", "t").unwrap_or_else(|e| panic!("{e}"))
    }

    fn link(index: u32, name: &str, kind: Option<&str>, alias: Option<&str>) -> Link {
        Link {
            index,
            name: name.to_string(),
            kind: kind.map(String::from),
            mac: None,
            mtu: 1500,
            up: true,
            controller: None,
            parent: None,
            parent_elsewhere: false,
            alias: alias.map(String::from),
            vlan_id: None,
            macvlan_mode: None,
            vxlan_id: None,
        }
    }

    fn route(text: &str, is_static: bool) -> ObservedRoute {
        let words: Vec<String> = text.split_whitespace().map(String::from).collect();
        let (_, route) = Route::parse_ip_route_args(&words).unwrap();
        let ipv6 = route.is_ipv6();
        ObservedRoute {
            route: Route { ipv6, ..route },
            is_static,
        }
    }

    /// The kernel as a first apply of FILE leaves it.
    fn applied() -> Observed {
        let mut host = NamespaceState::default();
        host.links.push(link(1, "lo", None, None));
        host.links.push(link(2, "eth0", Some("veth"), None));
        host.links.push(link(
            3,
            "br-app",
            Some("bridge"),
            Some("plumb:by=apply topology=lab"),
        ));
        let mut port = link(
            4,
            "pl00000001",
            Some("veth"),
            Some("plumb:guest=web1 if=eth1 vlan="),
        );
        port.controller = Some(3);
        host.links.push(port);
        host.addresses.push((3, "10.10.0.1/24".parse().unwrap()));
        let mut web1 = NamespaceState::default();
        web1.links.push(link(
            1,
            "lo",
            None,
            Some("plumb-netns:made=netns by=apply topology=lab"),
        ));
        let mut eth1 = link(
            2,
            "eth1",
            Some("veth"),
            Some("plumb:host=br-app peer=pl00000001 vlan= by=apply topology=lab"),
        );
        eth1.mac = Some(MacAddr::from_seed("web1"));
        web1.links.push(eth1);
        web1.addresses.push((2, "10.10.0.2/24".parse().unwrap()));
        web1.addresses.push((2, "fd10::2/64".parse().unwrap()));
        web1.routes.push(route("10.10.0.0/24 dev eth1", false));
        web1.routes
            .push(route("default via 10.10.0.1 dev eth1", true));
        web1.routes.push(route(
            "10.20.0.0/16 via 10.10.0.254 dev eth1 metric 10",
            true,
        ));
        let mut db1 = NamespaceState::default();
        db1.links.push(link(
            1,
            "lo",
            None,
            Some("plumb-netns:made=netns by=apply topology=lab"),
        ));
        let mut eth1 = link(
            2,
            "eth1",
            Some("macvlan"),
            Some("plumb:host=eth0 vlan= mode=bridge by=apply topology=lab"),
        );
        eth1.macvlan_mode = Some(MacvlanMode::Bridge);
        db1.links.push(eth1);
        db1.addresses.push((2, "198.18.9.2/15".parse().unwrap()));
        let mut observed = Observed {
            host,
            ..Default::default()
        };
        observed.namespaces.insert("web1".into(), web1);
        observed.namespaces.insert("db1".into(), db1);
        observed
    }

    fn texts(plan: &Plan) -> Vec<String> {
        plan.actions.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn an_empty_kernel_gets_everything_in_order() {
        let mut observed = Observed::default();
        observed
            .host
            .links
            .push(link(2, "eth0", Some("veth"), None));
        let plan = super::plan(&topology(FILE), &observed, false).unwrap();
        assert_eq!(
            texts(&plan),
            [
                "create bridge br-app",
                "add address 10.10.0.1/24 to br-app",
                "create namespace web1",
                "create namespace db1",
                "wire web1/eth1 to br-app (veth)",
                "wire db1/eth1 to eth0 (macvlan)",
                "add route 10.20.0.0/16 via 10.10.0.254 metric 10 in web1",
            ]
        );
    }

    #[test]
    fn what_is_in_place_plans_nothing() {
        let plan = super::plan(&topology(FILE), &applied(), true).unwrap();
        assert!(plan.is_empty(), "{:?}", texts(&plan));
    }

    #[test]
    fn differences_rewire_and_missing_pieces_are_added() {
        let mut observed = applied();
        let web1 = observed.namespaces.get_mut("web1").unwrap();
        web1.links[1].mac = Some(MacAddr::new([2, 0, 0, 0, 0, 1]));
        web1.routes.retain(|r| r.route.metric != Some(10));
        let db1 = observed.namespaces.get_mut("db1").unwrap();
        db1.links[1].up = false;
        db1.addresses.clear();
        let plan = super::plan(&topology(FILE), &observed, false).unwrap();
        assert_eq!(
            texts(&plan),
            [
                format!(
                    "rewire web1/eth1 to br-app (veth): MAC 02:00:00:00:00:01 → {}",
                    MacAddr::from_seed("web1")
                ),
                "bring up db1/eth1".to_string(),
                "add address 198.18.9.2/15 to db1/eth1".to_string(),
                "add route 10.20.0.0/16 via 10.10.0.254 metric 10 in web1".to_string(),
            ]
        );
        // The host end detached from the bridge is a difference too.
        let mut observed = applied();
        observed.host.links[3].controller = None;
        let plan = super::plan(&topology(FILE), &observed, false).unwrap();
        assert!(texts(&plan)[0].contains("host end pl00000001 is not a port of br-app"));
    }

    #[test]
    fn links_plumb_did_not_make_and_missing_hosts_are_conflicts() {
        let mut observed = applied();
        let web1 = observed.namespaces.get_mut("web1").unwrap();
        web1.links[1].alias = None;
        observed.host.links.retain(|l| l.name != "eth0");
        let err = super::plan(&topology(FILE), &observed, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(
            err.contains(
                "web1/eth1: a link of that name exists in namespace web1 and was not made by plumb"
            ),
            "{err}"
        );
        assert!(
            err.contains("db1/eth1: host link eth0 does not exist in the host namespace"),
            "{err}"
        );
        let mut observed = applied();
        observed.namespaces.get_mut("db1").unwrap().links[1].alias =
            Some("plumb:host=eth0 vlan= mode=bridge by=apply topology=other".into());
        let err = super::plan(&topology(FILE), &observed, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("made by topology other"), "{err}");
    }

    #[test]
    fn prune_removes_only_what_this_topology_made() {
        let mut observed = applied();
        // Ours, not in the file: an interface, a namespace, a bridge whose
        // only port leads into that namespace, an address, a route.
        let web1 = observed.namespaces.get_mut("web1").unwrap();
        web1.links.push(link(
            3,
            "eth9",
            Some("veth"),
            Some("plumb:host=br-app peer=x by=apply topology=lab"),
        ));
        web1.addresses.push((2, "10.10.0.7/24".parse().unwrap()));
        web1.routes
            .push(route("10.30.0.0/16 via 10.10.0.254 dev eth1", true));
        // Not ours: left alone.
        web1.links.push(link(4, "theirs", Some("veth"), None));
        web1.routes
            .push(route("10.40.0.0/16 via 10.10.0.254 dev eth1", false));
        let mut old = NamespaceState::default();
        old.links.push(link(
            1,
            "lo",
            None,
            Some("plumb-netns:made=netns by=apply topology=lab"),
        ));
        observed.namespaces.insert("web2".into(), old);
        let mut shared = NamespaceState::default();
        shared.links.push(link(1, "lo", None, None));
        shared.links.push(link(
            2,
            "eth1",
            Some("veth"),
            Some("plumb:host=br-old peer=y by=apply topology=lab"),
        ));
        shared.links.push(link(
            3,
            "eth2",
            Some("veth"),
            Some("plumb:host=br-old peer=z"),
        ));
        observed.namespaces.insert("c1".into(), shared);
        observed.host.links.push(link(
            10,
            "br-old",
            Some("bridge"),
            Some("plumb:by=apply topology=lab"),
        ));
        let mut port = link(
            11,
            "pl00000002",
            Some("veth"),
            Some("plumb:guest=web2 if=eth1 vlan="),
        );
        port.controller = Some(10);
        observed.host.links.push(port);
        observed.host.links.push(link(
            12,
            "br-kept",
            Some("bridge"),
            Some("plumb:by=apply topology=lab"),
        ));
        let mut port = link(13, "mine", Some("veth"), None);
        port.controller = Some(12);
        observed.host.links.push(port);
        observed
            .host
            .links
            .push(link(14, "br-hand", Some("bridge"), None));

        let without = super::plan(&topology(FILE), &observed, false).unwrap();
        assert!(without.is_empty(), "{:?}", texts(&without));
        let plan = super::plan(&topology(FILE), &observed, true).unwrap();
        assert_eq!(
            texts(&plan),
            [
                "remove web1/eth9 (not in the file)",
                "remove c1/eth1 (not in the file)",
                "remove namespace web2 (not in the file)",
                "remove route 10.30.0.0/16 via 10.10.0.254 dev eth1 in web1 (not in the file)",
                "remove address 10.10.0.7/24 from web1/eth1 (not in the file)",
                "remove bridge br-old (not in the file)",
                "add address 10.10.0.2/24 to web1/eth1",
                "add route default via 10.10.0.1 dev eth1 in web1",
                "add route 10.20.0.0/16 via 10.10.0.254 metric 10 in web1",
            ]
        );
    }

    #[test]
    fn actions_serialize_with_their_kind() {
        let action = Action::CreateNamespace {
            name: "web1".into(),
        };
        let json = serde_json::to_value(&action).unwrap();
        assert_eq!(json["kind"], "create-namespace");
        assert_eq!(json["name"], "web1");
    }
}
