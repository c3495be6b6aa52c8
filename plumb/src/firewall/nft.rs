//! The nftables backend: everything lives in table `inet weft`.
//!
//! ```text
//! table inet weft {
//!   map ports4    { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service }
//!   map anyports4 { type inet_proto . inet_service : ipv4_addr . inet_service }
//!   map ports6 / anyports6 likewise with ipv6_addr
//!   set subnets4, cluster4, subnets6, cluster6 { type ipvN_addr; flags interval }
//!   chain prerouting  { type nat hook prerouting priority dstnat;  fib daddr type local jump published }
//!   chain output      { type nat hook output priority -100;        ip6 daddr ::1 return;
//!                                                                  fib daddr type local jump published }
//!   chain published   { dnat via ports4, then anyports4, then ports6, then anyports6 }
//!   chain postrouting { type nat hook postrouting priority srcnat; localhost, hairpin, outbound masquerade }
//! }
//! ```
//!
//! Publishing costs one hash lookup per map per new connection, whatever the
//! number of published ports. A port published on a specific host address
//! lives in `portsN` (keyed by protocol, destination address and port); one
//! published on every local address lives in `anyportsN` (keyed by protocol
//! and port). The specific map is consulted first, so it wins.
//!
//! Port ranges are expanded into one element per port rather than interval
//! map elements: a range is published port by port (8000→80, 8001→81, …), and
//! an interval element's value would be one fixed address and port (or a
//! range nft picks from), not an offset. Per-port elements keep the lookup a
//! plain hash lookup too.
//!
//! There is no filter chain: an accept verdict here cannot overrule a drop in
//! another table, so a filter policy of our own could only break connectivity.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use serde::Deserialize;

use super::nft_netlink::{Change, MapElement};
use super::nft_syntax::{
    address, cluster, port_map, subnets, AddressValue, Batch, Chain, Command, Family, Match, Rule,
    SetDecl, Verdict, CHAINS, FAMILIES, NETWORK_SETS, PORT_MAPS,
};
use super::port::{validate_all, PortForward};
use super::{
    allow_localhost_dnat, describe_ports, localhost_dnat_allowed, run_tool, run_tool_checked,
    tool_error, Firewall, NetworkRules, PublishedPort,
};
use crate::error::{Error, Result};
use crate::netns::Netns;

/// The table weft owns, in the `inet` family.
pub const TABLE: &str = "weft";

/// The nftables backend acting in one namespace.
#[derive(Debug, Clone)]
pub struct Nftables {
    netns: Netns,
}

impl Nftables {
    /// The nftables backend for namespace `netns`; nothing is run until a call.
    pub fn new(netns: Netns) -> Nftables {
        Nftables { netns }
    }

    /// The namespace this backend changes.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Changes port map elements over nfnetlink directly (one transaction).
    /// False when that path is not taken (`WEFT_NFT_EXEC=1`, or no netfilter
    /// netlink socket could be opened): the caller runs the nft batch instead.
    fn apply_elements(&self, changes: &[(Change, &MapElement)], action: &str) -> Result<bool> {
        if std::env::var_os(super::libnft::EXEC_ENV).is_some_and(|v| v == "1") {
            return Ok(false);
        }
        tracing::debug!(
            namespace = self.netns.label(),
            changes = changes.len(),
            "{action} (nfnetlink)"
        );
        match super::nft_netlink::apply(&self.netns, TABLE, changes) {
            Ok(Ok(())) => Ok(true),
            Ok(Err(refusal)) => Err(tool_error(
                &self.netns,
                "nft",
                action,
                &refusal,
                explain_nft,
            )),
            Err(e) => {
                tracing::debug!("nfnetlink unavailable ({e}): running nft");
                Ok(false)
            }
        }
    }

