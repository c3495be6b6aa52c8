//! The iptables backend, for hosts still on iptables: chains prefixed `WEFT-`
//! in the `nat` table of iptables and ip6tables, laid out like the CNI
//! portmap plugin.
//!
//! ```text
//! nat PREROUTING        -m addrtype --dst-type LOCAL -j WEFT-DNAT
//! nat OUTPUT            -m addrtype --dst-type LOCAL -j WEFT-DNAT (IPv6: ! -d ::1/128)
//! nat POSTROUTING       -j WEFT-POSTROUTING
//! WEFT-DNAT             one DNAT rule per published host port
//! WEFT-POSTROUTING      masquerade DNATed flows from 127.0.0.0/8 and hairpinned
//!                       flows (container → host address → bridge), then
//!                       -s <subnet> -j WEFT-MASQ
//! WEFT-MASQ             RETURN for the subnets and the cluster ranges, then MASQUERADE
//! ```
//!
//! Without ipset iptables has no maps: WEFT-DNAT is walked rule by rule, so a
//! new connection to a published port costs time linear in the number of
//! published ports (a port range counts once per port). The nftables backend
//! is O(1); use this one only where nftables is not an option.
//!
//! Each change is one `iptables-restore --noflush` run per address family
//! (plumb's `firewall::iptables`; Debian's iptables is the nf_tables flavour:
//! one transaction), preceded by one `iptables-save -t nat` when the change
//! depends on what is there. Rules
//! are rendered exactly as iptables-save prints them, so comparing lines tells
//! what is present without parsing rules.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use plumb::firewall::iptables::{self as tool, IpFamily as Family};
use plumb::{Error, Netns, Result};

use super::{
    allow_localhost_dnat, describe_ports, localhost_dnat_allowed, Firewall, NetworkRules,
};
use crate::ports::mapping::{validate_all, PortForward, Protocol, PublishedPort};

/// Published ports.
pub const DNAT_CHAIN: &str = "WEFT-DNAT";
/// Localhost and hairpin masquerade, and the way into WEFT-MASQ.
pub const POSTROUTING_CHAIN: &str = "WEFT-POSTROUTING";
/// Masquerade of container traffic leaving the cluster.
pub const MASQ_CHAIN: &str = "WEFT-MASQ";
const CHAINS: [&str; 3] = [DNAT_CHAIN, POSTROUTING_CHAIN, MASQ_CHAIN];

/// The iptables backend acting in one namespace.
#[derive(Debug, Clone)]
pub struct Iptables {
    netns: Netns,
}

const FAMILIES: [Family; 2] = Family::ALL;

/// The nat table as `iptables-save -t nat` prints it.
#[derive(Debug, Default, PartialEq, Eq)]
struct NatTable {
    chains: BTreeSet<String>,
    /// `-A CHAIN …` lines, in order.
    rules: Vec<String>,
}

impl NatTable {
    fn parse(saved: &str) -> NatTable {
        let mut table = NatTable::default();
        let mut in_nat = false;
        for line in saved.lines() {
            let line = line.trim_end();
            if line.starts_with('*') {
                in_nat = line == "*nat";
            } else if !in_nat {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    table.chains.insert(name.to_string());
                }
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_string());
            }
        }
        table
    }

    fn has(&self, rule: &Rule) -> bool {
        let line = rule.to_string();
        self.rules.contains(&line)
    }

    fn rules_of(&self, chain: &str) -> Vec<&str> {
        let prefix = format!("-A {chain} ");
        self.rules
            .iter()
            .filter(|r| r.starts_with(&prefix))
            .map(String::as_str)
            .collect()
    }
}

/// A rule in `iptables-save` form: `-A CHAIN [-s] [-d] [-o] [-p] [matches] -j TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    chain: &'static str,
    source: Option<IpNetwork>,
    destination: Option<IpNetwork>,
    /// `! -d`: every destination but this.
    destination_except: Option<IpNetwork>,
    out_interface: Option<String>,
    protocol: Option<(Protocol, u16)>,
    local_destination: bool,
    dnatted: bool,
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Jump(&'static str),
    Dnat(IpAddr, u16),
    Masquerade,
    Return,
}

