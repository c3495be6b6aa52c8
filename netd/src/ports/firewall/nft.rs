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

use plumb::firewall::libnft;
use plumb::firewall::nft_netlink::{self, Change, SetElement};
use plumb::firewall::{run_nft, run_tool, tool_error};
use plumb::{Error, Netns, Result};

use super::nft_listing::Listing;
use super::nft_rules::{add_port_elements, network_batch, port_elements, port_map_elements};
use super::nft_syntax::{Batch, Command, PORT_MAPS, TABLE};
use super::{allow_localhost_dnat, describe_ports, localhost_dnat_allowed, Firewall, NetworkRules};
use crate::ports::mapping::{validate_all, PublishedPort};

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
    fn apply_elements(&self, changes: &[(Change, &SetElement)], action: &str) -> Result<bool> {
        if libnft::exec_forced() {
            return Ok(false);
        }
        tracing::debug!(
            namespace = self.netns.label(),
            changes = changes.len(),
            "{action} (nfnetlink)"
        );
        match nft_netlink::apply(&self.netns, TABLE, changes) {
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
        run_nft(&self.netns, &batch.to_string(), action, explain_nft)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
