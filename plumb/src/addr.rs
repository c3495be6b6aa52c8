//! IPv4 and IPv6 addresses on links.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::AddressMessageBuilder;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::handle::Netlink;
use crate::Link;

/// An address as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    /// Index of the link it is on.
    pub link: u32,
    /// The address with its prefix length, e.g. 10.0.0.2/24.
    pub network: IpNetwork,
}

/// Parses "10.0.0.2/24" or "fd00::2/64", insisting on the prefix length
/// (a bare address is almost always a mistake: it would become a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNetwork> {
    if !text.contains('/') {
        return Err(Error::invalid(
            "address",
            text,
            "needs a prefix length, e.g. 10.0.0.2/24",
        ));
    }
    text.parse::<IpNetwork>()
        .map_err(|e| Error::invalid("address", text, e.to_string()))
}

fn address_message(link: u32, network: IpNetwork, nodad: bool) -> AddressMessage {
    let mut msg = match network.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(link)
            .address(ip, network.prefix())
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(link)
            .address(ip, network.prefix())
            .build(),
    };
    if nodad && network.is_ipv6() {
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    msg
}

impl Netlink {
    /// Adds `network` to link `name`. With `nodad` an IPv6 address is usable at
    /// once instead of after duplicate address detection (about 1–2 s).
    pub async fn add_address(&self, name: &str, network: IpNetwork, nodad: bool) -> Result<()> {
        let link = self.require_link(name).await?;
        self.add_address_at(&link, network, nodad).await
    }

    /// [`Netlink::add_address`] on `link` as read before: no look-up.
    pub async fn add_address_at(&self, link: &Link, network: IpNetwork, nodad: bool) -> Result<()> {
        let name = &link.name;
        let msg = address_message(link.index, network, nodad);
        self.request_ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || self.target("add", format!("address {network} on {name}")),
        )
        .await
    }

    /// Removes `network` from link `name`. Errors with [`Error::NotFound`]
    /// when the link or the address is not there.
    pub async fn delete_address(&self, name: &str, network: IpNetwork) -> Result<()> {
        let link = self.require_link(name).await?;
        let msg = address_message(link.index, network, false);
        self.request_ack(RouteNetlinkMessage::DelAddress(msg), 0, || {
            self.target("delete", format!("address {network} on {name}"))
        })
        .await
    }

    /// Addresses in this namespace, of one link when `link` is given.
    pub async fn addresses(&self, link: Option<u32>) -> Result<Vec<Address>> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let replies = self
            .dump(request, || self.target("list", "addresses"))
            .await?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            if link.is_some_and(|l| l != msg.header.index) {
                continue;
            }
            let prefix = msg.header.prefix_len;
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
            // on point-to-point links, so prefer LOCAL when present.
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            let ip = match msg.header.family {
                AddressFamily::Inet => local.or(address),
                _ => address.or(local),
            };
            if let Some(network) = ip.and_then(|ip| IpNetwork::new(ip, prefix).ok()) {
                out.push(Address {
                    link: msg.header.index,
                    network,
                });
            }
        }
        Ok(out)
    }

    /// Addresses of link `name`.
    pub async fn link_addresses(&self, name: &str) -> Result<Vec<IpNetwork>> {
        let link = self.require_link(name).await?;
        Ok(self
            .addresses(Some(link.index))
            .await?
            .into_iter()
            .map(|a| a.network)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_needs_a_prefix() {
        assert!(parse_cidr("10.0.0.2/24").is_ok());
        assert!(parse_cidr("fd00::2/64").is_ok());
        let err = parse_cidr("10.0.0.2").unwrap_err().to_string();
        assert!(err.contains("prefix length"), "{err}");
        assert!(parse_cidr("10.0.0.300/24").is_err());
        assert!(parse_cidr("10.0.0.2/33").is_err());
        assert!(parse_cidr("fd00::2/129").is_err());
    }
}