    /// Runs one batch as one transaction: `nft -f -`.
    fn apply(&self, batch: &Batch, action: &str) -> Result<()> {
        tracing::debug!(namespace = self.netns.label(), "nft batch:\n{batch}");
        let text = batch.to_string();
        if let Some(outcome) = super::libnft::run(&self.netns, &text) {
            return outcome?
                .map_err(|stderr| tool_error(&self.netns, "nft", action, &stderr, explain_nft));
        }
        run_tool_checked(&self.netns, "nft", &["-f", "-"], &text, action, explain_nft).map(drop)
    }
}

/// What nft's terse errors mean for weft.
fn explain_nft(stderr: &str) -> Option<&'static str> {
    if stderr.contains("No such file or directory") {
        Some("table inet weft or one of its maps is missing: ensure or sync the network first")
    } else if stderr.contains("File exists") {
        Some("that protocol, host address and host port are already published to another destination; remove that port first")
    } else {
        None
    }
}

impl Firewall for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn ensure(&self, net: &NetworkRules) -> Result<()> {
        net.validate()?;
        allow_localhost_dnat(&self.netns)?;
        self.apply(
            &network_batch(net),
            &format!("set up NAT for bridge {}", net.bridge),
        )
    }

    fn add_ports(&self, ports: &[PublishedPort]) -> Result<()> {
        validate_all(ports)?;
        if ports.is_empty() {
            return Ok(());
        }
        let elements = port_map_elements(ports);
        let changes: Vec<_> = elements.iter().map(|e| (Change::Add, e)).collect();
        let action = describe_ports("publish", ports);
        if self.apply_elements(&changes, &action)? {
            return Ok(());
        }
        let mut batch = Batch::default();
        add_port_elements(&mut batch, ports);
        self.apply(&batch, &action)
    }

    fn remove_ports(&self, ports: &[PublishedPort]) -> Result<()> {
        validate_all(ports)?;
        if ports.is_empty() {
            return Ok(());
        }
        // `delete element` fails on an absent element and nft 1.0.6 has no
        // `destroy`: adding each element first (a no-op when it is there)
        // makes removal idempotent in the same single transaction.
        let elements = port_map_elements(ports);
        let changes: Vec<_> = elements
            .iter()
            .map(|e| (Change::Add, e))
            .chain(elements.iter().map(|e| (Change::Delete, e)))
            .collect();
        let action = describe_ports("withdraw", ports);
        if self.apply_elements(&changes, &action)? {
            return Ok(());
        }
        let mut batch = Batch::default();
        add_port_elements(&mut batch, ports);
        for (map, elements) in port_elements(ports) {
            batch.push(Command::DeleteElements { set: map, elements });
        }
        self.apply(&batch, &action)
    }

    fn sync(&self, net: &NetworkRules, ports: &[PublishedPort]) -> Result<()> {
        net.validate()?;
        validate_all(ports)?;
        allow_localhost_dnat(&self.netns)?;
        let mut batch = network_batch(net);
        for map in PORT_MAPS {
            batch.push(Command::FlushSet(map));
        }
        add_port_elements(&mut batch, ports);
        self.apply(
            &batch,
            &format!(
                "sync NAT for bridge {} and {} published ports",
                net.bridge,
                ports.len()
            ),
        )
    }

    fn is_intact(&self, net: &NetworkRules) -> Result<bool> {
        net.validate()?;
        let action = "list table inet weft";
        let out = run_tool(
            &self.netns,
            "nft",
            &["-j", "list", "table", "inet", TABLE],
            "",
            action,
        )?;
        if !out.success {
            if out.stderr.contains("No such file or directory") {
                return Ok(false);
            }
            return Err(Error::Firewall {
                tool: "nft",
                action: action.into(),
                namespace: self.netns.label().into(),
                message: out.stderr.trim().into(),
            });
        }
        let listing: Listing = serde_json::from_str(&out.stdout).map_err(|e| Error::Firewall {
            tool: "nft",
            action: action.into(),
            namespace: self.netns.label().into(),
            message: format!("unreadable JSON listing: {e}"),
        })?;
        Ok(listing.matches(net) && localhost_dnat_allowed(&self.netns)?)
    }

    fn teardown(&self) -> Result<()> {
        // Adding the table first makes the delete succeed when it is gone already.
        let batch = Batch(vec![Command::AddTable, Command::DeleteTable]);
        self.apply(&batch, "remove table inet weft")
    }
}

