//! The typed model of the nft commands weft issues (families, chains, sets
//! and maps, matches, verdicts, rules, batches), rendered in nft's own text
//! syntax for `nft -f -`. What the rules *are* lives in nft_rules.rs.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The table weft owns, in the `inet` family.
pub const TABLE: &str = "weft";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The payload protocol keyword: `ip` or `ip6`.
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    pub(crate) fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    pub(crate) fn is_v6(self) -> bool {
        self == Family::V6
    }
}

pub(crate) const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Chain {
    Prerouting,
    Output,
    Published,
    Postrouting,
}

pub(crate) const CHAINS: [Chain; 4] = [
    Chain::Prerouting,
    Chain::Output,
    Chain::Published,
    Chain::Postrouting,
];

impl Chain {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Published => "published",
            Chain::Postrouting => "postrouting",
        }
    }

    /// The base-chain declaration, for chains attached to a hook.
    pub(crate) fn hook(self) -> Option<&'static str> {
        match self {
            Chain::Prerouting => Some("type nat hook prerouting priority dstnat; policy accept;"),
            // nft 1.0.6 knows `dstnat` only for prerouting: -100 is its value.
            Chain::Output => Some("type nat hook output priority -100; policy accept;"),
            Chain::Postrouting => Some("type nat hook postrouting priority srcnat; policy accept;"),
            Chain::Published => None,
        }
    }
}

/// A named set or map of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SetDecl {
    pub(crate) name: &'static str,
    pub(crate) kind: SetKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetKind {
    /// Address prefixes: `type ipv4_addr; flags interval;`
    Networks(Family),
    /// Published ports, keyed with the host address or not.
    Ports { family: Family, by_host_ip: bool },
}

pub(crate) const SUBNETS4: SetDecl = networks("subnets4", Family::V4);
pub(crate) const SUBNETS6: SetDecl = networks("subnets6", Family::V6);
pub(crate) const CLUSTER4: SetDecl = networks("cluster4", Family::V4);
pub(crate) const CLUSTER6: SetDecl = networks("cluster6", Family::V6);
pub(crate) const NETWORK_SETS: [SetDecl; 4] = [SUBNETS4, SUBNETS6, CLUSTER4, CLUSTER6];
pub(crate) const PORT_MAPS: [SetDecl; 4] = [
    ports("ports4", Family::V4, true),
    ports("anyports4", Family::V4, false),
    ports("ports6", Family::V6, true),
    ports("anyports6", Family::V6, false),
];

pub(crate) const fn networks(name: &'static str, family: Family) -> SetDecl {
    SetDecl {
        name,
        kind: SetKind::Networks(family),
    }
}

pub(crate) const fn ports(name: &'static str, family: Family, by_host_ip: bool) -> SetDecl {
    SetDecl {
        name,
        kind: SetKind::Ports { family, by_host_ip },
    }
}

pub(crate) fn subnets(family: Family) -> SetDecl {
    match family {
        Family::V4 => SUBNETS4,
        Family::V6 => SUBNETS6,
    }
}

pub(crate) fn cluster(family: Family) -> SetDecl {
    match family {
        Family::V4 => CLUSTER4,
        Family::V6 => CLUSTER6,
    }
}

pub(crate) fn port_map(family: Family, by_host_ip: bool) -> SetDecl {
    *PORT_MAPS
        .iter()
        .find(|m| m.kind == SetKind::Ports { family, by_host_ip })
        .expect("one map per family and keying")
}

impl fmt::Display for SetDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SetKind::Networks(family) => write!(
                f,
                "set inet {TABLE} {} {{ type {}; flags interval; }}",
                self.name,
                family.addr_type()
            ),
            SetKind::Ports { family, by_host_ip } => {
                let host = if by_host_ip {
                    format!(" . {}", family.addr_type())
                } else {
                    String::new()
                };
                write!(
                    f,
                    "map inet {TABLE} {} {{ type inet_proto{host} . inet_service : {} . inet_service; }}",
                    self.name,
                    family.addr_type()
                )
            }
        }
    }
}

