//! The network configuration a runtime hands weft on stdin (SPEC.md section 1
//! and section 3, "Deriving request configuration").
//!
//! # Which fields weft accepts
//!
//! The spec lets a plugin "generate an error if called with unknown fields"
//! (section 1, "Other keys"), and reserves code 2 for "unsupported field",
//! whose message must name the key and value. weft uses that: a top-level key
//! that is neither defined by the spec, nor one of the options below, is error
//! code 2. A misspelt option (`isgateway`) would otherwise be silently ignored
//! and the container wired differently from what the admin wrote.
//!
//! Accepted at the top level:
//! - defined or reserved by the spec: `cniVersion`, `cniVersions`, `name`,
//!   `type`, `capabilities` (runtimes such as libcni leave it in), `runtimeConfig`,
//!   `prevResult`, `args`, `ipam`, `dns`, `ipMasq`, `disableCheck`, `disableGC`,
//!   `loadOnlyInlinedPlugins`, and every key starting `cni.dev/` (reserved for
//!   the protocol; `cni.dev/valid-attachments` is read for GC, others ignored);
//! - the reference `bridge` plugin's options weft implements: `bridge`,
//!   `isGateway`, `isDefaultGateway`, `forceAddress`, `mtu`, `hairpinMode`,
//!   `promiscMode`, `vlan`, `macspoofchk` (whether the backend honours each is
//!   its call: one it cannot honour is code 2 from [`crate::Backend::validate`]);
//! - weft's own: `mode` (`auto` | `standalone` | `daemon`), `stateDir`, `socket`,
//!   `subnet`, `subnet6` (the built-in IPAM's subnets; also read from `ipam`).
//!
//! Each field is checked for its type before the whole is decoded
//! ([`fields`]): a field of the wrong type (`"capabilities": 1`,
//! `"args": "x"`, `"stateDir": null`, …) is code 7 naming the field and the
//! value, and every subnet the config gives is refused (code 7) when it is a
//! default route or overlaps a loopback, multicast, link-local or
//! unspecified range ([`crate::subnet`]). JSON that does not parse at all,
//! and a `cniVersion` that is no version, are code 6.
//!
//! Ignored, as the spec allows: unknown keys inside `runtimeConfig` (capability
//! arguments are conventions; a runtime only inserts the ones a config declares)
//! and inside `args`, and unknown `CNI_ARGS` keys (the spec says they are given
//! to every plugin with no promise anyone consumes them). Keys inside a
//! delegated `ipam` section belong to that plugin.

use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::result::Dns;

mod fields;
use crate::version::Version;

/// The reference bridge plugin's default bridge name is `cni0`; weft's is `weft0`.
pub const DEFAULT_BRIDGE: &str = "weft0";

/// Keys the spec defines or reserves, at the top level of a plugin config.
const SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "args",
    "ipam",
    "dns",
    "ipMasq",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
];

/// The reference bridge plugin's options, and weft's own.
const WEFT_KEYS: &[&str] = &[
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "macspoofchk",
    "mode",
    "stateDir",
    "socket",
    "subnet",
    "subnet6",
];

/// How the plugin reaches netd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// netd's API when its socket answers, else standalone.
    #[default]
    Auto,
    /// netd's library and state directory directly; no daemon needed.
    Standalone,
    /// netd's API only; fails when the daemon does not answer.
    Daemon,
}

/// One plugin configuration as the runtime passes it, parsed and validated.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(skip)]
    pub version: Option<Version>,
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub ipam: Option<IpamConfig>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub ip_masq: bool,
    // The reference bridge plugin's options.
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<u16>,
    #[serde(default)]
    pub macspoofchk: bool,
    // weft's own.
    #[serde(default)]
    pub mode: Mode,
    /// netd's state directory in standalone mode (default /var/lib/weft).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// netd's socket (default /run/weft/netd.sock).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The built-in IPAM's IPv4 subnet (netd's default 10.66.0.0/16).
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    /// The built-in IPAM's IPv6 subnet, if any.
    #[serde(default)]
    pub subnet6: Option<IpNetwork>,
    /// GC's list of attachments still in use.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Everything else, checked by [`NetConf::parse`].
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// One attachment: a container's interface on this network.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The `ipam` section: weft's built-in IPAM when `type` is absent or "weft",
/// else the name of an IPAM plugin to exec from CNI_PATH.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct IpamConfig {
    #[serde(rename = "type", default)]
    pub plugin_type: Option<String>,
    /// The rest, for the built-in IPAM (`subnet`, `gateway`, `rangeStart`, …)
    /// or passed untouched to the delegated plugin.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

impl IpamConfig {
    /// The IPAM plugin to delegate to, or `None` for the built-in one.
    pub fn delegate(&self) -> Option<&str> {
        match self.plugin_type.as_deref() {
            None | Some("") | Some("weft") => None,
            Some(other) => Some(other),
        }
    }
}