// --- Rule builders -----------------------------------------------------------

/// `fib daddr type local jump published` — in prerouting (other hosts,
/// containers) and in output (the host itself, 127.0.0.1 included).
fn jump_to_published(chain: Chain) -> Rule {
    Rule {
        chain,
        matches: vec![Match::LocalDestination],
        verdict: Verdict::Jump(Chain::Published),
    }
}

/// `ip6 daddr ::1 return` in output, before the jump: a packet from ::1
/// cannot leave the host once DNATed (IPv6 has no `route_localnet`), so it
/// is left alone for a local listener (netd's `[::1]` relay).
fn ipv6_localhost_left_alone() -> Rule {
    Rule {
        chain: Chain::Output,
        matches: vec![address(
            Family::V6,
            false,
            false,
            AddressValue::Network("::1/128".parse().expect("valid")),
        )],
        verdict: Verdict::Return,
    }
}

/// `dnat ip to meta l4proto . ip daddr . th dport map @ports4` (host address given), or
/// `dnat ip to meta l4proto . th dport map @anyports4` (every local address);
/// `ip6` and the `…6` maps likewise.
fn dnat_published(map: SetDecl) -> Rule {
    Rule {
        chain: Chain::Published,
        matches: vec![],
        verdict: Verdict::DnatMap(map),
    }
}

/// `ct status dnat ip saddr 127.0.0.0/8 masquerade` — the host reaching a
/// published port through 127.0.0.1: the container must answer a routable address.
fn masquerade_localhost() -> Rule {
    Rule {
        chain: Chain::Postrouting,
        matches: vec![
            Match::Dnatted,
            address(
                Family::V4,
                true,
                false,
                AddressValue::Network("127.0.0.0/8".parse().expect("valid")),
            ),
        ],
        verdict: Verdict::Masquerade,
    }
}

/// `ct status dnat oifname "weft0" ip saddr @subnets4 masquerade` — hairpin: a
/// container reaching a published port through the host address is DNATed
/// back onto the bridge; without masquerade the target would answer the
/// client directly and the client would drop the reply.
fn masquerade_hairpin(family: Family, bridge: &str) -> Rule {
    Rule {
        chain: Chain::Postrouting,
        matches: vec![
            Match::Dnatted,
            Match::OutputInterface(bridge.to_string()),
            address(family, true, false, AddressValue::Set(subnets(family).name)),
        ],
        verdict: Verdict::Masquerade,
    }
}

/// `ip saddr @subnets4 ip daddr != @subnets4 ip daddr != @cluster4 masquerade`
/// — containers reaching the outside world; the cluster stays unmasqueraded.
fn masquerade_outbound(family: Family) -> Rule {
    Rule {
        chain: Chain::Postrouting,
        matches: vec![
            address(family, true, false, AddressValue::Set(subnets(family).name)),
            address(family, false, true, AddressValue::Set(subnets(family).name)),
            address(family, false, true, AddressValue::Set(cluster(family).name)),
        ],
        verdict: Verdict::Masquerade,
    }
}

/// Every rule of the table for `net`, in chain order.
fn rules(net: &NetworkRules) -> Vec<Rule> {
    let mut rules = vec![
        jump_to_published(Chain::Prerouting),
        ipv6_localhost_left_alone(),
        jump_to_published(Chain::Output),
    ];
    rules.extend(PORT_MAPS.into_iter().map(dnat_published));
    rules.push(masquerade_localhost());
    for family in FAMILIES {
        rules.push(masquerade_hairpin(family, &net.bridge));
    }
    if net.masquerade {
        rules.extend(FAMILIES.into_iter().map(masquerade_outbound));
    }
    rules
}

