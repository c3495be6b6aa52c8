//! The typed model of the iptables-save text weft's iptables backend reads
//! and writes: the nat table as saved, rules in iptables-save's own form,
//! `iptables-restore --noflush` inputs. What the rules *are* lives in
//! iptables_rules.rs.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::ports::mapping::Protocol;

/// The nat table as `iptables-save -t nat` prints it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct NatTable {
    pub(super) chains: BTreeSet<String>,
    /// `-A CHAIN …` lines, in order.
    pub(super) rules: Vec<String>,
}

impl NatTable {
    pub(super) fn parse(saved: &str) -> NatTable {
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

    pub(super) fn has(&self, rule: &Rule) -> bool {
        let line = rule.to_string();
        self.rules.contains(&line)
    }

    pub(super) fn rules_of(&self, chain: &str) -> Vec<&str> {
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
pub(super) struct Rule {
    pub(super) chain: &'static str,
    pub(super) source: Option<IpNetwork>,
    pub(super) destination: Option<IpNetwork>,
    /// `! -d`: every destination but this.
    pub(super) destination_except: Option<IpNetwork>,
    pub(super) out_interface: Option<String>,
    pub(super) protocol: Option<(Protocol, u16)>,
    pub(super) local_destination: bool,
    pub(super) dnatted: bool,
    pub(super) target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    Jump(&'static str),
    Dnat(IpAddr, u16),
    Masquerade,
    Return,
}

impl Rule {
    pub(super) fn new(chain: &'static str, target: Target) -> Rule {
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
    pub(super) fn matches_text(&self) -> String {
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

/// An `iptables-restore --noflush` input for the nat table.
#[derive(Debug, Default)]
pub(super) struct Restore {
    pub(super) lines: Vec<String>,
}

impl Restore {
    /// `:CHAIN - [0:0]`: creates the chain, or empties it when it exists.
    pub(super) fn declare(&mut self, chain: &str) {
        self.lines.push(format!(":{chain} - [0:0]"));
    }

    pub(super) fn append(&mut self, rule: &Rule) {
        self.lines.push(rule.to_string());
    }

    /// Inserts at the top of the chain, ahead of rules that would end the walk.
    pub(super) fn insert(&mut self, rule: &Rule) {
        self.lines.push(rule.to_string().replacen("-A ", "-I ", 1));
    }

    pub(super) fn delete(&mut self, rule: &Rule) {
        self.lines.push(rule.to_string().replacen("-A ", "-D ", 1));
    }

    pub(super) fn raw(&mut self, line: String) {
        self.lines.push(line);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub(super) fn render(&self) -> String {
        let mut text = String::from("*nat\n");
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }
}
