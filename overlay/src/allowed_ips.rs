//! The allowed-IPs table: longest-prefix match from an inner address to a peer.
//!
//! One hash map per prefix length in use, searched from the longest length
//! down. A lookup costs at most one hash probe per distinct prefix length in
//! the table (a cluster typically uses two or three: /32 hosts, /24 host
//! subnets, maybe a /16) and never allocates. The hash is a multiply-shift over
//! the masked address: the keys are addresses, not attacker-chosen strings
//! (only configuration inserts them), so no keyed hash is needed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Why a change to an [`AllowedIps`] table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedIpsError {
    /// The prefix is already another peer's: a prefix routes to one peer only.
    #[error("allowed IPs {network} already route to peer {owner}; remove them there first")]
    Conflict {
        /// The prefix asked for.
        network: IpNetwork,
        /// The peer that has it: its public key in base64.
        owner: String,
    },
}

/// Longest-prefix-match table from IPv4 and IPv6 prefixes to values (peer ids).
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: PrefixTable<u32, T>,
    v6: PrefixTable<u128, T>,
}

impl<T: Copy + Eq> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: PrefixTable::new(32),
            v6: PrefixTable::new(128),
        }
    }
}

impl<T: Copy + Eq> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `network` (host bits are ignored) to `value`, returning the value it
    /// replaced.
    pub fn insert(&mut self, network: IpNetwork, value: T) -> Option<T> {
        match network {
            IpNetwork::V4(n) => self.v4.insert(u32::from(n.ip()), n.prefix(), value),
            IpNetwork::V6(n) => self.v6.insert(u128::from(n.ip()), n.prefix(), value),
        }
    }

    /// The value `network` maps to exactly (same prefix), if any.
    pub fn get(&self, network: IpNetwork) -> Option<T> {
        match network {
            IpNetwork::V4(n) => self.v4.get(u32::from(n.ip()), n.prefix()),
            IpNetwork::V6(n) => self.v6.get(u128::from(n.ip()), n.prefix()),
        }
    }

    /// Removes exactly `network` (not the prefixes inside it); returns its value, if it had one.
    pub fn remove(&mut self, network: IpNetwork) -> Option<T> {
        match network {
            IpNetwork::V4(n) => self.v4.remove(u32::from(n.ip()), n.prefix()),
            IpNetwork::V6(n) => self.v6.remove(u128::from(n.ip()), n.prefix()),
        }
    }

    /// Removes every prefix that maps to `value`.
    pub fn remove_value(&mut self, value: T) {
        self.v4.retain(|v| v != value);
        self.v6.retain(|v| v != value);
    }

    /// The value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// [`lookup`](Self::lookup) for an IPv4 address.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<T> {
        self.v4.lookup(u32::from(addr))
    }

    /// [`lookup`](Self::lookup) for an IPv6 address.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<T> {
        self.v6.lookup(u128::from(addr))
    }

    /// Every prefix mapping to `value`, IPv4 first, longest first.
    pub fn networks_of(&self, value: T) -> Vec<IpNetwork> {
        let mut out = Vec::new();
        for (len, addr) in self.v4.entries_of(value) {
            out.push(IpNetwork::V4(
                ipnetwork::Ipv4Network::new(Ipv4Addr::from(addr), len)
                    .expect("prefix lengths in the table are at most 32"),
            ));
        }
        for (len, addr) in self.v6.entries_of(value) {
            out.push(IpNetwork::V6(
                ipnetwork::Ipv6Network::new(Ipv6Addr::from(addr), len)
                    .expect("prefix lengths in the table are at most 128"),
            ));
        }
        out
    }

    /// Prefixes in the table, IPv4 and IPv6 together.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// True when the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An address type usable as a masked key.
trait Bits: Copy + Eq + std::hash::Hash {
    fn mask(self, len: u8, width: u8) -> Self;
    fn fold(self) -> u64;
}

impl Bits for u32 {
    #[inline]
    fn mask(self, len: u8, width: u8) -> u32 {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (width - len))
        }
    }
    #[inline]
    fn fold(self) -> u64 {
        self as u64
    }
}

impl Bits for u128 {
    #[inline]
    fn mask(self, len: u8, width: u8) -> u128 {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (width - len))
        }
    }
    #[inline]
    fn fold(self) -> u64 {
        (self as u64) ^ ((self >> 64) as u64).rotate_left(29)
    }
}

type Level<K, T> = (u8, HashMap<K, T, BuildHasherDefault<AddrHasher>>);

#[derive(Debug, Clone)]
struct PrefixTable<K, T> {
    width: u8,
    /// Non-empty per-length maps, longest prefix first.
    levels: Vec<Level<K, T>>,
}

impl<K: Bits, T: Copy + Eq> PrefixTable<K, T> {
    fn new(width: u8) -> Self {
        PrefixTable {
            width,
            levels: Vec::new(),
        }
    }

    fn insert(&mut self, addr: K, len: u8, value: T) -> Option<T> {
        let key = addr.mask(len, self.width);
        let pos = match self.levels.iter().position(|(l, _)| *l <= len) {
            Some(i) if self.levels[i].0 == len => i,
            Some(i) => {
                self.levels.insert(i, (len, HashMap::default()));
                i
            }
            None => {
                self.levels.push((len, HashMap::default()));
                self.levels.len() - 1
            }
        };
        self.levels[pos].1.insert(key, value)
    }

    fn get(&self, addr: K, len: u8) -> Option<T> {
        let key = addr.mask(len, self.width);
        self.levels
            .iter()
            .find(|(l, _)| *l == len)
            .and_then(|(_, m)| m.get(&key).copied())
    }

