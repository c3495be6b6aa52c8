//! CNI versions weft speaks (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0) and the
//! result shape of each.
//!
//! | version | `ips[].version` | `interfaces[].mtu/socketPath/pciID`, route `mtu/advmss/priority/table/scope` | CHECK | GC, STATUS |
//! |---|---|---|---|---|
//! | 0.3.0, 0.3.1 | "4"/"6", required | no | no | no |
//! | 0.4.0 | "4"/"6", required | no | yes | no |
//! | 1.0.0 | dropped | no | yes | no |
//! | 1.1.0 | dropped | yes | yes | yes |
//!
//! 0.1.0 and 0.2.0 (the pre-chaining `ip4`/`ip6` result) are not spoken:
//! error code 1.

use serde_json::{json, Map, Value};

use crate::error::CniError;
use crate::result::CniResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// What VERSION reports, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl Version {
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    pub const NEWEST: Version = Version::V1_1_0;

    /// Reads a `cniVersion`. A string that is no version at all is code 6
    /// (decoding); a version weft does not speak is code 1.
    pub fn parse(text: &str) -> Result<Version, CniError> {
        if let Some(v) = Version::ALL.iter().find(|v| v.as_str() == text) {
            return Ok(*v);
        }
        let looks_like_semver = {
            let core = text.split(['-', '+']).next().unwrap_or("");
            let parts: Vec<&str> = core.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if !looks_like_semver {
            return Err(CniError::decoding(
                format!("cniVersion {text:?} is not a version"),
                format!("weft speaks {}", SUPPORTED.join(", ")),
            ));
        }
        Err(CniError::incompatible_version(
            format!("incompatible CNI version {text}"),
            format!("weft speaks {}", SUPPORTED.join(", ")),
        ))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK arrived in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS arrived in 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// 0.3.x and 0.4.0 carry `"version": "4"|"6"` in each `ips` entry.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// 1.1.0 added interface `mtu`, `socketPath`, `pciID` and the route extras.
    pub fn has_1_1_fields(self) -> bool {
        self >= Version::V1_1_0
    }
}

/// The VERSION answer: the version asked for echoed back, and the list.
pub fn version_info(asked: Option<&str>) -> Value {
    json!({
        "cniVersion": asked.unwrap_or(Version::NEWEST.as_str()),
        "supportedVersions": SUPPORTED,
    })
}

/// Writes `result` in the shape of `version`.
pub fn result_to_json(result: &CniResult, version: Version) -> Value {
    let mut value = serde_json::to_value(result).expect("a result always serialises");
    let object = value.as_object_mut().expect("a result is an object");
    if !version.has_1_1_fields() {
        strip(object, "interfaces", &["mtu", "socketPath", "pciID"]);
        strip(
            object,
            "routes",
            &["mtu", "advmss", "priority", "table", "scope"],
        );
    }
    if version.has_ip_version_field() {
        if let Some(Value::Array(ips)) = object.get_mut("ips") {
            for (entry, ip) in ips.iter_mut().zip(&result.ips) {
                let family = if ip.address.is_ipv4() { "4" } else { "6" };
                entry
                    .as_object_mut()
                    .expect("an ip entry is an object")
                    .insert("version".into(), json!(family));
            }
        }
    }
    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version.as_str()));
    out.extend(std::mem::take(object));
    Value::Object(out)
}

fn strip(object: &mut Map<String, Value>, list: &str, keys: &[&str]) {
    if let Some(Value::Array(items)) = object.get_mut(list) {
        for item in items {
            if let Some(item) = item.as_object_mut() {
                for key in keys {
                    item.remove(*key);
                }
            }
        }
    }
}

