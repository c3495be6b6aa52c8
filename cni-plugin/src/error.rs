//! The CNI error result: `{"cniVersion","code","msg","details"}` on stdout and
//! a non-zero exit (SPEC.md section 5, "Error").
//!
//! Where codes come from: the protocol's own refusals (environment, config,
//! versions) pick theirs through [`CniError`]'s constructors where they are
//! found; failures from below the protocol — the namespace check, netd's
//! library, netd's API — are a [`PluginError`], whose kinds become codes in
//! one place, [`PluginError::code`].

use std::path::PathBuf;

use plumb::netns::NetnsCheckError;
use serde::{Deserialize, Serialize};

/// The well-known error codes (0–99 are reserved by the spec; 100+ are ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's `cniVersion` is not one weft speaks.
    IncompatibleVersion,
    /// 2: a field weft knows but cannot honour; the message names key and value.
    UnsupportedField,
    /// 3: the container is unknown; the runtime need not call DEL.
    UnknownContainer,
    /// 4: a required environment variable is missing or invalid; the message names it.
    InvalidEnvironment,
    /// 5: reading stdin or writing state failed.
    Io,
    /// 6: stdin, a prevResult or a delegated plugin's output is not valid JSON of the right shape.
    Decoding,
    /// 7: the config is well-formed but invalid (bad subnet, name too long, …).
    InvalidConfig,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater,
    /// 50: STATUS: ADD cannot succeed now.
    Unavailable,
    /// 51: STATUS: ADD cannot succeed now, and existing containers may be affected.
    UnavailableAffectingContainers,
    /// 100: any other failure of the plugin itself (kernel, netd, …).
    Internal,
    /// Any other code, as relayed from a delegated plugin.
    Other(u32),
}

impl ErrorCode {
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decoding => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::Unavailable => 50,
            ErrorCode::UnavailableAffectingContainers => 51,
            ErrorCode::Internal => 100,
            ErrorCode::Other(n) => n,
        }
    }

    pub fn from_number(n: u32) -> ErrorCode {
        match n {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironment,
            5 => ErrorCode::Io,
            6 => ErrorCode::Decoding,
            7 => ErrorCode::InvalidConfig,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::Unavailable,
            51 => ErrorCode::UnavailableAffectingContainers,
            100 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }
}

/// A failed CNI operation, as the runtime will see it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: ErrorCode,
    /// Short: what failed.
    pub msg: String,
    /// Longer: why, and what to do about it.
    pub details: String,
}

/// The wire form of [`CniError`].
#[derive(Debug, Serialize, Deserialize)]
struct ErrorJson {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    cni_version: String,
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn incompatible_version(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::IncompatibleVersion, msg, details)
    }

    /// Code 2; the spec wants the key and the value in the message.
    pub fn unsupported_field(key: &str, value: &serde_json::Value, why: &str) -> CniError {
        CniError::new(
            ErrorCode::UnsupportedField,
            format!("unsupported field {key}={value}"),
            why,
        )
    }

    pub fn invalid_env(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::InvalidEnvironment, msg, details)
    }

    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::Io, msg, details)
    }

    pub fn decoding(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::Decoding, msg, details)
    }

    pub fn invalid_config(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::InvalidConfig, msg, details)
    }

    pub fn internal(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(ErrorCode::Internal, msg, details)
    }

    /// Prefixes the message with what the caller was doing.
    pub fn context(mut self, doing: &str) -> CniError {
        self.msg = format!("{doing}: {}", self.msg);
        self
    }

    /// The JSON printed on stdout. `cni_version` is the version of the request
    /// when it could be read, else weft's newest.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::to_string(&ErrorJson {
            cni_version: cni_version.to_string(),
            code: self.code.number(),
            msg: self.msg.clone(),
            details: self.details.clone(),
        })
        .expect("an error result always serialises")
    }

    /// Reads an error result printed by another plugin (a delegated IPAM plugin).
    pub fn from_json(text: &str) -> Option<CniError> {
        let json: ErrorJson = serde_json::from_str(text.trim()).ok()?;
        Some(CniError::new(
            ErrorCode::from_number(json.code),
            json.msg,
            json.details,
        ))
    }
}

/// The plugin's failures from below the protocol, by kind.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// CNI_NETNS is the host's own namespace: the plugin's or PID 1's.
    #[error("CNI_NETNS {} is {whose}", path.display())]
    HostNetns { path: PathBuf, whose: &'static str },
    /// CNI_NETNS does not exist.
    #[error("CNI_NETNS {} does not exist", path.display())]
    MissingNetns { path: PathBuf },
    /// CNI_NETNS is no network namespace (a file, a mount namespace, …).
    #[error("CNI_NETNS {} is not a usable network namespace", path.display())]
    NotNetns {
        path: PathBuf,
        #[source]
        source: NetnsCheckError,
    },
    /// netd's library refused or failed.
    #[error("{0}")]
    Netd(netd::Error),
    /// netd's API does not answer on its socket.
    #[error("{message}")]
    NetdUnreachable { message: String, socket: PathBuf },
    /// netd's API answered with an error.
    #[error("netd: {0}")]
    NetdApi(String),
}