    fn remove(&mut self, addr: K, len: u8) -> Option<T> {
        let key = addr.mask(len, self.width);
        let pos = self.levels.iter().position(|(l, _)| *l == len)?;
        let old = self.levels[pos].1.remove(&key);
        if self.levels[pos].1.is_empty() {
            self.levels.remove(pos);
        }
        old
    }

    fn retain(&mut self, keep: impl Fn(T) -> bool) {
        for (_, map) in &mut self.levels {
            map.retain(|_, v| keep(*v));
        }
        self.levels.retain(|(_, m)| !m.is_empty());
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<T> {
        for (len, map) in &self.levels {
            if let Some(v) = map.get(&addr.mask(*len, self.width)) {
                return Some(*v);
            }
        }
        None
    }

    fn entries_of(&self, value: T) -> Vec<(u8, K)> {
        let mut out = Vec::new();
        for (len, map) in &self.levels {
            for (k, v) in map {
                if *v == value {
                    out.push((*len, *k));
                }
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }
}

/// Multiply-shift hashing of an already folded address.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 32;
    }
    #[inline]
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v.fold());
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 32;
    }
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
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.0/24"), 3);
        t.insert(net("10.1.2.3/32"), 4);
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(1));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(2));
        assert_eq!(t.lookup(ip("10.1.2.9")), Some(3));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(4));
        assert_eq!(t.lookup(ip("11.0.0.1")), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn host_bits_are_masked_and_default_routes_match_everything() {
        let mut t = AllowedIps::new();
        t.insert(net("192.168.7.77/24"), 7);
        assert_eq!(t.lookup(ip("192.168.7.1")), Some(7));
        assert_eq!(t.get(net("192.168.7.0/24")), Some(7));
        assert_eq!(t.lookup(ip("1.2.3.4")), None);
        t.insert(net("0.0.0.0/0"), 9);
        assert_eq!(t.lookup(ip("1.2.3.4")), Some(9));
        assert_eq!(t.lookup(ip("192.168.7.1")), Some(7));
        // IPv4 routes never answer for IPv6 and vice versa.
        assert_eq!(t.lookup(ip("::1")), None);
        t.insert(net("::/0"), 5);
        assert_eq!(t.lookup(ip("::1")), Some(5));
        assert_eq!(t.lookup(ip("1.2.3.4")), Some(9));
    }

    #[test]
    fn ipv6_prefixes_of_every_length() {
        let mut t = AllowedIps::new();
        t.insert(net("fd00::/8"), 1);
        t.insert(net("fd00:1::/32"), 2);
        t.insert(net("fd00:1:2:3::/64"), 3);
        t.insert(net("fd00:1:2:3::4/127"), 4);
        t.insert(net("fd00:1:2:3::4/128"), 5);
        assert_eq!(t.lookup(ip("fd99::1")), Some(1));
        assert_eq!(t.lookup(ip("fd00:1:ffff::1")), Some(2));
        assert_eq!(t.lookup(ip("fd00:1:2:3::9")), Some(3));
        assert_eq!(t.lookup(ip("fd00:1:2:3::5")), Some(4));
        assert_eq!(t.lookup(ip("fd00:1:2:3::4")), Some(5));
        assert_eq!(t.lookup(ip("fe80::1")), None);
        // The top bit of a u128 must survive masking.
        t.insert(net("8000::/1"), 6);
        assert_eq!(t.lookup(ip("ffff::1")), Some(6));
        assert_eq!(t.lookup(ip("7fff::1")), None);
    }

    #[test]
    fn replace_remove_and_remove_by_value() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("10.0.0.0/24"), 1), None);
        assert_eq!(t.insert(net("10.0.0.0/24"), 2), Some(1));
        t.insert(net("10.0.1.0/24"), 2);
        t.insert(net("10.0.2.0/24"), 3);
        t.insert(net("fd00::/64"), 2);
        let mut of2 = t.networks_of(2);
        of2.sort();
        assert_eq!(
            of2,
            vec![net("10.0.0.0/24"), net("10.0.1.0/24"), net("fd00::/64")]
        );
        assert_eq!(t.remove(net("10.0.0.0/24")), Some(2));
        assert_eq!(t.remove(net("10.0.0.0/24")), None);
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        t.remove_value(2);
        assert_eq!(t.lookup(ip("10.0.1.1")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("10.0.2.1")), Some(3));
        assert_eq!(t.len(), 1);
        t.remove_value(3);
        assert!(t.is_empty());
        assert!(t.v4.levels.is_empty() && t.v6.levels.is_empty());
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        // A deterministic pseudo-random table, checked against the obvious algorithm.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut t = AllowedIps::new();
        let mut list: Vec<(u32, u8, u32)> = Vec::new();
        for value in 0..300u32 {
            let len = (next() % 33) as u8;
            let addr = (next() as u32) & 0x0a0f_ffff | 0x0a00_0000;
            let masked = addr.mask(len, 32);
            list.retain(|(a, l, _)| !(*l == len && *a == masked));
            list.push((masked, len, value));
            t.insert(
                IpNetwork::V4(ipnetwork::Ipv4Network::new(addr.into(), len).unwrap()),
                value,
            );
        }
        for _ in 0..5000 {
            let probe = (next() as u32) & 0x0a0f_ffff | 0x0a00_0000;
            let expected = list
                .iter()
                .filter(|(a, l, _)| probe.mask(*l, 32) == *a)
                .max_by_key(|(_, l, _)| *l)
                .map(|(_, _, v)| *v);
            assert_eq!(t.lookup_v4(probe.into()), expected, "probe {probe:#x}");
        }
    }
}
