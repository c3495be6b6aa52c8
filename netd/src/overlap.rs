//! Whether a subnet would take over addresses a host already uses: asked
//! before a network is set up (the CNI plugin's STATUS and ADD), so that
//! containers never shadow the host's own network.

use ipnetwork::IpNetwork;
use plumb::{Netlink, Netns};

use crate::error::{KernelContext, Result};

/// A subnet that overlaps an address of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The subnet asked about.
    pub subnet: IpNetwork,
    /// The host's address it overlaps, with its prefix.
    pub address: IpNetwork,
    /// The link holding that address.
    pub link: String,
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// The first of `subnets` that overlaps an address in `netns` outside the
/// bridge `bridge` (whose addresses are the subnets' own gateways). Loopback,
/// IPv6 link-local and default-prefix addresses do not count.
pub async fn find(netns: &Netns, subnets: &[IpNetwork], bridge: &str) -> Result<Option<Overlap>> {
    let nl = Netlink::open(netns)
        .await
        .ctx(|| format!("open netlink in {}", netns.label()))?;
    let links = nl
        .links()
        .await
        .ctx(|| format!("list links in {}", netns.label()))?;
    let addrs = nl
        .addresses(None)
        .await
        .ctx(|| format!("list addresses in {}", netns.label()))?;
    for addr in &addrs {
        let Some(link) = links.iter().find(|l| l.index == addr.link) else {
            continue;
        };
        let ip = addr.network.ip();
        let link_local =
            matches!(ip, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if link.name == bridge || ip.is_loopback() || addr.network.prefix() == 0 || link_local {
            continue;
        }
        let host_net = IpNetwork::new(addr.network.network(), addr.network.prefix())
            .expect("a prefix from the kernel");
        if let Some(subnet) = subnets.iter().find(|s| overlaps(s, &host_net)) {
            return Ok(Some(Overlap {
                subnet: *subnet,
                address: addr.network,
                link: link.name.clone(),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_containment_either_way_within_a_family() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.1.0.0/16")));
        assert!(overlaps(&n("10.1.0.0/16"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.1.0.0/16"), &n("10.2.0.0/16")));
        assert!(!overlaps(&n("10.0.0.0/8"), &n("::/0")));
    }
}
