//! The cluster's records in the store and their key layout, all under `/weft/v1/`:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `config` | [`ClusterConfig`] (JSON) | written once by `init` |
//! | `subnets/<addr>-<len>` | the holder's host id (plain text) | the reservation |
//! | `hosts/<host id>` | [`HostRecord`] (JSON) | the reservation |
//! | `alive/<host id>` | the host's name | the host's liveness lease |
//! | `names/<host id>` | the host's container names (JSON, netd's) | the host's liveness lease |
//!
//! A subnet key and the host record naming it are written and deleted in
//! one transaction, so the two always agree; a subnet key is the lock that
//! makes concurrent joins safe (created only if absent).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::{ClusterError, HostId};

/// Every cluster key starts with this.
pub const ROOT: &str = "/weft/v1/";
/// The cluster configuration's key.
pub const CONFIG_KEY: &str = "/weft/v1/config";
/// The prefix of subnet reservations.
pub const SUBNETS: &str = "/weft/v1/subnets/";
/// The prefix of host records.
pub const HOSTS: &str = "/weft/v1/hosts/";
/// The prefix of liveness keys.
pub const ALIVE: &str = "/weft/v1/alive/";

/// The prefix of each host's published container names (netd writes and reads them).
pub const NAMES: &str = "/weft/v1/names/";

/// The key of a host's published container names.
pub fn names_key(id: &HostId) -> String {
    format!("{NAMES}{id}")
}

/// The key of a host's record.
pub fn host_key(id: &HostId) -> String {
    format!("{HOSTS}{id}")
}

/// The key of a host's liveness.
pub fn alive_key(id: &HostId) -> String {
    format!("{ALIVE}{id}")
}

/// The key of a subnet's reservation: `/` would nest keys, so `10.99.3.0/24` is `10.99.3.0-24`.
pub fn subnet_key(subnet: IpNetwork) -> String {
    format!("{SUBNETS}{}-{}", subnet.network(), subnet.prefix())
}

/// The subnet a reservation key names, when it names one exactly (network address, no host bits).
pub fn parse_subnet_key(key: &str) -> Option<IpNetwork> {
    let (addr, len) = key.strip_prefix(SUBNETS)?.rsplit_once('-')?;
    let subnet = IpNetwork::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (subnet.network() == subnet.ip()).then_some(subnet)
}

/// The cluster-wide settings every host must agree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The IPv4 range split into host subnets, e.g. `10.99.0.0/16`.
    pub ipv4_range: Ipv4Network,
    /// The length of each host's IPv4 subnet, e.g. 24.
    pub ipv4_subnet_len: u8,
    /// The IPv6 range, when containers get IPv6 too, e.g. `fd00:99::/48`.
    #[serde(default)]
    pub ipv6_range: Option<Ipv6Network>,
    /// The length of each host's IPv6 subnet (with `ipv6_range`), e.g. 64.
    #[serde(default)]
    pub ipv6_subnet_len: Option<u8>,
    /// The UDP port of every host's overlay.
    pub overlay_port: u16,
}

impl ClusterConfig {
    /// Checks the ranges and lengths make sense together.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |reason: String| Err(ClusterError::BadConfig { reason });
        if self.ipv4_range.network() != self.ipv4_range.ip() {
            return bad(format!("IPv4 range {} has host bits set", self.ipv4_range));
        }
        if self.ipv4_subnet_len < self.ipv4_range.prefix() || self.ipv4_subnet_len > 30 {
            return bad(format!(
                "IPv4 subnet length /{} must lie between the range's /{} and /30",
                self.ipv4_subnet_len,
                self.ipv4_range.prefix()
            ));
        }
        match (self.ipv6_range, self.ipv6_subnet_len) {
            (None, None) => {}
            (Some(range), Some(len)) => {
                if range.network() != range.ip() {
                    return bad(format!("IPv6 range {range} has host bits set"));
                }
                if len < range.prefix() || len > 120 || len - range.prefix() > 32 {
                    return bad(format!(
                        "IPv6 subnet length /{len} must lie between the range's /{} and /120, at most 32 bits longer",
                        range.prefix()
                    ));
                }
            }
            _ => {
                return bad(
                    "an IPv6 range needs an IPv6 subnet length and the other way round".into(),
                )
            }
        }
        if self.overlay_port == 0 {
            return bad("overlay port 0".into());
        }
        Ok(())
    }

    /// How many IPv4 host subnets the range holds.
    pub fn ipv4_capacity(&self) -> u64 {
        1 << (self.ipv4_subnet_len - self.ipv4_range.prefix())
    }

    /// How many IPv6 host subnets the range holds (0 without IPv6).
    pub fn ipv6_capacity(&self) -> u64 {
        match (self.ipv6_range, self.ipv6_subnet_len) {
            (Some(range), Some(len)) => 1 << (len - range.prefix()),
            _ => 0,
        }
    }

    /// The `index`th IPv4 host subnet of the range.
    pub fn ipv4_subnet(&self, index: u64) -> Ipv4Network {
        let base = u32::from(self.ipv4_range.network());
        let step = 1u32 << (32 - self.ipv4_subnet_len);
        let addr = Ipv4Addr::from(base + (index as u32) * step);
        Ipv4Network::new(addr, self.ipv4_subnet_len).expect("length checked by validate")
    }

    /// The `index`th IPv6 host subnet of the range.
    pub fn ipv6_subnet(&self, index: u64) -> Option<Ipv6Network> {
        let (range, len) = (self.ipv6_range?, self.ipv6_subnet_len?);
        let base = u128::from(range.network());
        let addr = Ipv6Addr::from(base + (u128::from(index) << (128 - len)));
        Some(Ipv6Network::new(addr, len).expect("length checked by validate"))
    }

    /// Whether `subnet` is exactly one of this config's IPv4 host subnets.
    pub fn holds_ipv4(&self, subnet: Ipv4Network) -> bool {
        subnet.prefix() == self.ipv4_subnet_len
            && subnet.ip() == subnet.network()
            && self.ipv4_range.contains(subnet.network())
    }

    /// Whether `subnet` is exactly one of this config's IPv6 host subnets.
    pub fn holds_ipv6(&self, subnet: Ipv6Network) -> bool {
        match (self.ipv6_range, self.ipv6_subnet_len) {
            (Some(range), Some(len)) => {
                subnet.prefix() == len
                    && subnet.ip() == subnet.network()
                    && range.contains(subnet.network())
            }
            _ => false,
        }
    }
}