/// The contents of the network sets for `net`.
fn network_elements(net: &NetworkRules) -> Vec<(SetDecl, Vec<String>)> {
    let strings = |nets: Vec<IpNetwork>| nets.iter().map(|n| n.to_string()).collect();
    FAMILIES
        .into_iter()
        .flat_map(|family| {
            [
                (subnets(family), strings(net.subnets_of(family.is_v6()))),
                (cluster(family), strings(net.cluster_of(family.is_v6()))),
            ]
        })
        .collect()
}

/// Declares the table with its chains, sets and maps, and replaces the rules
/// and network sets; the port maps keep their elements.
fn network_batch(net: &NetworkRules) -> Batch {
    let mut batch = Batch(vec![Command::AddTable]);
    for chain in CHAINS {
        batch.push(Command::AddChain(chain));
    }
    for set in NETWORK_SETS.into_iter().chain(PORT_MAPS) {
        batch.push(Command::AddSet(set));
    }
    for chain in CHAINS {
        batch.push(Command::FlushChain(chain));
    }
    for (set, elements) in network_elements(net) {
        batch.push(Command::FlushSet(set));
        if !elements.is_empty() {
            batch.push(Command::AddElements {
                set: set.name,
                elements,
            });
        }
    }
    for rule in rules(net) {
        batch.push(Command::AddRule(rule));
    }
    batch
}

/// `tcp . 198.18.0.1 . 8080 : 10.9.0.3 . 80` in ports4, or `tcp . 8080 : 10.9.0.3 . 80`
/// in anyports4.
fn port_element(forward: &PortForward) -> (SetDecl, String) {
    let family = Family::of(forward.container_ip);
    let map = port_map(family, forward.host_ip.is_some());
    let host = match forward.host_ip {
        Some(ip) => format!("{ip} . "),
        None => String::new(),
    };
    let element = format!(
        "{} . {host}{} : {} . {}",
        forward.protocol, forward.host_port, forward.container_ip, forward.container_port
    );
    (map, element)
}

/// The elements of `ports` as nfnetlink sends them, without duplicates.
fn port_map_elements(ports: &[PublishedPort]) -> Vec<MapElement> {
    let mut elements: Vec<MapElement> = Vec::new();
    for port in ports {
        for forward in port.forwards() {
            let map = port_map(Family::of(forward.container_ip), forward.host_ip.is_some());
            let element = MapElement::port(map.name, &forward);
            if !elements.contains(&element) {
                elements.push(element);
            }
        }
    }
    elements
}

/// The elements of `ports`, grouped per map, without duplicates.
fn port_elements(ports: &[PublishedPort]) -> BTreeMap<&'static str, Vec<String>> {
    let mut maps: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for port in ports {
        for forward in port.forwards() {
            let (map, element) = port_element(&forward);
            let elements = maps.entry(map.name).or_default();
            if !elements.contains(&element) {
                elements.push(element);
            }
        }
    }
    maps
}

fn add_port_elements(batch: &mut Batch, ports: &[PublishedPort]) {
    for (map, elements) in port_elements(ports) {
        batch.push(Command::AddElements { set: map, elements });
    }
}

// --- Reading back `nft -j list table inet weft` -------------------------------

/// The parts of nft's JSON listing that tell whether the table is intact:
/// which chains hold how many rules, and which sets hold how many elements.
#[derive(Debug, Deserialize)]
struct Listing {
    nftables: Vec<ListedObject>,
}