/// Reads a result of any spoken version (a `prevResult`, or an IPAM plugin's
/// output). Fields a version lacks are simply absent; `ips[].version` is
/// checked against the address when present.
pub fn result_from_json(value: &Value) -> Result<CniResult, CniError> {
    if let Some(v) = value.get("cniVersion").and_then(Value::as_str) {
        Version::parse(v).map_err(|e| e.context("result"))?;
    }
    let result: CniResult = serde_json::from_value(value.clone())
        .map_err(|e| CniError::decoding("cannot decode result", e.to_string()))?;
    if let Some(Value::Array(ips)) = value.get("ips") {
        for (entry, ip) in ips.iter().zip(&result.ips) {
            if let Some(family) = entry.get("version") {
                let expected = if ip.address.is_ipv4() { "4" } else { "6" };
                if family.as_str() != Some(expected) {
                    return Err(CniError::decoding(
                        format!("ips entry {} has version {family}", ip.address),
                        format!("expected \"{expected}\""),
                    ));
                }
            }
        }
    }
    for ip in &result.ips {
        if let Some(i) = ip.interface {
            if i >= result.interfaces.len() {
                return Err(CniError::decoding(
                    format!("ips entry {} names interface {i}", ip.address),
                    format!("the result lists {} interfaces", result.interfaces.len()),
                ));
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Dns, Interface, IpConfig, Route};

    fn full() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weft0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/c1".into()),
                    socket_path: Some("/run/x.sock".into()),
                    pci_id: Some("0000:00:01.0".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.88.0.5/16".parse().unwrap(),
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd88::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                mtu: Some(1400),
                adv_mss: Some(1360),
                priority: Some(10),
                table: Some(100),
                scope: Some(0),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns {
                nameservers: vec!["10.88.0.1".into()],
                ..Default::default()
            },
        }
    }

    /// What a version cannot carry, removed: the result as seen through it.
    fn as_seen_by(version: Version) -> CniResult {
        let mut r = full();
        if !version.has_1_1_fields() {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for route in &mut r.routes {
                *route = Route::new(route.dst, route.gw);
            }
        }
        r
    }

    #[test]
    fn parse_known_unknown_and_garbage() {
        for (text, v) in SUPPORTED.iter().zip(Version::ALL) {
            assert_eq!(Version::parse(text).unwrap(), v);
            assert_eq!(v.as_str(), *text);
        }
        for old_or_new in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "0.4.1"] {
            assert_eq!(Version::parse(old_or_new).unwrap_err().code.number(), 1);
        }
        for garbage in ["", "one", "1.0", "1.0.x"] {
            assert_eq!(Version::parse(garbage).unwrap_err().code.number(), 6);
        }
    }

    #[test]
    fn commands_by_version() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_gc_and_status());
        assert!(Version::V1_1_0.has_gc_and_status());
    }

    #[test]
    fn version_answer_echoes_the_question() {
        assert_eq!(
            version_info(Some("0.4.0")),
            json!({"cniVersion": "0.4.0", "supportedVersions": SUPPORTED})
        );
        assert_eq!(version_info(None)["cniVersion"], "1.1.0");
    }

    #[test]
    fn shape_of_0_3_and_0_4_results() {
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let j = result_to_json(&full(), v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert_eq!(j["ips"][0]["interface"], 1);
            assert!(j["interfaces"][1].get("mtu").is_none());
            assert!(j["interfaces"][1].get("pciID").is_none());
            assert!(j["routes"][0].get("priority").is_none());
            assert_eq!(j["interfaces"][1]["sandbox"], "/run/netns/c1");
            assert_eq!(j["dns"]["nameservers"][0], "10.88.0.1");
        }
    }

    #[test]
    fn shape_of_1_0_results() {
        let j = result_to_json(&full(), Version::V1_0_0);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(j["ips"][0]["address"], "10.88.0.5/16");
        assert_eq!(j["ips"][0]["gateway"], "10.88.0.1");
        assert!(j["interfaces"][0].get("mtu").is_none());
        assert!(j["routes"][0].get("table").is_none());
    }

    #[test]
    fn shape_of_1_1_results() {
        let j = result_to_json(&full(), Version::V1_1_0);
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert_eq!(j["interfaces"][1]["socketPath"], "/run/x.sock");
        assert_eq!(j["interfaces"][1]["pciID"], "0000:00:01.0");
        assert_eq!(j["routes"][0]["advmss"], 1360);
        assert_eq!(j["routes"][0]["scope"], 0);
    }

    #[test]
    fn every_version_round_trips() {
        for v in Version::ALL {
            let j = result_to_json(&full(), v);
            let back = result_from_json(&j).unwrap();
            assert_eq!(back, as_seen_by(v), "{}", v.as_str());
            assert_eq!(result_to_json(&back, v), j, "{}", v.as_str());
        }
    }

    #[test]
    fn conversion_between_every_pair() {
        for from in Version::ALL {
            for to in Version::ALL {
                let read = result_from_json(&result_to_json(&full(), from)).unwrap();
                let converted = result_from_json(&result_to_json(&read, to)).unwrap();
                assert_eq!(
                    converted,
                    as_seen_by(from.min(to)),
                    "{} -> {}",
                    from.as_str(),
                    to.as_str()
                );
            }
        }
    }

    #[test]
    fn an_ipam_result_without_interfaces_is_read() {
        let j = json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1"}], "routes": [{"dst": "0.0.0.0/0"}]});
        let r = result_from_json(&j).unwrap();
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.routes[0].gw, None);
    }

    #[test]
    fn inconsistent_results_are_decoding_errors() {
        let wrong_family = json!({"ips": [{"version": "6", "address": "10.1.0.5/16"}]});
        assert_eq!(
            result_from_json(&wrong_family).unwrap_err().code.number(),
            6
        );
        let dangling =
            json!({"interfaces": [], "ips": [{"address": "10.1.0.5/16", "interface": 0}]});
        assert_eq!(result_from_json(&dangling).unwrap_err().code.number(), 6);
        let not_cidr = json!({"ips": [{"address": "10.1.0.5/40"}]});
        assert_eq!(result_from_json(&not_cidr).unwrap_err().code.number(), 6);
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/16"}});
        assert_eq!(result_from_json(&old).unwrap_err().code.number(), 1);
    }
}
