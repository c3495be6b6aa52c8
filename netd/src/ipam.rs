//! Address management for one host's subnets: pure logic over the
//! reservations that `state::Store` persists (atomically, under a lock).
//!
//! Per subnet the gateway (first address) belongs to the bridge; IPv4's
//! network and broadcast addresses are never handed out. Dynamic addresses go
//! round-robin from the last one handed out, like CNI's host-local, so a
//! just-released address is not reused at once (stale ARP entries elsewhere).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("address {addr} is outside subnet {subnet}; pick one inside it or leave it to netd")]
    OutsideSubnet { addr: IpAddr, subnet: IpNetwork },

    #[error("address {addr} cannot be given to a container: it is {why} of subnet {subnet}")]
    NotAssignable {
        addr: IpAddr,
        subnet: IpNetwork,
        why: &'static str,
    },

    #[error("address {addr} is already in use by container {owner}")]
    Taken { addr: IpAddr, owner: String },

    #[error(
        "subnet {subnet} is full ({in_use} addresses in use); detach a container or configure a larger subnet"
    )]
    Full { subnet: IpNetwork, in_use: u128 },

    #[error("no free address in range {first}-{last} of subnet {subnet}; detach a container or widen the range")]
    RangeFull {
        first: IpAddr,
        last: IpAddr,
        subnet: IpNetwork,
    },

    #[error("range {first}-{last} is not inside subnet {subnet} (or ends before it starts)")]
    BadRange {
        first: IpAddr,
        last: IpAddr,
        subnet: IpNetwork,
    },

    #[error("subnet {subnet}: {why}")]
    BadSubnet {
        subnet: IpNetwork,
        why: &'static str,
    },
}

/// Reservations of one subnet, with each holder's addresses at hand (a
/// detach releases its own without looking at anyone else's) and the
/// addresses a transaction touched (what its journal record holds).
#[derive(Debug, Clone, Default)]
pub struct Pool {
    /// The last address handed out dynamically; the next search starts after it.
    pub last: Option<IpAddr>,
    /// Address → the container id holding it. Shared, not copied, between
    /// the store's two copies of the state.
    reserved: BTreeMap<IpAddr, Arc<str>>,
    holders: HashMap<Arc<str>, BTreeSet<IpAddr>>,
    touched: BTreeSet<IpAddr>,
}

/// What state.json holds of a pool.
#[derive(Serialize, Deserialize)]
struct PoolFile<R> {
    last: Option<IpAddr>,
    reserved: R,
}

impl Serialize for Pool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PoolFile {
            last: self.last,
            reserved: &self.reserved,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Pool, D::Error> {
        let file = PoolFile::<BTreeMap<IpAddr, Arc<str>>>::deserialize(deserializer)?;
        let mut pool = Pool {
            last: file.last,
            ..Pool::default()
        };
        for (addr, owner) in file.reserved {
            pool.reserve(addr, owner);
        }
        pool.settle();
        Ok(pool)
    }
}

impl PartialEq for Pool {
    fn eq(&self, other: &Pool) -> bool {
        self.last == other.last && self.reserved == other.reserved
    }
}

impl Eq for Pool {}

impl Pool {
    /// The container id holding `addr`.
    pub fn holder(&self, addr: &IpAddr) -> Option<&Arc<str>> {
        self.reserved.get(addr)
    }

    pub fn len(&self) -> usize {
        self.reserved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reserved.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Arc<str>)> {
        self.reserved.iter()
    }

    /// Gives `addr` to `owner` (taking it from whoever held it).
    pub fn reserve(&mut self, addr: IpAddr, owner: Arc<str>) {
        self.release(&addr);
        self.touched.insert(addr);
        self.holders.entry(owner.clone()).or_default().insert(addr);
        self.reserved.insert(addr, owner);
    }

    /// Frees `addr`; returns who held it.
    pub fn release(&mut self, addr: &IpAddr) -> Option<Arc<str>> {
        let owner = self.reserved.remove(addr)?;
        self.touched.insert(*addr);
        if let Some(held) = self.holders.get_mut(&owner) {
            held.remove(addr);
            if held.is_empty() {
                self.holders.remove(&owner);
            }
        }
        Some(owner)
    }