impl PluginError {
    /// The one place these kinds become CNI codes: a bad CNI_NETNS is 4 (an
    /// invalid environment variable, named); netd refusing the config is 7,
    /// its state I/O 5, an unreachable daemon 11 (try again later); the
    /// rest — a clash with what is there, the kernel — 100.
    pub fn code(&self) -> ErrorCode {
        use netd::ErrorKind;
        match self {
            PluginError::HostNetns { .. }
            | PluginError::MissingNetns { .. }
            | PluginError::NotNetns { .. } => ErrorCode::InvalidEnvironment,
            // The kind netd gave, whether its library or its daemon answered.
            PluginError::Netd(e) => match e.kind() {
                ErrorKind::InvalidInput | ErrorKind::NotFound => ErrorCode::InvalidConfig,
                ErrorKind::Storage => ErrorCode::Io,
                ErrorKind::Unreachable | ErrorKind::Busy => ErrorCode::TryAgainLater,
                ErrorKind::Conflict | ErrorKind::Kernel | ErrorKind::Internal => {
                    ErrorCode::Internal
                }
            },
            PluginError::NetdUnreachable { .. } => ErrorCode::TryAgainLater,
            PluginError::NetdApi(_) => ErrorCode::Internal,
        }
    }

    /// What to do about it, for the error result's `details`.
    fn advice(&self) -> String {
        match self {
            PluginError::HostNetns { .. } => "weft wires containers, never the host itself; pass the container's namespace, e.g. /run/netns/NAME or /proc/PID/ns/net of the container".into(),
            PluginError::MissingNetns { .. } => "is the container still running? the runtime must create its namespace before ADD".into(),
            PluginError::NotNetns { source, .. } => source.to_string(),
            PluginError::NetdUnreachable { socket, .. } => {
                format!("mode daemon needs netd listening on {}", socket.display())
            }
            PluginError::Netd(_) | PluginError::NetdApi(_) => String::new(),
        }
    }
}

impl From<PluginError> for CniError {
    fn from(e: PluginError) -> CniError {
        CniError::new(e.code(), e.to_string(), e.advice())
    }
}

/// netd's library error as a CNI error ([`PluginError::code`]).
pub fn netd_error(e: netd::Error) -> CniError {
    PluginError::Netd(e).into()
}

/// netd's API error as a CNI error; `socket` is where the daemon was asked.
pub fn api_error(socket: &std::path::Path, e: netd::Error) -> CniError {
    match e {
        netd::Error::Unreachable { .. } => PluginError::NetdUnreachable {
            message: e.to_string(),
            socket: socket.to_path_buf(),
        },
        // A conversation that broke off: nothing says what was done.
        netd::Error::Protocol(message) => PluginError::NetdApi(message),
        other => PluginError::Netd(other),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_four_keys() {
        let e = CniError::invalid_env("required env variable CNI_IFNAME missing", "set it");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.1.0",
                "code": 4,
                "msg": "required env variable CNI_IFNAME missing",
                "details": "set it"
            })
        );
    }

    #[test]
    fn empty_details_are_left_out() {
        let e = CniError::decoding("bad json", "");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        assert!(v.get("details").is_none());
        assert_eq!(v["code"], 6);
    }

    #[test]
    fn every_reserved_code_has_its_number() {
        let codes = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironment, 4),
            (ErrorCode::Io, 5),
            (ErrorCode::Decoding, 6),
            (ErrorCode::InvalidConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::Unavailable, 50),
            (ErrorCode::UnavailableAffectingContainers, 51),
            (ErrorCode::Internal, 100),
            (ErrorCode::Other(999), 999),
        ];
        for (code, n) in codes {
            assert_eq!(code.number(), n);
            assert_eq!(ErrorCode::from_number(n), code);
        }
    }

    #[test]
    fn a_delegated_plugins_error_is_read_back() {
        let text = r#"{"code": 7, "msg": "invalid range", "details": "10.0.0.0/33"}"#;
        let e = CniError::from_json(text).unwrap();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert_eq!(e.to_string(), "invalid range: 10.0.0.0/33");
        assert!(CniError::from_json("not json").is_none());
    }

    #[test]
    fn unsupported_field_names_key_and_value() {
        let e = CniError::unsupported_field("vlan", &serde_json::json!(100), "no 8021q");
        assert_eq!(e.code.number(), 2);
        assert!(e.msg.contains("vlan=100"), "{}", e.msg);
    }
    #[test]
    fn ipam_errors_get_cni_codes() {
        let e = netd_error(netd::Error::Ipam(netd::ipam::IpamError::Full {
            subnet: "10.0.0.0/30".parse().unwrap(),
            in_use: 2,
        }));
        assert_eq!(e.code.number(), 100);
        assert_eq!(
            netd_error(netd::Error::InvalidInput("x".into()))
                .code
                .number(),
            7
        );
    }

    #[test]
    fn every_plugin_error_kind_has_its_code() {
        let path = PathBuf::from("/proc/self/ns/net");
        let cases = [
            (
                PluginError::HostNetns {
                    path: path.clone(),
                    whose: "the host's",
                },
                4,
            ),
            (PluginError::MissingNetns { path: path.clone() }, 4),
            (
                PluginError::NotNetns {
                    path: path.clone(),
                    source: NetnsCheckError::NotFound { handle: "x".into() },
                },
                4,
            ),
            (PluginError::Netd(netd::Error::InvalidInput("x".into())), 7),
            (PluginError::Netd(netd::Error::Busy("x".into())), 11),
            (
                PluginError::NetdUnreachable {
                    message: "cannot reach netd".into(),
                    socket: "/s".into(),
                },
                11,
            ),
            (PluginError::NetdApi("bad request".into()), 100),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let cni = CniError::from(e);
            assert_eq!((cni.code.number(), cni.msg.as_str()), (code, text.as_str()));
        }
        let e = api_error(
            std::path::Path::new("/run/weft/netd.sock"),
            netd::Error::Unreachable {
                socket: "/run/weft/netd.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        );
        assert_eq!(e.code.number(), 11);
        assert!(e.details.contains("/run/weft/netd.sock"), "{e}");
    }
}
