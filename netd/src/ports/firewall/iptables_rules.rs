//! The chains and rules of weft's iptables backend, laid out like the CNI
//! portmap plugin's: the way in from the built-in chains, one DNAT rule per
//! published host port, localhost, hairpin and outbound masquerade. Each
//! builder's comment shows the rules it emits in iptables-save syntax.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use plumb::firewall::iptables::IpFamily as Family;

use super::iptables_syntax::{NatTable, Restore, Rule, Target};
use super::NetworkRules;
use crate::ports::mapping::{PortForward, PublishedPort};

/// Published ports.
pub const DNAT_CHAIN: &str = "WEFT-DNAT";
/// Localhost and hairpin masquerade, and the way into WEFT-MASQ.
pub const POSTROUTING_CHAIN: &str = "WEFT-POSTROUTING";
/// Masquerade of container traffic leaving the cluster.
pub const MASQ_CHAIN: &str = "WEFT-MASQ";
/// Every chain weft owns in the nat table.
pub(super) const CHAINS: [&str; 3] = [DNAT_CHAIN, POSTROUTING_CHAIN, MASQ_CHAIN];

pub(super) fn host_network(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix")
}

/// `-A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT`,
/// `-A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT` and
/// `-A POSTROUTING -j WEFT-POSTROUTING`: the ways in from the built-in chains.
/// ip6tables' OUTPUT jump skips ::1: a packet from ::1 cannot leave the host
/// once DNATed (IPv6 has no `route_localnet`), so it is left to a local
/// listener (netd's `[::1]` relay).
pub(super) fn entry_jumps(family: Family) -> [Rule; 3] {
    let mut output = local_jump("OUTPUT");
    if family == Family::V6 {
        output.destination_except = Some("::1/128".parse().expect("valid"));
    }
    [
        local_jump("PREROUTING"),
        output,
        Rule::new("POSTROUTING", Target::Jump(POSTROUTING_CHAIN)),
    ]
}

/// `-A <chain> -m addrtype --dst-type LOCAL -j WEFT-DNAT`
pub(super) fn local_jump(chain: &'static str) -> Rule {
    Rule {
        local_destination: true,
        ..Rule::new(chain, Target::Jump(DNAT_CHAIN))
    }
}

/// Entry jumps earlier versions made that the current ones replace: the
/// ip6tables OUTPUT jump that also took ::1.
pub(super) fn replaced_entry_jumps(family: Family) -> Vec<Rule> {
    if family == Family::V6 {
        vec![local_jump("OUTPUT")]
    } else {
        Vec::new()
    }
}

/// `-A WEFT-DNAT [-d 198.18.0.1/32] -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.9.0.3:80`
pub(super) fn dnat(forward: &PortForward) -> Rule {
    Rule {
        destination: forward.host_ip.map(host_network),
        protocol: Some((forward.protocol, forward.host_port)),
        ..Rule::new(
            DNAT_CHAIN,
            Target::Dnat(forward.container_ip, forward.container_port),
        )
    }
}

/// `-A WEFT-POSTROUTING -s 127.0.0.0/8 -m conntrack --ctstate DNAT -j MASQUERADE`
/// (IPv4 only), then per subnet
/// `-A WEFT-POSTROUTING -s 10.9.0.0/24 -o weft0 -m conntrack --ctstate DNAT -j MASQUERADE` (hairpin) and
/// `-A WEFT-POSTROUTING -s 10.9.0.0/24 -j WEFT-MASQ` (when masquerading).
pub(super) fn postrouting_rules(net: &NetworkRules, family: Family) -> Vec<Rule> {
    let mut rules = Vec::new();
    if family == Family::V4 {
        rules.push(Rule {
            source: Some("127.0.0.0/8".parse().expect("valid")),
            dnatted: true,
            ..Rule::new(POSTROUTING_CHAIN, Target::Masquerade)
        });
    }
    let subnets = net.subnets_of(family == Family::V6);
    for subnet in &subnets {
        rules.push(Rule {
            source: Some(*subnet),
            out_interface: Some(net.bridge.clone()),
            dnatted: true,
            ..Rule::new(POSTROUTING_CHAIN, Target::Masquerade)
        });
    }
    if net.masquerade {
        for subnet in &subnets {
            rules.push(Rule {
                source: Some(*subnet),
                ..Rule::new(POSTROUTING_CHAIN, Target::Jump(MASQ_CHAIN))
            });
        }
    }
    rules
}

/// `-A WEFT-MASQ -d 10.9.0.0/24 -j RETURN` per subnet and cluster range, then
/// `-A WEFT-MASQ -j MASQUERADE`.
pub(super) fn masq_rules(net: &NetworkRules, family: Family) -> Vec<Rule> {
    if !net.masquerade {
        return Vec::new();
    }
    let mut rules: Vec<Rule> = net
        .subnets_of(family == Family::V6)
        .into_iter()
        .chain(net.cluster_of(family == Family::V6))
        .map(|d| Rule {
            destination: Some(d),
            ..Rule::new(MASQ_CHAIN, Target::Return)
        })
        .collect();
    rules.push(Rule::new(MASQ_CHAIN, Target::Masquerade));
    rules
}

/// The port-by-port forwards of `family`'s ports, each once: one
/// [`dnat`] rule each.
pub(super) fn forwards_of(ports: &[PublishedPort], family: Family) -> Vec<PortForward> {
    let mut seen = BTreeSet::new();
    ports
        .iter()
        .filter(|p| Family::of(p.container_ip) == family)
        .flat_map(|p| p.forwards())
        .filter(|f| seen.insert(*f))
        .collect()
}

/// The restore that makes `family`'s nat table hold `net`'s chains, keeping
/// WEFT-DNAT's rules unless `ports` replaces them: `:WEFT-DNAT - [0:0]` (when
/// new or replaced), `:WEFT-POSTROUTING - [0:0]`, `:WEFT-MASQ - [0:0]`, the
/// [`postrouting_rules`] and [`masq_rules`], the [`dnat`] rules of `ports`,
/// `-I` for each missing [`entry_jumps`] rule and `-D` for each stale one.
pub(super) fn network_restore(
    net: &NetworkRules,
    family: Family,
    present: &NatTable,
    ports: Option<&[PublishedPort]>,
) -> Restore {
    let mut restore = Restore::default();
    if ports.is_some() || !present.chains.contains(DNAT_CHAIN) {
        restore.declare(DNAT_CHAIN);
    }
    restore.declare(POSTROUTING_CHAIN);
    restore.declare(MASQ_CHAIN);
    for rule in postrouting_rules(net, family)
        .iter()
        .chain(&masq_rules(net, family))
    {
        restore.append(rule);
    }
    if let Some(ports) = ports {
        for forward in forwards_of(ports, family) {
            restore.append(&dnat(&forward));
        }
    }
    for jump in entry_jumps(family) {
        if !present.has(&jump) {
            restore.insert(&jump);
        }
    }
    for stale in replaced_entry_jumps(family) {
        if present.has(&stale) {
            restore.delete(&stale);
        }
    }
    restore
}
