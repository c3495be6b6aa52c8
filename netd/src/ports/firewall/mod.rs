//! weft's firewall policy: NAT for the container network and its published
//! ports. Which table, chains, sets and maps weft owns, what rules they hold
//! and which ports they forward are decided here; plumb's `firewall` module
//! only carries them to the kernel (nfnetlink elements, libnftables or the
//! `nft` binary, `iptables-restore`) and knows none of these names.
//!
//! One small trait, [`Firewall`], with two implementations acting in one
//! network namespace each:
//!
//! - [`Nftables`] (the default): table `inet weft`, port publishing through
//!   maps so the per-packet cost does not grow with the number of ports.
//! - [`Iptables`]: chains prefixed `WEFT-` in the `nat` tables of iptables and
//!   ip6tables, laid out like the CNI portmap plugin, for hosts still on
//!   iptables (one rule per published port: linear per-packet cost).
//!
//! Every change is one transaction: port map elements over nfnetlink, other
//! nft changes as one `nft -f -` script (libnftables in-process when it is
//! installed), iptables changes as one `iptables-restore --noflush` per
//! address family — all started inside the backend's namespace.
//! Backends own their table or chains and never touch anyone else's.
//!
//! What the backends arrange themselves: `net.ipv4.conf.all.route_localnet=1`
//! (the host reaching a published port through 127.0.0.1). What the caller
//! arranges, as it is policy or per link:
//! - IP forwarding (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`).
//! - Hairpin mode on each container's bridge port, for a container reaching
//!   its *own* published port through the host address: with br_netfilter
//!   (enabled in every namespace by default) the DNAT happens at the bridge,
//!   which then has to send the frame back out of the port it came in by.
//!   Neighbours on the same bridge need no hairpin mode.
//! - Reaching published ports through `[::1]`: IPv6 has no `route_localnet`,
//!   so a DNATed packet from ::1 could not leave the host. Both backends
//!   leave traffic to ::1 alone, for a listener on the host to relay (netd
//!   does; see netd's `localhost_proxy`).
//!
//! ```no_run
//! # fn demo() -> plumb::Result<()> {
//! use netd::ports::firewall::{Firewall, NetworkRules, Nftables};
//! use netd::ports::PublishedPort;
//! let fw = Nftables::new(plumb::Netns::named("host1")?);
//! let net = NetworkRules {
//!     bridge: "weft0".into(),
//!     subnets: vec!["10.88.0.0/24".parse().unwrap()],
//!     masquerade: true,
//!     cluster_ranges: vec!["10.88.0.0/16".parse().unwrap()],
//! };
//! fw.ensure(&net)?;
//! fw.add_ports(&[PublishedPort::parse("8080:80/tcp", "10.88.0.2".parse().unwrap())?])?;
//! # Ok(()) }
//! ```

mod iptables;
mod iptables_rules;
mod iptables_syntax;
mod nft;
mod nft_listing;
mod nft_rules;
mod nft_syntax;

use std::fmt;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use plumb::{validate_ifname, Error, Netns, Result};
use serde::{Deserialize, Serialize};

use super::mapping::PublishedPort;

pub use iptables::{Iptables, DNAT_CHAIN, MASQ_CHAIN, POSTROUTING_CHAIN};
pub use nft::Nftables;
pub use nft_syntax::TABLE;

/// What a container network needs from the firewall, ports aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRules {
    /// The bridge the containers sit on (hairpinned flows leave through it).
    pub bridge: String,
    /// This host's container subnets, IPv4 and/or IPv6.
    pub subnets: Vec<IpNetwork>,
    /// Masquerade traffic from the subnets to destinations outside them and
    /// outside `cluster_ranges`.
    pub masquerade: bool,
    /// Destinations never masqueraded: containers across the overlay see each
    /// other's real addresses.
    #[serde(default)]
    pub cluster_ranges: Vec<IpNetwork>,
}

impl NetworkRules {
    /// Checks everything a backend renders before any tool runs.
    pub fn validate(&self) -> Result<()> {
        validate_ifname(&self.bridge)?;
        if self.bridge.contains(['"', '\\', '\'']) {
            return Err(Error::invalid(
                "bridge name",
                &self.bridge,
                "must not contain quotes or backslashes",
            ));
        }
        Ok(())
    }

    /// The subnets of one family, host bits cleared, nested ones dropped.
    fn subnets_of(&self, ipv6: bool) -> Vec<IpNetwork> {
        normalize(&self.subnets, ipv6)
    }

    /// The cluster ranges of one family, host bits cleared, nested ones dropped.
    fn cluster_of(&self, ipv6: bool) -> Vec<IpNetwork> {
        normalize(&self.cluster_ranges, ipv6)
    }
}

/// Clears host bits, drops duplicates and networks nested in another: nft
/// rejects overlapping elements of an interval set, and iptables would only
/// carry redundant rules.
fn normalize(networks: &[IpNetwork], ipv6: bool) -> Vec<IpNetwork> {
    let mut canonical: Vec<IpNetwork> = networks
        .iter()
        .filter(|n| n.is_ipv6() == ipv6)
        .map(|n| IpNetwork::new(n.network(), n.prefix()).expect("prefix of a valid network"))
        .collect();
    canonical.sort_by_key(|n| (n.prefix(), n.network()));
    canonical.dedup();
    let mut kept: Vec<IpNetwork> = Vec::new();
    for n in canonical {
        if !kept.iter().any(|k| k.contains(n.network())) {
            kept.push(n);
        }
    }
    kept.sort_by_key(|n| (n.network(), n.prefix()));
    kept
}

