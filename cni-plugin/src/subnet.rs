//! Address ranges a container network can never use. A subnet given anywhere
//! in a config (`subnet`, `subnet6`, `ipam.subnet`, `ipam.ranges`, the
//! `ipRanges` capability) that overlaps one of them is code 7 before anything
//! is created: `127.0.0.0/8` would put a loopback address on the bridge,
//! `0.0.0.0/0` a default-route-sized one, and a multicast subnet fails only
//! in the kernel, half-way through.

use ipnetwork::IpNetwork;

use crate::error::CniError;

/// The special ranges, with what each is (for the message).
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "limited broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Code 7 naming `field` and `subnet` when the subnet is a default route or
/// overlaps a loopback, multicast, link-local, unspecified or broadcast range.
pub fn refuse_special(field: &str, subnet: IpNetwork) -> Result<(), CniError> {
    let why = if subnet.prefix() == 0 {
        Some(format!(
            "it is a default route ({subnet} covers every address)"
        ))
    } else {
        SPECIAL.iter().find_map(|(range, what)| {
            let range: IpNetwork = range.parse().expect("a valid special range");
            overlaps(&subnet, &range).then(|| format!("it overlaps the {what} range {range}"))
        })
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::invalid_config(
            format!("invalid {field} {subnet}: {why}"),
            "containers need a unicast subnet of their own, e.g. 10.66.0.0/16 or fd66::/64",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<(), CniError> {
        refuse_special("subnet", s.parse().unwrap())
    }

    #[test]
    fn ordinary_subnets_pass() {
        for ok in [
            "10.66.0.0/16",
            "192.168.9.0/24",
            "198.18.0.0/15",
            "100.64.0.0/10",
            "fd66::/64",
            "2001:db8::/48",
        ] {
            check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn special_subnets_are_code_7_naming_field_value_and_range() {
        for (bad, what) in [
            ("127.0.0.0/8", "loopback"),
            ("127.1.2.0/24", "loopback"),
            ("96.0.0.0/3", "loopback"),
            ("0.0.0.0/0", "default route"),
            ("0.0.0.0/8", "unspecified"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.7.0/24", "link-local"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("255.255.255.255/32", "broadcast"),
            ("::/0", "default route"),
            ("::/64", "unspecified"),
            ("::1/128", "loopback"),
            ("fe80::/64", "link-local"),
            ("ff02::/16", "multicast"),
        ] {
            let e = check(bad).unwrap_err();
            assert_eq!(e.code.number(), 7, "{bad}");
            assert!(
                e.msg.contains("subnet") && e.msg.contains(bad) && e.msg.contains(what),
                "{bad}: {}",
                e.msg
            );
        }
    }
}
