//! The rules, sets and map elements of table `inet weft`: what weft's
//! nftables backend puts in the kernel, built as typed commands
//! (nft_syntax.rs) and typed map elements (plumb's `SetElement`). Each
//! builder's comment shows the rule it emits in nft syntax.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use plumb::firewall::nft_netlink::{Field, SetElement};

use super::nft_syntax::{
    address, cluster, port_map, subnets, AddressValue, Batch, Chain, Command, Family, Match, Rule,
    SetDecl, Verdict, CHAINS, FAMILIES, NETWORK_SETS, PORT_MAPS,
};
use super::NetworkRules;
use crate::ports::mapping::{PortForward, PublishedPort};

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

/// Every rule of the table for `net`, in chain order (the builders above
/// show each); the outbound masquerade only when `net.masquerade`.
pub(super) fn rules(net: &NetworkRules) -> Vec<Rule> {
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

/// The contents of the network sets for `net`: `subnets4 { 10.9.0.0/24 }`,
/// `cluster4 { 10.9.0.0/16 }`, and the `…6` sets likewise.
pub(super) fn network_elements(net: &NetworkRules) -> Vec<(SetDecl, Vec<String>)> {
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
/// and network sets; the port maps keep their elements:
/// `add table inet weft`, `add chain inet weft prerouting { type nat hook
/// prerouting priority dstnat; policy accept; }` (…), `add map inet weft
/// ports4 { … }` (…), `flush chain inet weft prerouting` (…), `flush set inet
/// weft subnets4`, `add element inet weft subnets4 { 10.9.0.0/24 }` (…), then
/// `add rule inet weft …` for each of [`rules`].
pub(super) fn network_batch(net: &NetworkRules) -> Batch {
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
                set: set.name.to_string(),
                elements,
            });
        }
    }
    for rule in rules(net) {
        batch.push(Command::AddRule(rule));
    }
    batch
}

/// The one description of a published port's map element, which both the
/// nfnetlink path and the nft text fallback use: `tcp . 198.18.0.1 . 8080 :
/// 10.9.0.3 . 80` in ports4 (host address given), or `tcp . 8080 : 10.9.0.3
/// . 80` in anyports4 (every local address).
pub(super) fn port_element(forward: &PortForward) -> SetElement {
    let family = Family::of(forward.container_ip);
    let map = port_map(family, forward.host_ip.is_some());
    let mut key = vec![Field::Proto(forward.protocol.number())];
    key.extend(forward.host_ip.map(Field::Addr));
    key.push(Field::Port(forward.host_port));
    SetElement {
        set: map.name.to_string(),
        key,
        data: vec![
            Field::Addr(forward.container_ip),
            Field::Port(forward.container_port),
        ],
    }
}

/// The elements of `ports`, without duplicates, in a stable order.
pub(super) fn port_map_elements(ports: &[PublishedPort]) -> Vec<SetElement> {
    let mut elements: Vec<SetElement> = Vec::new();
    for port in ports {
        for forward in port.forwards() {
            let element = port_element(&forward);
            if !elements.contains(&element) {
                elements.push(element);
            }
        }
    }
    elements
}

/// The elements of `ports` in nft's text (their `Display`), grouped per map,
/// for the `nft -f -` fallback.
pub(super) fn port_elements(ports: &[PublishedPort]) -> BTreeMap<String, Vec<String>> {
    let mut maps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for element in port_map_elements(ports) {
        maps.entry(element.set.clone())
            .or_default()
            .push(element.to_string());
    }
    maps
}

/// `add element inet weft <map> { <element>, … }` for every map `ports` touch.
pub(super) fn add_port_elements(batch: &mut Batch, ports: &[PublishedPort]) {
    for (map, elements) in port_elements(ports) {
        batch.push(Command::AddElements { set: map, elements });
    }
}

#[cfg(test)]
mod tests {
    use super::super::example_network as net;
    use super::super::nft_syntax::SUBNETS6;
    use super::*;

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
}
