//! MAC addresses: parsing, printing, and deterministic MACs from a seed.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A 48-bit Ethernet (MAC) address. Displays and parses as
/// `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The address of these six bytes, in wire order.
    pub const fn new(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }

    /// The address of a 6-byte slice; None for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// The six bytes, in wire order.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The MAC pipework derives from `U:<seed>`: 02 followed by the first five
    /// bytes of `md5("<seed>\n")`. Same seed, same MAC, with pipework too; the 02
    /// prefix makes it a locally administered unicast address.
    pub fn from_seed(seed: &str) -> MacAddr {
        let digest = Md5::new()
            .chain_update(seed.as_bytes())
            .chain_update(b"\n")
            .finalize();
        MacAddr([0x02, digest[0], digest[1], digest[2], digest[3], digest[4]])
    }

    /// Reads a MAC as users write it: `aa:bb:cc:dd:ee:ff`, or `U:<seed>`.
    pub fn parse_user(text: &str) -> Result<MacAddr> {
        match text.strip_prefix("U:") {
            Some("") => Err(Error::invalid("MAC", text, "U: needs a seed after it")),
            Some(seed) => Ok(MacAddr::from_seed(seed)),
            None => text.parse(),
        }
    }

    /// True for a group address (the low bit of the first byte); such an
    /// address cannot be a link's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = Error;
    fn from_str(text: &str) -> Result<MacAddr> {
        let bad = |why: &str| Error::invalid("MAC", text, why);
        let parts: Vec<&str> = text.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad("expected six hex octets like 02:42:ac:11:00:02"));
        }
        let mut octets = [0u8; 6];
        for (octet, part) in octets.iter_mut().zip(&parts) {
            if part.is_empty() || part.len() > 2 {
                return Err(bad("each octet is one or two hex digits"));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad("not hexadecimal"))?;
        }
        let mac = MacAddr(octets);
        if mac.is_multicast() {
            return Err(bad("is a multicast address; a link needs a unicast MAC"));
        }
        if octets == [0; 6] {
            return Err(bad("all zeros is not a usable MAC"));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MacAddr::parse_user(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
        assert_eq!("2-42-ac-11-0-2".parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "zz:42:ac:11:00:02",
            "023:42:ac:11:00:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
        let err = "01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("multicast"), "{err}");
        assert!(MacAddr::parse_user("U:").is_err());
    }

    #[test]
    fn seeded_macs_match_pipework() {
        // pipework computes `echo c1 | md5sum` = 5f0be34bb0…, so MAC 02:5f:0b:e3:4b:b0.
        assert_eq!(
            MacAddr::parse_user("U:c1").unwrap().to_string(),
            "02:5f:0b:e3:4b:b0"
        );
        assert_eq!(MacAddr::from_seed("c1"), MacAddr::from_seed("c1"));
        assert_ne!(MacAddr::from_seed("c1"), MacAddr::from_seed("c2"));
        assert!(!MacAddr::from_seed("anything").is_multicast());
    }
}