/// What every firewall backend does. All methods are synchronous: each runs
/// one short-lived tool process per change.
pub trait Firewall: Send + Sync {
    /// The backend's name, as users choose it: "nftables" or "iptables".
    fn name(&self) -> &'static str;

    /// Creates or repairs the network's rules (NAT chains, masquerade),
    /// keeping the published ports already there. Idempotent.
    fn ensure(&self, net: &NetworkRules) -> Result<()>;

    /// Publishes ports. Re-adding an identical port is a no-op; a host port
    /// already forwarded elsewhere is an error.
    fn add_ports(&self, ports: &[PublishedPort]) -> Result<()>;

    /// Withdraws ports. Ports that are not published are skipped.
    fn remove_ports(&self, ports: &[PublishedPort]) -> Result<()>;

    /// Makes the kernel hold exactly this network and these ports, in one
    /// transaction per table. Reconciliation uses it.
    fn sync(&self, net: &NetworkRules, ports: &[PublishedPort]) -> Result<()>;

    /// False when the rules for `net` are no longer in place (someone flushed
    /// the ruleset, deleted the table or emptied a chain).
    fn is_intact(&self, net: &NetworkRules) -> Result<bool>;

    /// Removes everything the backend made. Idempotent.
    fn teardown(&self) -> Result<()>;
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// nftables: table `inet weft`, changed over netfilter netlink, libnftables
    /// or the `nft` binary.
    #[default]
    Nftables,
    /// `iptables-restore` and `ip6tables-restore`, for hosts without nft.
    Iptables,
}

impl BackendKind {
    /// A backend of this kind acting in `netns`.
    pub fn open(self, netns: Netns) -> Box<dyn Firewall> {
        match self {
            BackendKind::Nftables => Box::new(Nftables::new(netns)),
            BackendKind::Iptables => Box::new(Iptables::new(netns)),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Nftables => "nftables",
            BackendKind::Iptables => "iptables",
        })
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<BackendKind> {
        match s {
            "nftables" | "nft" => Ok(BackendKind::Nftables),
            "iptables" => Ok(BackendKind::Iptables),
            _ => Err(Error::invalid(
                "firewall backend",
                s,
                "expected nftables or iptables",
            )),
        }
    }
}

/// Sets `net.ipv4.conf.all.route_localnet=1` so that the host reaching a
/// published port through 127.0.0.1 can be routed to the container once
/// DNATed. Left set on teardown: other software may rely on it too.
fn allow_localhost_dnat(netns: &Netns) -> Result<()> {
    const KEY: &str = "net.ipv4.conf.all.route_localnet";
    if plumb::sysctl::read(netns, KEY)? != "1" {
        plumb::sysctl::write(netns, KEY, "1")?;
    }
    Ok(())
}

fn localhost_dnat_allowed(netns: &Netns) -> Result<bool> {
    Ok(plumb::sysctl::read(netns, "net.ipv4.conf.all.route_localnet")? == "1")
}

/// Describes a list of ports for error messages: "publish 8080->10.9.0.3:80/tcp, …".
fn describe_ports(verb: &str, ports: &[PublishedPort]) -> String {
    const SHOWN: usize = 3;
    let mut text = format!("{verb} ");
    let shown: Vec<String> = ports.iter().take(SHOWN).map(|p| p.to_string()).collect();
    text.push_str(&shown.join(", "));
    if ports.len() > SHOWN {
        text.push_str(&format!(" and {} more", ports.len() - SHOWN));
    }
    text
}

/// The dual-stack network the nft unit tests render.
#[cfg(test)]
fn example_network() -> NetworkRules {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_normalized_per_family() {
        let nets: Vec<IpNetwork> = [
            "10.9.0.5/24",
            "10.0.0.0/8",
            "10.9.0.0/24",
            "fd00::1/64",
            "192.168.1.0/24",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let v4: Vec<String> = normalize(&nets, false)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(v4, ["10.0.0.0/8", "192.168.1.0/24"]);
        let v6: Vec<String> = normalize(&nets, true)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(v6, ["fd00::/64"]);
    }

    #[test]
    fn bridge_names_are_checked() {
        let mut net = NetworkRules {
            bridge: "weft0".into(),
            subnets: vec![],
            masquerade: true,
            cluster_ranges: vec![],
        };
        assert!(net.validate().is_ok());
        net.bridge = "we\"ft".into();
        assert!(net.validate().unwrap_err().to_string().contains("quotes"));
        net.bridge = "a-name-longer-than-15".into();
        assert!(net.validate().is_err());
    }

    #[test]
    fn backend_kinds_parse() {
        assert_eq!(
            "nftables".parse::<BackendKind>().unwrap(),
            BackendKind::Nftables
        );
        assert_eq!(
            "iptables".parse::<BackendKind>().unwrap(),
            BackendKind::Iptables
        );
        assert!("pf"
            .parse::<BackendKind>()
            .unwrap_err()
            .to_string()
            .contains("expected nftables or iptables"));
        assert_eq!(BackendKind::default().to_string(), "nftables");
    }
}