#[derive(Debug, Deserialize)]
struct ListedObject {
    chain: Option<Named>,
    rule: Option<ListedRule>,
    set: Option<ListedSet>,
    map: Option<ListedSet>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ListedRule {
    chain: String,
}

#[derive(Debug, Deserialize)]
struct ListedSet {
    name: String,
    #[serde(default)]
    elem: Vec<serde_json::Value>,
}

impl Listing {
    /// True when every chain holds exactly the rules `net` needs, every map
    /// exists and every network set holds the right number of prefixes.
    fn matches(&self, net: &NetworkRules) -> bool {
        let mut rule_counts: BTreeMap<&str, usize> = BTreeMap::new();
        for object in &self.nftables {
            if let Some(rule) = &object.rule {
                *rule_counts.entry(rule.chain.as_str()).or_default() += 1;
            }
        }
        let chains: Vec<&str> = self
            .nftables
            .iter()
            .filter_map(|o| o.chain.as_ref().map(|c| c.name.as_str()))
            .collect();
        let expected = rules(net);
        let chains_ok = CHAINS.iter().all(|chain| {
            let want = expected.iter().filter(|r| r.chain == *chain).count();
            chains.contains(&chain.name())
                && rule_counts.get(chain.name()).copied().unwrap_or(0) == want
        });
        let maps: Vec<&str> = self
            .nftables
            .iter()
            .filter_map(|o| o.map.as_ref().map(|m| m.name.as_str()))
            .collect();
        let maps_ok = PORT_MAPS.iter().all(|m| maps.contains(&m.name));
        let sets_ok = network_elements(net).iter().all(|(set, elements)| {
            self.nftables
                .iter()
                .filter_map(|o| o.set.as_ref())
                .any(|s| s.name == set.name && s.elem.len() == elements.len())
        });
        chains_ok && maps_ok && sets_ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::nft_syntax::SUBNETS6;
    use super::*;

    fn net() -> NetworkRules {
        NetworkRules {
            bridge: "weft0".into(),
            subnets: vec![
                "10.9.0.1/24".parse().unwrap(),
                "fd00:9::/64".parse().unwrap(),
            ],
            masquerade: true,
            cluster_ranges: vec!["10.9.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn rules_render_in_nft_syntax() {
        let text: Vec<String> = rules(&net())
            .iter()
            .map(|r| Command::AddRule(r.clone()).to_string())
            .collect();
        assert_eq!(
            text,
            [
                "add rule inet weft prerouting fib daddr type local jump published",
                "add rule inet weft output ip6 daddr ::1/128 return",
                "add rule inet weft output fib daddr type local jump published",
                "add rule inet weft published dnat ip to meta l4proto . ip daddr . th dport map @ports4",
                "add rule inet weft published dnat ip to meta l4proto . th dport map @anyports4",
                "add rule inet weft published dnat ip6 to meta l4proto . ip6 daddr . th dport map @ports6",
                "add rule inet weft published dnat ip6 to meta l4proto . th dport map @anyports6",
                "add rule inet weft postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade",
                "add rule inet weft postrouting ct status dnat oifname \"weft0\" ip saddr @subnets4 masquerade",
                "add rule inet weft postrouting ct status dnat oifname \"weft0\" ip6 saddr @subnets6 masquerade",
                "add rule inet weft postrouting ip saddr @subnets4 ip daddr != @subnets4 ip daddr != @cluster4 masquerade",
                "add rule inet weft postrouting ip6 saddr @subnets6 ip6 daddr != @subnets6 ip6 daddr != @cluster6 masquerade",
            ]
        );
        let no_masq = NetworkRules {
            masquerade: false,
            ..net()
        };
        assert_eq!(rules(&no_masq).len(), rules(&net()).len() - 2);
    }

    #[test]
    fn declarations_render_in_nft_syntax() {
        assert_eq!(
            Command::AddSet(PORT_MAPS[0]).to_string(),
            "add map inet weft ports4 { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }"
        );
        assert_eq!(
            Command::AddSet(PORT_MAPS[3]).to_string(),
            "add map inet weft anyports6 { type inet_proto . inet_service : ipv6_addr . inet_service; }"
        );
        assert_eq!(
            Command::AddSet(SUBNETS6).to_string(),
            "add set inet weft subnets6 { type ipv6_addr; flags interval; }"
        );
        assert_eq!(
            Command::AddChain(Chain::Output).to_string(),
            "add chain inet weft output { type nat hook output priority -100; policy accept; }"
        );
        assert_eq!(
            Command::AddChain(Chain::Published).to_string(),
            "add chain inet weft published"
        );
        let batch = network_batch(&net()).to_string();
        assert!(batch.starts_with("add table inet weft\n"), "{batch}");
        assert!(
            batch.contains("add element inet weft subnets4 { 10.9.0.0/24 }\n"),
            "{batch}"
        );
        assert!(
            batch.contains("add element inet weft cluster4 { 10.9.0.0/16 }\n"),
            "{batch}"
        );
        assert!(batch.contains("flush set inet weft cluster6\n"), "{batch}");
        assert!(!batch.contains("add element inet weft cluster6"), "{batch}");
        // The network batch never touches the port maps' elements.
        assert!(!batch.contains("flush map"), "{batch}");
    }

    #[test]
    fn ports_become_map_elements() {
        let ports = [
            PublishedPort::parse("198.18.0.1:8000-8001:80-81", "10.9.0.3".parse().unwrap())
                .unwrap(),
            PublishedPort::parse("5353:53/udp", "fd00:9::3".parse().unwrap()).unwrap(),
            PublishedPort::parse("9:9/sctp", "10.9.0.4".parse().unwrap()).unwrap(),
            PublishedPort::parse("9:9/sctp", "10.9.0.4".parse().unwrap()).unwrap(),
        ];
        let mut batch = Batch::default();
        add_port_elements(&mut batch, &ports);
        assert_eq!(
            batch.to_string(),
            "add element inet weft anyports4 { sctp . 9 : 10.9.0.4 . 9 }\n\
             add element inet weft anyports6 { udp . 5353 : fd00:9::3 . 53 }\n\
             add element inet weft ports4 { tcp . 198.18.0.1 . 8000 : 10.9.0.3 . 80, tcp . 198.18.0.1 . 8001 : 10.9.0.3 . 81 }\n"
        );
    }

    #[test]
    fn errors_are_explained() {
        assert!(
            explain_nft("Error: Could not process rule: No such file or directory")
                .unwrap()
                .contains("ensure or sync")
        );
        assert!(explain_nft("Error: Could not process rule: File exists")
            .unwrap()
            .contains("already published"));
        assert_eq!(explain_nft("syntax error"), None);
    }

    #[test]
    fn listings_are_checked_against_the_network() {
        let net = net();
        let mut objects = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
        for chain in CHAINS {
            objects.push(serde_json::json!({"chain": {"name": chain.name()}}));
        }
        for rule in rules(&net) {
            objects.push(serde_json::json!({"rule": {"chain": rule.chain.name(), "expr": []}}));
        }
        for map in PORT_MAPS {
            objects.push(serde_json::json!({"map": {"name": map.name}}));
        }
        for (set, elements) in network_elements(&net) {
            let elem: Vec<serde_json::Value> =
                elements.iter().map(|e| serde_json::json!(e)).collect();
            objects.push(serde_json::json!({"set": {"name": set.name, "elem": elem}}));
        }
        let full = serde_json::json!({ "nftables": objects.clone() });
        let listing: Listing = serde_json::from_value(full).unwrap();
        assert!(listing.matches(&net));
        // One rule short: not intact.
        let rule_at = objects
            .iter()
            .position(|o| o.get("rule").is_some())
            .unwrap();
        let mut short = objects.clone();
        short.remove(rule_at);
        let listing: Listing =
            serde_json::from_value(serde_json::json!({ "nftables": short })).unwrap();
        assert!(!listing.matches(&net));
        // A different network (another subnet) is not what the kernel holds.
        let mut other = net.clone();
        other.subnets.push("10.10.0.0/24".parse().unwrap());
        let listing: Listing =
            serde_json::from_value(serde_json::json!({ "nftables": objects })).unwrap();
        assert!(!listing.matches(&other));
    }
}