/// Capability arguments (CONVENTIONS.md in the CNI repository).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Requested static addresses, "10.88.0.9/16" or "10.88.0.9".
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// A list of range sets, one set per address family or pool.
    #[serde(default)]
    pub ip_ranges: Vec<Vec<IpRange>>,
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default)]
    pub dns: Option<RuntimeDns>,
    /// Network name → DNS aliases of the container.
    #[serde(default)]
    pub aliases: Option<Map<String, Value>>,
    /// Other capabilities: ignored.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    pub subnet: IpNetwork,
    #[serde(default)]
    pub range_start: Option<std::net::IpAddr>,
    #[serde(default)]
    pub range_end: Option<std::net::IpAddr>,
    #[serde(default)]
    pub gateway: Option<std::net::IpAddr>,
}

/// Rates in bits per second, bursts in bits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

/// The `dns` capability (names differ from the result's `dns`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDns {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub searches: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

impl NetConf {
    /// Reads stdin: malformed JSON is code 6, an unsupported `cniVersion` code 1,
    /// an unknown field code 2, a wrong-typed field or an invalid value code 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::decoding("cannot decode network config", e.to_string()))?;
        let Value::Object(object) = &value else {
            return Err(CniError::decoding(
                "cannot decode network config",
                "expected a JSON object",
            ));
        };
        let version = match object.get("cniVersion") {
            Some(Value::String(v)) => Version::parse(v)?,
            Some(other) => {
                return Err(CniError::decoding(
                    format!("cniVersion {other} is not a string"),
                    "",
                ))
            }
            None => {
                return Err(CniError::incompatible_version(
                    "network config has no cniVersion",
                    format!("weft speaks {}", crate::version::SUPPORTED.join(", ")),
                ))
            }
        };
        for (key, value) in object {
            let known = SPEC_KEYS.contains(&key.as_str())
                || WEFT_KEYS.contains(&key.as_str())
                || key.starts_with("cni.dev/");
            if !known {
                return Err(CniError::unsupported_field(
                    key,
                    value,
                    "weft does not know this option; see docs/cni.md for the ones it takes",
                ));
            }
        }
        fields::check(object)?;
        let mut conf: NetConf = serde_json::from_value(value.clone())
            .map_err(|e| CniError::decoding("cannot decode network config", e.to_string()))?;
        conf.version = Some(version);
        conf.validate()?;
        Ok(conf)
    }

    /// The version of this request (set by [`NetConf::parse`]).
    pub fn version(&self) -> Version {
        self.version.unwrap_or(Version::NEWEST)
    }

    fn validate(&self) -> Result<(), CniError> {
        validate_network_name(&self.name)?;
        if let Some(bridge) = &self.bridge {
            if crate::env::validate_ifname(bridge).is_err() {
                return Err(CniError::invalid_config(
                    format!("invalid bridge name {bridge:?}"),
                    "a bridge name is 1-15 bytes without '/', ':' or spaces",
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(CniError::invalid_config(
                    format!("invalid mtu {mtu}"),
                    "the MTU must be between 68 and 65535",
                ));
            }
        }
        if let Some(vlan) = self.vlan {
            if vlan > 4094 {
                return Err(CniError::invalid_config(
                    format!("invalid vlan {vlan}"),
                    "a VLAN id is 0-4094",
                ));
            }
        }
        if self.hairpin_mode && self.promisc_mode {
            return Err(CniError::invalid_config(
                "hairpinMode and promiscMode cannot both be set",
                "pick one: hairpin reflects a port's own traffic, promiscuous mode floods all of it",
            ));
        }
        if let Some(ipam) = &self.ipam {
            if let Some(plugin) = ipam.delegate() {
                if plugin.contains('/') {
                    return Err(CniError::invalid_config(
                        format!("invalid ipam type {plugin:?}"),
                        "a plugin type is a file name in CNI_PATH, without '/'",
                    ));
                }
            }
        }
        if let Some(prev) = &self.prev_result {
            crate::version::result_from_json(prev).map_err(|e| e.context("prevResult"))?;
        }
        Ok(())
    }

    /// The bridge this network uses.
    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// The IPAM plugin to delegate to, if any.
    pub fn ipam_delegate(&self) -> Option<&str> {
        self.ipam.as_ref().and_then(IpamConfig::delegate)
    }

    /// Static addresses asked for: `runtimeConfig.ips`, else `args.cni.ips`
    /// (CONVENTIONS.md), else `IP=` in CNI_ARGS (comma separated).
    pub fn requested_ips(&self, cni_args_ip: Option<&str>) -> Vec<String> {
        if !self.runtime_config.ips.is_empty() {
            return self.runtime_config.ips.clone();
        }
        let from_args: Vec<String> = self
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/ips"))
            .and_then(Value::as_array)
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !from_args.is_empty() {
            return from_args;
        }
        cni_args_ip
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    }
}

/// A network name starts with an alphanumeric and goes on with alphanumerics,
/// '_', '.' or '-'; missing or otherwise is code 7.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config(
            "missing network name",
            "the runtime copies `name` from the network configuration",
        ));
    }
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(CniError::invalid_config(
            format!("invalid network name {name:?}"),
            "a network name starts with a letter or digit, then letters, digits, '_', '.' or '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
