//! Pipework's positional words after the guest: addresses, `dhcp`, MAC@VLAN.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use plumb::addr::parse_cidr;
use plumb::error::{Error, Result};
use plumb::link::validate_vlan_id;
use plumb::mac::MacAddr;

#[derive(Debug, Default, PartialEq)]
pub struct Positional {
    pub addresses: Vec<(IpNetwork, Option<IpAddr>)>,
    pub dhcp: bool,
    pub dhcp_v6: bool,
    pub mac: Option<MacAddr>,
    pub vlan: Option<u32>,
}

/// Reads `ADDR/LEN[@GW]… | dhcp` then an optional `[MAC][@VLAN]`.
pub fn parse_rest(words: &[String], family: Option<&str>) -> Result<Positional> {
    let mut out = Positional::default();
    for (i, word) in words.iter().enumerate() {
        let last = i + 1 == words.len();
        if word == "dhcp" || word.starts_with("dhcp:") {
            out.dhcp = true;
            out.dhcp_v6 = family == Some("6");
        } else if word.contains('/') {
            let (cidr, gateway) = match word.split_once('@') {
                Some((c, g)) => (c, Some(g)),
                None => (word.as_str(), None),
            };
            let network = parse_cidr(cidr)?;
            let gateway = gateway
                .map(|g| {
                    g.parse::<IpAddr>()
                        .map_err(|_| Error::invalid("gateway", g, "not an IP address"))
                })
                .transpose()?;
            if let Some(f) = family {
                if (f == "4") != network.is_ipv4() {
                    return Err(Error::invalid(
                        "address",
                        word.as_str(),
                        format!("is not IPv{f} as -a {f} asks"),
                    ));
                }
            }
            out.addresses.push((network, gateway));
        } else if word.parse::<IpAddr>().is_ok() {
            // A bare address: say what is missing instead of reading it as a MAC.
            parse_cidr(word)?;
        } else if last {
            let (mac, vlan) = match word.rsplit_once('@') {
                Some((m, v)) => (m, Some(v)),
                None => (word.as_str(), None),
            };
            if !mac.is_empty() {
                out.mac = Some(MacAddr::parse_user(mac)?);
            }
            if let Some(v) = vlan {
                let id: u32 = v
                    .parse()
                    .map_err(|_| Error::invalid("VLAN ID", v, "not a number"))?;
                out.vlan = Some(u32::from(validate_vlan_id(id)?));
            }
        } else {
            return Err(Error::invalid(
                "argument",
                word.as_str(),
                "expected ADDR/LEN[@GATEWAY] or dhcp (a MAC[@VLAN] may only come last)",
            ));
        }
    }
    if out.addresses.is_empty() && !out.dhcp {
        return Err(Error::invalid(
            "arguments",
            words.join(" "),
            "need at least one ADDR/LEN[@GATEWAY] or dhcp",
        ));
    }
    if out.dhcp && !out.addresses.is_empty() {
        return Err(Error::invalid(
            "arguments",
            words.join(" "),
            "dhcp and static addresses exclude each other",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Positional> {
        let words: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse_rest(&words, None)
    }

    #[test]
    fn reads_pipework_words() {
        let p = parse("10.0.0.2/24@10.0.0.1 fd00::2/64@fd00::1 02:aa:bb:cc:dd:ee@10").unwrap();
        assert_eq!(p.addresses.len(), 2);
        assert_eq!(p.addresses[0].1, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.mac.unwrap().to_string(), "02:aa:bb:cc:dd:ee");
        assert_eq!(p.vlan, Some(10));
        let p = parse("10.0.0.2/24 @20").unwrap();
        assert_eq!((p.mac, p.vlan), (None, Some(20)));
        let p = parse("10.0.0.2/24 U:web1").unwrap();
        assert_eq!(p.mac, Some(MacAddr::from_seed("web1")));
        assert!(parse("dhcp").unwrap().dhcp);
    }

    #[test]
    fn refuses_bad_words_with_reasons() {
        for (input, needle) in [
            ("10.0.0.2", "needs a prefix length"),
            ("02:aa:bb:cc:dd:ee", "need at least one"),
            ("10.0.0.300/24", "10.0.0.300/24"),
            ("10.0.0.2/24 @0", "reserved"),
            ("10.0.0.2/24 @4095", "reserved"),
            ("10.0.0.2/24 zz:aa:bb:cc:dd:ee", "MAC"),
            ("10.0.0.2/24@nothere", "gateway"),
            ("dhcp 10.0.0.2/24", "exclude"),
        ] {
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
        }
        let words = vec!["fd00::2/64".to_string()];
        assert!(parse_rest(&words, Some("4")).is_err());
    }
}