    /// The addresses `owner` holds here.
    pub fn held_by(&self, owner: &str) -> impl Iterator<Item = IpAddr> + '_ {
        self.holders.get(owner).into_iter().flatten().copied()
    }

    /// The same owner as an address here already has, shared, or a new one.
    fn owner(&self, owner: &str) -> Arc<str> {
        self.holders
            .get_key_value(owner)
            .map(|(o, _)| o.clone())
            .unwrap_or_else(|| Arc::from(owner))
    }

    /// The addresses touched since the last `settle`.
    pub fn touched(&self) -> &BTreeSet<IpAddr> {
        &self.touched
    }

    pub fn settle(&mut self) {
        self.touched.clear();
    }

    /// Undoes what was touched since the last `settle`, from `persisted`.
    fn revert_to(&mut self, persisted: &Pool) {
        for addr in std::mem::take(&mut self.touched) {
            match persisted.holder(&addr) {
                Some(owner) => self.reserve(addr, owner.clone()),
                None => {
                    self.release(&addr);
                }
            }
        }
        self.last = persisted.last;
        self.settle();
    }
}

/// Reservations of every subnet, keyed by the subnet in CIDR form.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reservations {
    pub pools: BTreeMap<String, Pool>,
}

/// Usage of one subnet, as `netd status` and the metrics show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub subnet: IpNetwork,
    /// Addresses taken, the gateway included.
    pub in_use: u128,
    /// Addresses that can be taken at all, the gateway included.
    pub capacity: u128,
}

