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

use plumb::firewall::iptables::{self as tool, IpFamily as Family};
use plumb::{Error, Netns, Result};

use super::iptables_rules::{
    dnat, entry_jumps, forwards_of, masq_rules, network_restore, postrouting_rules,
    replaced_entry_jumps, CHAINS,
};
use super::iptables_syntax::{NatTable, Restore, Rule};
use super::{allow_localhost_dnat, describe_ports, localhost_dnat_allowed, Firewall, NetworkRules};
use crate::ports::mapping::{validate_all, PublishedPort};

pub use super::iptables_rules::{DNAT_CHAIN, MASQ_CHAIN, POSTROUTING_CHAIN};

const FAMILIES: [Family; 2] = Family::ALL;

/// The iptables backend acting in one namespace.
#[derive(Debug, Clone)]
pub struct Iptables {
    netns: Netns,
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
#[path = "iptables_tests.rs"]
mod tests;
