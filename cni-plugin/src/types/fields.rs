//! The config's fields checked one by one before the whole is decoded, so
//! that a field of the wrong type is code 7 naming the field and its value
//! (serde's own message names neither), and so that every subnet the config
//! gives, wherever it gives it, passes [`crate::subnet::refuse_special`].
//!
//! `null` counts as absent for the fields the spec and the reference bridge
//! plugin define (Go decodes it so), but not for weft's own `mode`,
//! `stateDir`, `socket`, `subnet` and `subnet6`: `"stateDir": null` would
//! silently fall back to the default directory.

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{Attachment, IpamConfig, Mode, RuntimeConfig};
use crate::error::CniError;
use crate::result::Dns;
use crate::subnet::refuse_special;

/// How much of a value an error message quotes.
const SHOWN: usize = 80;

/// `value` as JSON, cut to a length a message can carry.
pub fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= SHOWN {
        return text;
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn wrong_type(field: &str, value: &Value, expected: &str) -> CniError {
    CniError::invalid_config(
        format!(
            "invalid network config: {field}={} has the wrong type",
            shown(value)
        ),
        format!("{field} must be {expected}"),
    )
}

/// Decodes `value` as `T`; code 7 naming the field when it does not fit.
fn typed<T: DeserializeOwned>(field: &str, value: &Value, expected: &str) -> Result<T, CniError> {
    T::deserialize(value).map_err(|e| {
        let mut err = wrong_type(field, value, expected);
        err.details = format!("{} ({e})", err.details);
        err
    })
}

fn subnet(field: &str, value: &Value) -> Result<(), CniError> {
    let net: IpNetwork = typed(field, value, "a subnet in CIDR form, e.g. \"10.66.0.0/16\"")?;
    refuse_special(field, net)
}

/// Checks every field weft reads at the top level of `object`.
pub fn check(object: &Map<String, Value>) -> Result<(), CniError> {
    for (key, value) in object {
        let nullable = !matches!(
            key.as_str(),
            "mode" | "stateDir" | "socket" | "subnet" | "subnet6"
        );
        if value.is_null() && nullable {
            continue;
        }
        let field = key.as_str();
        match field {
            "name" | "type" | "bridge" => {
                typed::<String>(field, value, "a string")?;
            }
            "stateDir" | "socket" => {
                let path: String = typed(field, value, "a path string")?;
                if !path.starts_with('/') || path.contains('\0') {
                    return Err(CniError::invalid_config(
                        format!("invalid {field} {}", shown(value)),
                        format!("{field} must be an absolute path (without NUL); the runtime's working directory is no place for it"),
                    ));
                }
            }
            "mode" => {
                typed::<Mode>(field, value, "\"auto\", \"standalone\" or \"daemon\"")?;
            }
            "subnet" | "subnet6" => subnet(field, value)?,
            "isGateway"
            | "isDefaultGateway"
            | "forceAddress"
            | "hairpinMode"
            | "promiscMode"
            | "macspoofchk"
            | "ipMasq"
            | "disableCheck"
            | "disableGC"
            | "loadOnlyInlinedPlugins" => {
                typed::<bool>(field, value, "true or false")?;
            }
            "mtu" => {
                typed::<u32>(field, value, "a number (68-65535)")?;
            }
            "vlan" => {
                typed::<u16>(field, value, "a number (0-4094)")?;
            }
            "cniVersions" => {
                typed::<Vec<String>>(field, value, "a list of version strings")?;
            }
            "capabilities" => {
                typed::<Map<String, Value>>(field, value, "an object of capability names")?
                    .iter()
                    .try_for_each(|(name, on)| {
                        typed::<bool>(&format!("capabilities.{name}"), on, "true or false")
                            .map(drop)
                    })?;
            }
            "prevResult" => {
                typed::<Map<String, Value>>(field, value, "an object (a CNI result)")?;
            }
            "dns" => {
                typed::<Dns>(
                    field,
                    value,
                    "an object of nameservers, domain, search, options",
                )?;
            }
            "args" => args(value)?,
            "runtimeConfig" => runtime_config(value)?,
            "ipam" => ipam(value)?,
            "cni.dev/valid-attachments" => {
                typed::<Vec<Attachment>>(
                    field,
                    value,
                    "a list of {\"containerID\": …, \"ifname\": …} objects",
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `args`: an object; `args.cni.ips` (CONVENTIONS.md) a list of address strings.
fn args(value: &Value) -> Result<(), CniError> {
    let args: Map<String, Value> = typed("args", value, "an object")?;
    let Some(cni) = args.get("cni").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let cni: Map<String, Value> = typed("args.cni", cni, "an object")?;
    if let Some(ips) = cni.get("ips").filter(|v| !v.is_null()) {
        typed::<Vec<String>>("args.cni.ips", ips, "a list of address strings")?;
    }
    Ok(())
}

fn runtime_config(value: &Value) -> Result<(), CniError> {
    let rc: Map<String, Value> = typed("runtimeConfig", value, "an object")?;
    for (key, value) in &rc {
        let field = format!("runtimeConfig.{key}");
        if value.is_null() {
            continue;
        }
        if key == "ipRanges" {
            let sets: Vec<Vec<Map<String, Value>>> =
                typed(&field, value, "a list of lists of ranges")?;
            for (i, set) in sets.iter().enumerate() {
                for (j, range) in set.iter().enumerate() {
                    let subnet_field = format!("{field}[{i}][{j}].subnet");
                    match range.get("subnet") {
                        Some(s) => subnet(&subnet_field, s)?,
                        None => {
                            return Err(wrong_type(&subnet_field, &Value::Null, "a subnet"));
                        }
                    }
                }
            }
        }
    }
    // The rest of the shape (ports, ips, mac, bandwidth, …) as a whole.
    typed::<RuntimeConfig>("runtimeConfig", value, "an object of capability arguments")?;
    Ok(())
}

/// `ipam`: an object with a string `type`; a `subnet` and `ranges[][].subnet`
/// (weft's built-in IPAM and host-local both read them) are subnets.
fn ipam(value: &Value) -> Result<(), CniError> {
    let settings: Map<String, Value> = typed("ipam", value, "an object")?;
    if let Some(t) = settings.get("type").filter(|v| !v.is_null()) {
        typed::<String>("ipam.type", t, "the name of an IPAM plugin")?;
    }
    for key in ["rangeStart", "rangeEnd", "gateway"] {
        if let Some(v) = settings.get(key).filter(|v| !v.is_null()) {
            typed::<std::net::IpAddr>(&format!("ipam.{key}"), v, "an IP address")?;
        }
    }
    if let Some(s) = settings.get("subnet") {
        subnet("ipam.subnet", s)?;
    }
    if let Some(ranges) = settings.get("ranges") {
        let sets: Vec<Vec<Map<String, Value>>> =
            typed("ipam.ranges", ranges, "a list of lists of ranges")?;
        for (i, set) in sets.iter().enumerate() {
            for (j, range) in set.iter().enumerate() {
                if let Some(s) = range.get("subnet") {
                    subnet(&format!("ipam.ranges[{i}][{j}].subnet"), s)?;
                }
            }
        }
    }
    typed::<IpamConfig>("ipam", value, "an object")?;
    Ok(())
}