/// A match in a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Match {
    /// `fib daddr type local`
    LocalDestination,
    /// `ct status dnat`
    Dnatted,
    /// `oifname "weft0"`
    OutputInterface(String),
    /// `ip saddr 127.0.0.0/8`, `ip6 daddr != @subnets6`, …
    Address {
        family: Family,
        source: bool,
        negated: bool,
        value: AddressValue,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddressValue {
    Network(IpNetwork),
    Set(&'static str),
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::LocalDestination => f.write_str("fib daddr type local"),
            Match::Dnatted => f.write_str("ct status dnat"),
            Match::OutputInterface(name) => write!(f, "oifname \"{name}\""),
            Match::Address {
                family,
                source,
                negated,
                value,
            } => {
                let field = if *source { "saddr" } else { "daddr" };
                let op = if *negated { " != " } else { " " };
                write!(f, "{} {field}{op}", family.keyword())?;
                match value {
                    AddressValue::Network(n) => write!(f, "{n}"),
                    AddressValue::Set(name) => write!(f, "@{name}"),
                }
            }
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Jump(Chain),
    /// Leave the chain: no NAT from this table.
    Return,
    Masquerade,
    /// `dnat ip to meta l4proto [. ip daddr] . th dport map @MAP`
    DnatMap(SetDecl),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Jump(chain) => write!(f, "jump {}", chain.name()),
            Verdict::Return => f.write_str("return"),
            Verdict::Masquerade => f.write_str("masquerade"),
            Verdict::DnatMap(map) => {
                let SetKind::Ports { family, by_host_ip } = map.kind else {
                    unreachable!("dnat maps are port maps");
                };
                let key = if by_host_ip {
                    format!("meta l4proto . {} daddr . th dport", family.keyword())
                } else {
                    "meta l4proto . th dport".to_string()
                };
                write!(f, "dnat {} to {key} map @{}", family.keyword(), map.name)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) chain: Chain,
    pub(crate) matches: Vec<Match>,
    pub(crate) verdict: Verdict,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.verdict)
    }
}

pub(crate) fn address(family: Family, source: bool, negated: bool, value: AddressValue) -> Match {
    Match::Address {
        family,
        source,
        negated,
        value,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    AddTable,
    DeleteTable,
    AddChain(Chain),
    FlushChain(Chain),
    AddSet(SetDecl),
    FlushSet(SetDecl),
    AddElements { set: String, elements: Vec<String> },
    DeleteElements { set: String, elements: Vec<String> },
    AddRule(Rule),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::AddTable => write!(f, "add table inet {TABLE}"),
            Command::DeleteTable => write!(f, "delete table inet {TABLE}"),
            Command::AddChain(chain) => {
                write!(f, "add chain inet {TABLE} {}", chain.name())?;
                match chain.hook() {
                    Some(hook) => write!(f, " {{ {hook} }}"),
                    None => Ok(()),
                }
            }
            Command::FlushChain(chain) => write!(f, "flush chain inet {TABLE} {}", chain.name()),
            Command::AddSet(set) => write!(f, "add {set}"),
            Command::FlushSet(set) => {
                let keyword = match set.kind {
                    SetKind::Networks(_) => "set",
                    SetKind::Ports { .. } => "map",
                };
                write!(f, "flush {keyword} inet {TABLE} {}", set.name)
            }
            Command::AddElements { set, elements } => {
                write!(
                    f,
                    "add element inet {TABLE} {set} {{ {} }}",
                    elements.join(", ")
                )
            }
            Command::DeleteElements { set, elements } => {
                write!(
                    f,
                    "delete element inet {TABLE} {set} {{ {} }}",
                    elements.join(", ")
                )
            }
            Command::AddRule(rule) => {
                write!(f, "add rule inet {TABLE} {} {rule}", rule.chain.name())
            }
        }
    }
}

/// Commands that `nft -f -` applies as one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch(pub(crate) Vec<Command>);

impl Batch {
    pub(crate) fn push(&mut self, command: Command) {
        self.0.push(command);
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for command in &self.0 {
            writeln!(f, "{command}")?;
        }
        Ok(())
    }
}