/// The assignable range of a subnet as integers.
#[derive(Debug, Clone, Copy)]
struct Range {
    first: u128,
    last: u128,
    gateway: u128,
    v6: bool,
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_int(value: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

fn range(subnet: IpNetwork) -> Result<Range, IpamError> {
    let v6 = subnet.is_ipv6();
    let bits: u32 = if v6 { 128 } else { 32 };
    let host_bits = bits - subnet.prefix() as u32;
    if host_bits < 2 {
        return Err(IpamError::BadSubnet {
            subnet,
            why: "too small: it needs room for a gateway and a container",
        });
    }
    if host_bits > 64 {
        return Err(IpamError::BadSubnet {
            subnet,
            why: "too large: use a prefix of 64 or longer",
        });
    }
    let base = to_int(subnet.network());
    let size = 1u128 << host_bits;
    // IPv4 excludes network and broadcast; IPv6 only the subnet-router anycast.
    let last = if v6 { base + size - 1 } else { base + size - 2 };
    Ok(Range {
        first: base + 1,
        last,
        gateway: base + 1,
        v6,
    })
}

/// The subnet's gateway address (its first address).
pub fn gateway(subnet: IpNetwork) -> IpAddr {
    from_int(to_int(subnet.network()) + 1, subnet.is_ipv6())
}

impl Reservations {
    /// Reserves an address in `subnet` for `owner`: `requested` when given
    /// (checked), otherwise the next free one.
    /// Reserves the first free address of `first..=last` (inside `subnet`;
    /// the gateway and, for IPv4, network and broadcast are skipped): what
    /// CNI's `rangeStart`/`rangeEnd` and `ipRanges` ask for.
    pub fn allocate_in_range(
        &mut self,
        subnet: IpNetwork,
        owner: &str,
        first: IpAddr,
        last: IpAddr,
    ) -> Result<IpAddr, IpamError> {
        let range = range(subnet)?;
        let bad = || IpamError::BadRange {
            first,
            last,
            subnet,
        };
        if first.is_ipv6() != range.v6 || last.is_ipv6() != range.v6 {
            return Err(bad());
        }
        let (lo, hi) = (to_int(first), to_int(last));
        if lo > hi || lo < to_int(subnet.network()) || hi > range.last + u128::from(!range.v6) {
            return Err(bad());
        }
        let (lo, hi) = (lo.max(range.first), hi.min(range.last));
        let pool = self.pools.entry(subnet.to_string()).or_default();
        // As in `allocate`: bounded by the reservations, not the range's size.
        let attempts = (hi.saturating_sub(lo) + 1).min(pool.len() as u128 + 2);
        for candidate in (lo..=hi).take(attempts as usize) {
            let addr = from_int(candidate, range.v6);
            if candidate == range.gateway || pool.holder(&addr).is_some() {
                continue;
            }
            pool.reserve(addr, pool.owner(owner));
            return Ok(addr);
        }
        Err(IpamError::RangeFull {
            first,
            last,
            subnet,
        })
    }

    pub fn allocate(
        &mut self,
        subnet: IpNetwork,
        owner: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        let range = range(subnet)?;
        let pool = self.pools.entry(subnet.to_string()).or_default();
        if let Some(addr) = requested {
            check_requested(subnet, range, pool, addr)?;
            pool.reserve(addr, pool.owner(owner));
            return Ok(addr);
        }
        let span = range.last - range.first + 1;
        let start = pool
            .last
            .map(to_int)
            .filter(|v| (range.first..=range.last).contains(v))
            .map(|v| v + 1)
            .unwrap_or(range.gateway + 1);
        // Among reserved+2 consecutive candidates at most reserved+1 are taken
        // (the gateway too), so the search is bounded by the reservations, not
        // by the size of the subnet (an IPv6 /64 has 2^64 candidates).
        let attempts = span.min(pool.len() as u128 + 2);
        for step in 0..attempts {
            let mut candidate = start + step;
            if candidate > range.last {
                candidate = range.first + (candidate - range.last - 1) % span;
            }
            let addr = from_int(candidate, range.v6);
            if candidate == range.gateway || pool.holder(&addr).is_some() {
                continue;
            }
            pool.reserve(addr, pool.owner(owner));
            pool.last = Some(addr);
            return Ok(addr);
        }
        Err(IpamError::Full {
            subnet,
            in_use: pool.len() as u128 + 1,
        })
    }

    /// Checks that `addr` could be reserved in `subnet`, without reserving it.
    pub fn check(&self, subnet: IpNetwork, addr: IpAddr) -> Result<(), IpamError> {
        let range = range(subnet)?;
        let empty = Pool::default();
        let pool = self.pools.get(&subnet.to_string()).unwrap_or(&empty);
        check_requested(subnet, range, pool, addr)
    }

    /// Releases every address `owner` holds; returns them.
    pub fn release_owner(&mut self, owner: &str) -> Vec<IpAddr> {
        let mut released = Vec::new();
        for pool in self.pools.values_mut() {
            let held: Vec<IpAddr> = pool.held_by(owner).collect();
            for addr in held {
                pool.release(&addr);
                released.push(addr);
            }
        }
        released
    }

    /// Every container id holding an address.
    pub fn owners(&self) -> BTreeSet<String> {
        self.pools
            .values()
            .flat_map(|p| p.holders.keys().map(|o| o.to_string()))
            .collect()
    }

    /// Addresses held by `owner`.
    pub fn held_by(&self, owner: &str) -> Vec<IpAddr> {
        self.pools.values().flat_map(|p| p.held_by(owner)).collect()
    }

    /// Forgets which addresses were touched: the copy now matches the files.
    pub fn settle(&mut self) {
        self.pools.values_mut().for_each(Pool::settle);
    }

    /// Undoes what was touched since the last `settle`, from `persisted`.
    pub fn revert_to(&mut self, persisted: &Reservations) {
        self.pools
            .retain(|subnet, _| persisted.pools.contains_key(subnet));
        for (subnet, old) in &persisted.pools {
            match self.pools.get_mut(subnet) {
                Some(pool) => pool.revert_to(old),
                None => {
                    self.pools.insert(subnet.clone(), old.clone());
                }
            }
        }
    }

    pub fn usage(&self, subnet: IpNetwork) -> Usage {
        let in_use = self
            .pools
            .get(&subnet.to_string())
            .map(|p| p.len() as u128)
            .unwrap_or(0)
            + 1;
        let capacity = range(subnet).map(|r| r.last - r.first + 1).unwrap_or(0);
        Usage {
            subnet,
            in_use,
            capacity,
        }
    }
}

fn check_requested(
    subnet: IpNetwork,
    range: Range,
    pool: &Pool,
    addr: IpAddr,
) -> Result<(), IpamError> {
    if addr.is_ipv6() != range.v6 || !subnet.contains(addr) {
        return Err(IpamError::OutsideSubnet { addr, subnet });
    }
    let value = to_int(addr);
    let why = if value == range.gateway {
        Some("the gateway")
    } else if value < range.first {
        Some("the network address")
    } else if value > range.last {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(IpamError::NotAssignable { addr, subnet, why });
    }
    if let Some(owner) = pool.holder(&addr) {
        return Err(IpamError::Taken {
            addr,
            owner: owner.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_addresses_in_order_after_the_gateway() {
        let mut r = Reservations::default();
        let s = net("10.66.0.0/24");
        assert_eq!(r.allocate(s, "a", None).unwrap(), ip("10.66.0.2"));
        assert_eq!(r.allocate(s, "b", None).unwrap(), ip("10.66.0.3"));
        assert_eq!(gateway(s), ip("10.66.0.1"));
        // Round robin: a released address is not handed out again at once.
        assert_eq!(r.release_owner("a"), vec![ip("10.66.0.2")]);
        assert_eq!(r.allocate(s, "c", None).unwrap(), ip("10.66.0.4"));
        assert_eq!(r.usage(s).in_use, 3);
        assert_eq!(r.usage(s).capacity, 254);
    }

    #[test]
    fn a_full_subnet_says_so_and_wraps_around_before() {
        let mut r = Reservations::default();
        let s = net("10.66.0.0/24");
        for i in 0..253 {
            let a = r.allocate(s, &format!("c{i}"), None).unwrap();
            assert_ne!(a, ip("10.66.0.255"));
            assert_ne!(a, ip("10.66.0.1"));
        }
        let err = r.allocate(s, "late", None).unwrap_err().to_string();
        assert!(
            err.starts_with("subnet 10.66.0.0/24 is full (254 addresses in use)"),
            "{err}"
        );
        r.release_owner("c7");
        assert_eq!(r.allocate(s, "late", None).unwrap(), ip("10.66.0.9"));
    }

    #[test]
    fn static_addresses_are_checked() {
        let mut r = Reservations::default();
        let s = net("10.66.0.0/24");
        assert_eq!(
            r.allocate(s, "a", Some(ip("10.66.0.50"))).unwrap(),
            ip("10.66.0.50")
        );
        let err = r.allocate(s, "b", Some(ip("10.66.0.50"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.66.0.50 is already in use by container a"
        );
        let err = r.allocate(s, "b", Some(ip("10.67.0.5"))).unwrap_err();
        assert!(
            err.to_string().contains("outside subnet 10.66.0.0/24"),
            "{err}"
        );
        for (addr, why) in [
            ("10.66.0.1", "the gateway"),
            ("10.66.0.0", "the network address"),
            ("10.66.0.255", "the broadcast address"),
        ] {
            let err = r.allocate(s, "b", Some(ip(addr))).unwrap_err().to_string();
            assert!(err.contains(why), "{addr}: {err}");
        }
        assert!(r.allocate(s, "b", Some(ip("fd00::5"))).is_err());
        // A failed request reserved nothing.
        assert_eq!(r.owners().len(), 1);
    }

    #[test]
    fn ipv6_pools_search_only_as_far_as_the_reservations() {
        let mut r = Reservations::default();
        let s = net("fd66::/64");
        assert_eq!(r.allocate(s, "a", None).unwrap(), ip("fd66::2"));
        assert_eq!(r.allocate(s, "b", None).unwrap(), ip("fd66::3"));
        assert_eq!(
            r.allocate(s, "c", Some(ip("fd66::ffff:ffff:ffff:ffff")))
                .unwrap(),
            ip("fd66::ffff:ffff:ffff:ffff")
        );
        assert_eq!(r.held_by("b"), vec![ip("fd66::3")]);
        let small = net("fd66:1::/126");
        assert_eq!(r.allocate(small, "a", None).unwrap(), ip("fd66:1::2"));
        assert_eq!(r.allocate(small, "b", None).unwrap(), ip("fd66:1::3"));
        assert!(matches!(
            r.allocate(small, "c", None),
            Err(IpamError::Full { in_use: 3, .. })
        ));
    }

    #[test]
    fn a_range_hands_out_its_first_free_address_then_is_full() {
        let subnet: IpNetwork = "10.77.0.0/24".parse().unwrap();
        let mut r = Reservations::default();
        let (first, last) = ("10.77.0.10".parse().unwrap(), "10.77.0.11".parse().unwrap());
        assert_eq!(
            r.allocate_in_range(subnet, "a", first, last).unwrap(),
            first
        );
        assert_eq!(r.allocate_in_range(subnet, "b", first, last).unwrap(), last);
        assert!(matches!(
            r.allocate_in_range(subnet, "c", first, last),
            Err(IpamError::RangeFull { .. })
        ));
        r.release_owner("a");
        assert_eq!(
            r.allocate_in_range(subnet, "c", first, last).unwrap(),
            first
        );
        // The gateway is skipped, a range outside the subnet refused.
        let from_gw = r
            .allocate_in_range(
                subnet,
                "d",
                "10.77.0.1".parse().unwrap(),
                "10.77.0.3".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(from_gw.to_string(), "10.77.0.2");
        assert!(matches!(
            r.allocate_in_range(
                subnet,
                "e",
                "10.78.0.1".parse().unwrap(),
                "10.78.0.9".parse().unwrap()
            ),
            Err(IpamError::BadRange { .. })
        ));
    }
}