/// A host's reservation and what its peers need to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// The host's id (also its key's last part).
    pub id: HostId,
    /// The host's name, for people.
    pub name: String,
    /// The host's WireGuard public key (base64).
    pub public_key: String,
    /// Bumped at each key rotation; peers switch to the record with the higher epoch.
    pub key_epoch: u64,
    /// The overlay endpoint the host advertises (`ip:port`), when it advertises one.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The host's IPv4 subnet.
    pub ipv4_subnet: Ipv4Network,
    /// The host's IPv6 subnet, in a cluster with IPv6.
    #[serde(default)]
    pub ipv6_subnet: Option<Ipv6Network>,
    /// Unix seconds after which, with the host not alive, any live host may
    /// reclaim the reservation. The host pushes it forward while it lives.
    pub reserved_until: u64,
}

impl HostRecord {
    /// The host's subnets, IPv4 first.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        let mut subnets = vec![IpNetwork::V4(self.ipv4_subnet)];
        subnets.extend(self.ipv6_subnet.map(IpNetwork::V6));
        subnets
    }

    /// The record as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a host record serializes")
    }
}

/// Unix seconds of a wall-clock time (0 before 1970).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig {
            ipv4_range: "10.99.0.0/16".parse().unwrap(),
            ipv4_subnet_len: 24,
            ipv6_range: Some("fd00:99::/48".parse().unwrap()),
            ipv6_subnet_len: Some(64),
            overlay_port: 51820,
        }
    }

    #[test]
    fn subnet_keys_round_trip_and_refuse_host_bits() {
        let v4: IpNetwork = "10.99.3.0/24".parse().unwrap();
        let v6: IpNetwork = "fd00:99:0:3::/64".parse().unwrap();
        assert_eq!(subnet_key(v4), "/weft/v1/subnets/10.99.3.0-24");
        assert_eq!(parse_subnet_key(&subnet_key(v4)), Some(v4));
        assert_eq!(parse_subnet_key(&subnet_key(v6)), Some(v6));
        assert_eq!(parse_subnet_key("/weft/v1/subnets/10.99.3.1-24"), None);
        assert_eq!(parse_subnet_key("/weft/v1/subnets/garbage"), None);
    }

    #[test]
    fn subnets_enumerate_the_range() {
        let c = config();
        c.validate().unwrap();
        assert_eq!(c.ipv4_capacity(), 256);
        assert_eq!(c.ipv4_subnet(3).to_string(), "10.99.3.0/24");
        assert_eq!(c.ipv6_subnet(3).unwrap().to_string(), "fd00:99:0:3::/64");
        assert!(c.holds_ipv4("10.99.255.0/24".parse().unwrap()));
        assert!(!c.holds_ipv4("10.98.0.0/24".parse().unwrap()));
        assert!(!c.holds_ipv4("10.99.3.0/25".parse().unwrap()));
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let mut c = config();
        c.ipv4_subnet_len = 8;
        assert!(
            matches!(c.validate(), Err(ClusterError::BadConfig { reason }) if reason.contains("/8"))
        );
        let mut c = config();
        c.ipv6_subnet_len = None;
        assert!(c.validate().is_err());
        let mut c = config();
        c.ipv4_range = "10.99.1.0/16".parse().unwrap();
        assert!(c.validate().is_err());
    }
}