impl Rule {
    fn new(chain: &'static str, target: Target) -> Rule {
        Rule {
            chain,
            source: None,
            destination: None,
            destination_except: None,
            out_interface: None,
            protocol: None,
            local_destination: false,
            dnatted: false,
            target,
        }
    }

    /// Everything but the target: two DNAT rules with the same matches
    /// publish the same host port.
    fn matches_text(&self) -> String {
        let text = self.to_string();
        match text.find(" -j ") {
            Some(at) => text[..at].to_string(),
            None => text,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {}", self.chain)?;
        if let Some(s) = self.source {
            write!(f, " -s {s}")?;
        }
        if let Some(d) = self.destination {
            write!(f, " -d {d}")?;
        }
        if let Some(d) = self.destination_except {
            write!(f, " ! -d {d}")?;
        }
        if let Some(o) = &self.out_interface {
            write!(f, " -o {o}")?;
        }
        if let Some((protocol, _)) = self.protocol {
            write!(f, " -p {protocol}")?;
        }
        if self.local_destination {
            f.write_str(" -m addrtype --dst-type LOCAL")?;
        }
        if let Some((protocol, port)) = self.protocol {
            write!(f, " -m {protocol} --dport {port}")?;
        }
        if self.dnatted {
            f.write_str(" -m conntrack --ctstate DNAT")?;
        }
        match &self.target {
            Target::Jump(chain) => write!(f, " -j {chain}"),
            Target::Dnat(IpAddr::V4(ip), port) => {
                write!(f, " -j DNAT --to-destination {ip}:{port}")
            }
            Target::Dnat(IpAddr::V6(ip), port) => {
                write!(f, " -j DNAT --to-destination [{ip}]:{port}")
            }
            Target::Masquerade => f.write_str(" -j MASQUERADE"),
            Target::Return => f.write_str(" -j RETURN"),
        }
    }
}

fn host_network(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix")
}

// --- Rule builders -----------------------------------------------------------

/// `-A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT`,
/// `-A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT` and
/// `-A POSTROUTING -j WEFT-POSTROUTING`: the ways in from the built-in chains.
/// ip6tables' OUTPUT jump skips ::1: a packet from ::1 cannot leave the host
/// once DNATed (IPv6 has no `route_localnet`), so it is left to a local
/// listener (netd's `[::1]` relay).
fn entry_jumps(family: Family) -> [Rule; 3] {
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

fn local_jump(chain: &'static str) -> Rule {
    Rule {
        local_destination: true,
        ..Rule::new(chain, Target::Jump(DNAT_CHAIN))
    }
}

/// Entry jumps earlier versions made that the current ones replace: the
/// ip6tables OUTPUT jump that also took ::1.
fn replaced_entry_jumps(family: Family) -> Vec<Rule> {
    if family == Family::V6 {
        vec![local_jump("OUTPUT")]
    } else {
        Vec::new()
    }
}

/// `-A WEFT-DNAT [-d 198.18.0.1/32] -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.9.0.3:80`
fn dnat(forward: &PortForward) -> Rule {
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
fn postrouting_rules(net: &NetworkRules, family: Family) -> Vec<Rule> {
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
fn masq_rules(net: &NetworkRules, family: Family) -> Vec<Rule> {
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

fn forwards_of(ports: &[PublishedPort], family: Family) -> Vec<PortForward> {
    let mut seen = BTreeSet::new();
    ports
        .iter()
        .filter(|p| Family::of(p.container_ip) == family)
        .flat_map(|p| p.forwards())
        .filter(|f| seen.insert(*f))
        .collect()
}

// --- Restore batches ---------------------------------------------------------

/// An `iptables-restore --noflush` input for the nat table.
#[derive(Debug, Default)]
struct Restore {
    lines: Vec<String>,
}

impl Restore {
    /// `:CHAIN - [0:0]`: creates the chain, or empties it when it exists.
    fn declare(&mut self, chain: &str) {
        self.lines.push(format!(":{chain} - [0:0]"));
    }

    fn append(&mut self, rule: &Rule) {
        self.lines.push(rule.to_string());
    }

    /// Inserts at the top of the chain, ahead of rules that would end the walk.
    fn insert(&mut self, rule: &Rule) {
        self.lines.push(rule.to_string().replacen("-A ", "-I ", 1));
    }

    fn delete(&mut self, rule: &Rule) {
        self.lines.push(rule.to_string().replacen("-A ", "-D ", 1));
    }

    fn raw(&mut self, line: String) {
        self.lines.push(line);
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn render(&self) -> String {
        let mut text = String::from("*nat\n");
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// The restore that makes `family`'s nat table hold `net`'s chains, keeping
/// WEFT-DNAT's rules unless `ports` replaces them.
fn network_restore(
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

impl Iptables {
    /// The iptables backend for namespace `netns`; nothing is run until a call.
    pub fn new(netns: Netns) -> Iptables {
        Iptables { netns }
    }

    /// The namespace this backend changes.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn save(&self, family: Family) -> Result<NatTable> {
        Ok(NatTable::parse(&tool::save(&self.netns, family, "nat")?))
    }

    fn restore(&self, family: Family, restore: &Restore, action: &str) -> Result<()> {
        if restore.is_empty() {
            return Ok(());
        }
        tool::restore(&self.netns, family, &restore.render(), action)
    }

    fn tool_error(&self, tool: &'static str, action: &str, message: String) -> Error {
        Error::Firewall {
            tool,
            action: action.to_string(),
            namespace: self.netns.label().to_string(),
            message,
        }
    }

    fn families_of(ports: &[PublishedPort]) -> Vec<Family> {
        FAMILIES
            .into_iter()
            .filter(|f| ports.iter().any(|p| Family::of(p.container_ip) == *f))
            .collect()
    }
}

impl Firewall for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn ensure(&self, net: &NetworkRules) -> Result<()> {
        net.validate()?;
        allow_localhost_dnat(&self.netns)?;
        let action = format!("set up NAT for bridge {}", net.bridge);
        for family in FAMILIES {
            let present = self.save(family)?;
            self.restore(
                family,
                &network_restore(net, family, &present, None),
                &action,
            )?;
        }
        Ok(())
    }

    fn add_ports(&self, ports: &[PublishedPort]) -> Result<()> {
        validate_all(ports)?;
        let action = describe_ports("publish", ports);
        for family in Self::families_of(ports) {
            let present = self.save(family)?;
            if !present.chains.contains(DNAT_CHAIN) {
                return Err(self.tool_error(
                    family.restore_tool(),
                    &action,
                    format!("chain {DNAT_CHAIN} is missing: ensure or sync the network first"),
                ));
            }
            let existing = present.rules_of(DNAT_CHAIN);
            let mut restore = Restore::default();
            for forward in forwards_of(ports, family) {
                let rule = dnat(&forward);
                let line = rule.to_string();
                if existing.contains(&line.as_str()) || restore.lines.contains(&line) {
                    continue;
                }
                let prefix = format!("{} -j ", rule.matches_text());
                if let Some(other) = existing.iter().find(|r| r.starts_with(&prefix)) {
                    return Err(self.tool_error(
                        family.restore_tool(),
                        &action,
                        format!(
                            "{} port {}{} is already published: {other}; remove that port first",
                            forward.protocol,
                            forward
                                .host_ip
                                .map(|ip| format!("{ip} "))
                                .unwrap_or_default(),
                            forward.host_port
                        ),
                    ));
                }
                restore.raw(line);
            }
            self.restore(family, &restore, &action)?;
        }
        Ok(())
    }

    fn remove_ports(&self, ports: &[PublishedPort]) -> Result<()> {
        validate_all(ports)?;
        let action = describe_ports("withdraw", ports);
        for family in Self::families_of(ports) {
            let present = self.save(family)?;
            let mut restore = Restore::default();
            let mut seen = BTreeSet::new();
            for forward in forwards_of(ports, family) {
                let rule = dnat(&forward);
                if present.has(&rule) && seen.insert(rule.to_string()) {
                    restore.delete(&rule);
                }
            }
            self.restore(family, &restore, &action)?;
        }
        Ok(())
    }

    fn sync(&self, net: &NetworkRules, ports: &[PublishedPort]) -> Result<()> {
        net.validate()?;
        validate_all(ports)?;
        allow_localhost_dnat(&self.netns)?;
        let action = format!(
            "sync NAT for bridge {} and {} published ports",
            net.bridge,
            ports.len()
        );
        for family in FAMILIES {
            let present = self.save(family)?;
            let restore = network_restore(net, family, &present, Some(ports));
            self.restore(family, &restore, &action)?;
        }
        Ok(())
    }

    fn is_intact(&self, net: &NetworkRules) -> Result<bool> {
        net.validate()?;
        for family in FAMILIES {
            let present = self.save(family)?;
            if !CHAINS.iter().all(|c| present.chains.contains(*c))
                || !entry_jumps(family).iter().all(|j| present.has(j))
                || replaced_entry_jumps(family).iter().any(|j| present.has(j))
            {
                return Ok(false);
            }
            for (chain, want) in [
                (POSTROUTING_CHAIN, postrouting_rules(net, family)),
                (MASQ_CHAIN, masq_rules(net, family)),
            ] {
                let want: Vec<String> = want.iter().map(Rule::to_string).collect();
                if present.rules_of(chain) != want {
                    return Ok(false);
                }
            }
        }
        localhost_dnat_allowed(&self.netns)
    }

    fn teardown(&self) -> Result<()> {
        let mut errors = Vec::new();
        for family in FAMILIES {
            let result = self.save(family).and_then(|present| {
                let mut restore = Restore::default();
                for jump in entry_jumps(family)
                    .into_iter()
                    .chain(replaced_entry_jumps(family))
                {
                    if present.has(&jump) {
                        restore.delete(&jump);
                    }
                }
                let ours: Vec<&str> = CHAINS
                    .into_iter()
                    .filter(|c| present.chains.contains(*c))
                    .collect();
                for chain in &ours {
                    restore.raw(format!("-F {chain}"));
                }
                for chain in &ours {
                    restore.raw(format!("-X {chain}"));
                }
                self.restore(family, &restore, "remove the WEFT- chains")
            });
            if let Err(e) = result {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkRules {
        NetworkRules {
            bridge: "weft0".into(),
            subnets: vec![
                "10.9.0.0/24".parse().unwrap(),
                "fd00:9::/64".parse().unwrap(),
            ],
            masquerade: true,
            cluster_ranges: vec!["10.9.0.0/16".parse().unwrap()],
        }
    }

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(Rule::to_string).collect()
    }

    #[test]
    fn rules_render_as_iptables_save_prints_them() {
        assert_eq!(
            lines(&entry_jumps(Family::V4)),
            [
                "-A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT",
                "-A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT",
                "-A POSTROUTING -j WEFT-POSTROUTING",
            ]
        );
        assert_eq!(
            lines(&entry_jumps(Family::V6))[1],
            "-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j WEFT-DNAT"
        );
        assert_eq!(
            lines(&postrouting_rules(&net(), Family::V4)),
            [
                "-A WEFT-POSTROUTING -s 127.0.0.0/8 -m conntrack --ctstate DNAT -j MASQUERADE",
                "-A WEFT-POSTROUTING -s 10.9.0.0/24 -o weft0 -m conntrack --ctstate DNAT -j MASQUERADE",
                "-A WEFT-POSTROUTING -s 10.9.0.0/24 -j WEFT-MASQ",
            ]
        );
        assert_eq!(
            lines(&masq_rules(&net(), Family::V4)),
            [
                "-A WEFT-MASQ -d 10.9.0.0/24 -j RETURN",
                "-A WEFT-MASQ -d 10.9.0.0/16 -j RETURN",
                "-A WEFT-MASQ -j MASQUERADE",
            ]
        );
        assert_eq!(
            lines(&postrouting_rules(&net(), Family::V6)),
            [
                "-A WEFT-POSTROUTING -s fd00:9::/64 -o weft0 -m conntrack --ctstate DNAT -j MASQUERADE",
                "-A WEFT-POSTROUTING -s fd00:9::/64 -j WEFT-MASQ",
            ]
        );
        let no_masq = NetworkRules {
            masquerade: false,
            ..net()
        };
        assert!(masq_rules(&no_masq, Family::V4).is_empty());
        assert_eq!(postrouting_rules(&no_masq, Family::V4).len(), 2);
    }

    #[test]
    fn ports_become_one_dnat_rule_per_host_port() {
        let ports = [
            PublishedPort::parse("198.18.0.1:8000-8001:80-81", "10.9.0.3".parse().unwrap())
                .unwrap(),
            PublishedPort::parse("[fd00::1]:53:53/udp", "fd00:9::3".parse().unwrap()).unwrap(),
            PublishedPort::parse("9:9/sctp", "10.9.0.4".parse().unwrap()).unwrap(),
        ];
        let v4: Vec<String> = forwards_of(&ports, Family::V4)
            .iter()
            .map(|f| dnat(f).to_string())
            .collect();
        assert_eq!(
            v4,
            [
                "-A WEFT-DNAT -d 198.18.0.1/32 -p tcp -m tcp --dport 8000 -j DNAT --to-destination 10.9.0.3:80",
                "-A WEFT-DNAT -d 198.18.0.1/32 -p tcp -m tcp --dport 8001 -j DNAT --to-destination 10.9.0.3:81",
                "-A WEFT-DNAT -p sctp -m sctp --dport 9 -j DNAT --to-destination 10.9.0.4:9",
            ]
        );
        let v6: Vec<String> = forwards_of(&ports, Family::V6)
            .iter()
            .map(|f| dnat(f).to_string())
            .collect();
        assert_eq!(
            v6,
            ["-A WEFT-DNAT -d fd00::1/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:9::3]:53"]
        );
        assert_eq!(
            dnat(&forwards_of(&ports, Family::V4)[0]).matches_text(),
            "-A WEFT-DNAT -d 198.18.0.1/32 -p tcp -m tcp --dport 8000"
        );
    }

    #[test]
    fn restores_keep_ports_unless_syncing() {
        let empty = NatTable::default();
        let text = network_restore(&net(), Family::V4, &empty, None).render();
        assert!(text.starts_with("*nat\n:WEFT-DNAT - [0:0]\n"), "{text}");
        assert!(
            text.contains("-I PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT\n"),
            "{text}"
        );
        assert!(text.ends_with("COMMIT\n"), "{text}");
        // Once the chain and jumps exist, ensure neither empties WEFT-DNAT nor re-adds jumps.
        let present = NatTable::parse(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:WEFT-DNAT - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
             -A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
             -A POSTROUTING -j WEFT-POSTROUTING\nCOMMIT\n",
        );
        let text = network_restore(&net(), Family::V4, &present, None).render();
        assert!(!text.contains(":WEFT-DNAT"), "{text}");
        assert!(!text.contains("-I "), "{text}");
        let text = network_restore(&net(), Family::V4, &present, Some(&[])).render();
        assert!(text.contains(":WEFT-DNAT - [0:0]"), "{text}");
    }

    #[test]
    fn the_ipv6_output_jump_of_earlier_versions_is_replaced() {
        // That jump also DNATed ::1, which then could not leave the host.
        let present = NatTable::parse(
            "*nat\n:WEFT-DNAT - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
             -A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
             -A POSTROUTING -j WEFT-POSTROUTING\nCOMMIT\n",
        );
        let text = network_restore(&net(), Family::V6, &present, None).render();
        assert!(
            text.contains("-I OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j WEFT-DNAT\n"),
            "{text}"
        );
        assert!(
            text.contains("-D OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT\n"),
            "{text}"
        );
        let text = network_restore(&net(), Family::V4, &present, None).render();
        assert!(!text.contains("OUTPUT"), "IPv4 keeps its jump: {text}");
    }

    #[test]
    fn saved_tables_parse() {
        let saved = "# Generated by iptables-save\n*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j X\nCOMMIT\n\
                     *nat\n:PREROUTING ACCEPT [0:0]\n:WEFT-DNAT - [0:0]\n-A WEFT-DNAT -p udp -m udp --dport 53 -j DNAT --to-destination 10.9.0.3:53\nCOMMIT\n";
        let table = NatTable::parse(saved);
        assert!(table.chains.contains("WEFT-DNAT"));
        assert!(!table.chains.contains("FORWARD"));
        assert_eq!(table.rules.len(), 1);
        assert_eq!(table.rules_of(DNAT_CHAIN).len(), 1);
    }
}
