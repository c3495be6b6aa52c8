//! Address ranges for the built-in IPAM: `ipam.rangeStart`/`rangeEnd` in the
//! config, or the runtime's `ipRanges` capability. The plugin checks the range
//! against the network's subnet and hands it to netd (library or daemon),
//! which reserves the range's first free address under its lock.

use std::net::IpAddr;

use crate::error::CniError;
use crate::types::NetConf;

/// An inclusive IPv4 range inside netd's subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    pub first: u32,
    pub last: u32,
}

fn v4(ip: IpAddr, what: &str) -> Result<u32, CniError> {
    match ip {
        IpAddr::V4(a) => Ok(u32::from(a)),
        IpAddr::V6(_) => Err(CniError::invalid_config(
            format!("{what} {ip} is IPv6"),
            "ranges of the built-in IPAM are IPv4",
        )),
    }
}

fn setting(conf: &NetConf, key: &str) -> Result<Option<IpAddr>, CniError> {
    let Some(value) = conf.ipam.as_ref().and_then(|i| i.settings.get(key)) else {
        return Ok(None);
    };
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            CniError::invalid_config(format!("invalid ipam.{key} {value}"), "an IP address")
        })
}

/// Whether the config or the runtime asks the built-in IPAM for a range.
pub fn asked(conf: &NetConf) -> bool {
    conf.ipam_delegate().is_none()
        && (conf
            .runtime_config
            .ip_ranges
            .iter()
            .flatten()
            .any(|r| r.subnet.is_ipv4())
            || conf.ipam.as_ref().is_some_and(|i| {
                i.settings.contains_key("rangeStart") || i.settings.contains_key("rangeEnd")
            }))
}

/// The range this ADD must pick from, if the config or the runtime asks for one.
pub fn wanted(
    conf: &NetConf,
    subnet: ipnetwork::Ipv4Network,
) -> Result<Option<AddressRange>, CniError> {
    if !asked(conf) {
        return Ok(None);
    }
    let base = u32::from(subnet.network());
    let top = u32::from(subnet.broadcast());
    let (mut start, mut end) = (setting(conf, "rangeStart")?, setting(conf, "rangeEnd")?);
    if let Some(r) = conf
        .runtime_config
        .ip_ranges
        .iter()
        .flatten()
        .find(|r| r.subnet.is_ipv4())
    {
        let inside = |ip: IpAddr| match ip {
            IpAddr::V4(a) => subnet.contains(a),
            IpAddr::V6(_) => false,
        };
        if !inside(r.subnet.network()) || r.subnet.prefix() < subnet.prefix() {
            return Err(CniError::invalid_config(
                format!("ipRanges subnet {} is not inside the network's subnet {subnet}", r.subnet),
                "weft's built-in IPAM hands out addresses of its one subnet; set `subnet` to cover the range",
            ));
        }
        let IpAddr::V4(first) = r.subnet.network() else {
            unreachable!()
        };
        start = Some(r.range_start.unwrap_or(IpAddr::V4(first)));
        end = Some(
            r.range_end.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from(first)
                    | !u32::MAX
                        .checked_shl(32 - r.subnet.prefix() as u32)
                        .unwrap_or(0),
            ))),
        );
    }
    if start.is_none() && end.is_none() {
        return Ok(None);
    }
    let first = start
        .map(|s| v4(s, "rangeStart"))
        .transpose()?
        .unwrap_or(base + 2);
    let last = end
        .map(|e| v4(e, "rangeEnd"))
        .transpose()?
        .unwrap_or(top - 1);
    // Network, gateway and broadcast addresses are never handed out.
    let first = first.max(base + 2);
    let last = last.min(top - 1);
    if first > last || first < base || last > top {
        return Err(CniError::invalid_config(
            format!(
                "range {}-{} is empty or outside subnet {subnet}",
                std::net::Ipv4Addr::from(first),
                std::net::Ipv4Addr::from(last)
            ),
            "rangeStart and rangeEnd must lie inside the subnet, start before end",
        ));
    }
    Ok(Some(AddressRange { first, last }))
}

impl AddressRange {
    /// As netd's attach request takes it.
    pub fn to_netd(self) -> netd::Ipv4Range {
        netd::Ipv4Range {
            first: std::net::Ipv4Addr::from(self.first),
            last: std::net::Ipv4Addr::from(self.last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: serde_json::Value) -> NetConf {
        NetConf::parse(json.to_string().as_bytes()).unwrap()
    }

    fn subnet(s: &str) -> ipnetwork::Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_from_config_and_capability() {
        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
            "ipam": {"type": "weft", "subnet": "10.77.0.0/24", "rangeStart": "10.77.0.10", "rangeEnd": "10.77.0.11"}}),
        );
        let r = wanted(&c, subnet("10.77.0.0/24")).unwrap().unwrap();
        assert_eq!(
            r.to_netd(),
            netd::Ipv4Range {
                first: "10.77.0.10".parse().unwrap(),
                last: "10.77.0.11".parse().unwrap()
            }
        );

        let c = conf(
            serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft",
            "runtimeConfig": {"ipRanges": [[{"subnet": "10.77.0.64/26"}]]}}),
        );
        let r = wanted(&c, subnet("10.77.0.0/24")).unwrap().unwrap();
        assert_eq!(
            (r.first, r.last),
            (
                u32::from(std::net::Ipv4Addr::new(10, 77, 0, 64)),
                u32::from(std::net::Ipv4Addr::new(10, 77, 0, 127))
            )
        );
        assert_eq!(
            wanted(&c, subnet("10.78.0.0/24"))
                .unwrap_err()
                .code
                .number(),
            7
        );
        let plain = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft"}));
        assert_eq!(wanted(&plain, subnet("10.77.0.0/24")).unwrap(), None);
    }
}
