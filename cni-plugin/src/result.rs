//! The ADD result (SPEC.md section 5, "ADD Success"), held in the newest
//! (1.1.0) shape; the `version` module writes and reads the older shapes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// What an attachment created: interfaces, addresses, routes and DNS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface the attachment created, in the host (no sandbox) or the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The CNI_NETNS of the container for interfaces inside it; absent on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address given to an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, host bits kept: "10.88.0.5/16".
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; absent in IPAM plugins' results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route the attachment installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 and later, like the four below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings for the container (also the `dns` key of a network config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

impl CniResult {
    /// Appends `ours` after `self` (a chained plugin's `prevResult`), shifting
    /// our interface indexes past the interfaces already listed.
    pub fn chain(mut self, ours: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
        if self.dns.is_empty() {
            self.dns = ours.dns;
        }
        self
    }

    /// The index of the interface named `name` inside sandbox `netns`.
    pub fn container_interface(&self, name: &str, netns: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && i.sandbox.as_deref() == Some(netns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(address: &str, interface: Option<usize>) -> IpConfig {
        IpConfig {
            address: address.parse().unwrap(),
            gateway: None,
            interface,
        }
    }

    #[test]
    fn chaining_shifts_interface_indexes() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            }],
            ips: vec![ip("10.0.0.2/24", Some(0))],
            ..Default::default()
        };
        let ours = CniResult {
            interfaces: vec![
                Interface {
                    name: "weft0".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth1".into(),
                    sandbox: Some("/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![ip("10.1.0.2/24", Some(1))],
            ..Default::default()
        };
        let both = prev.chain(ours);
        assert_eq!(both.interfaces.len(), 3);
        assert_eq!(both.ips[0].interface, Some(0));
        assert_eq!(both.ips[1].interface, Some(2));
        assert_eq!(both.container_interface("eth1", "/run/netns/x"), Some(2));
        assert_eq!(both.container_interface("weft0", "/run/netns/x"), None);
    }

    #[test]
    fn addresses_keep_their_host_bits() {
        let r: CniResult =
            serde_json::from_str(r#"{"ips":[{"address":"10.1.0.5/16","gateway":"10.1.0.1"}]}"#)
                .unwrap();
        assert_eq!(r.ips[0].address.ip().to_string(), "10.1.0.5");
        assert_eq!(r.ips[0].address.prefix(), 16);
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["ips"][0]["address"], "10.1.0.5/16");
        assert!(back.get("dns").is_none(), "empty dns is left out");
    }
}
