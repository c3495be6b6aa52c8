//! The CNI environment variables (SPEC.md section 2, "Parameters").
//!
//! Which variable each command needs:
//!
//! | command | CNI_CONTAINERID | CNI_NETNS | CNI_IFNAME | CNI_PATH |
//! |---|---|---|---|---|
//! | ADD, CHECK | required | required | required | optional* |
//! | DEL | required | optional | required | optional* |
//! | GC | — | — | — | required |
//! | STATUS, VERSION | — | — | — | optional* |
//!
//! (*) required after all when the config delegates IPAM to a plugin, which
//! is looked up in CNI_PATH; that is checked where the delegation happens.
//! A missing or malformed variable is error code 4 naming it.

use std::path::PathBuf;

use crate::error::CniError;

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// Everything the runtime passed in the environment, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Empty for GC, STATUS and VERSION.
    pub container_id: String,
    /// `None` when unset (allowed for DEL, GC, STATUS, VERSION).
    pub netns: Option<PathBuf>,
    /// Empty for GC, STATUS and VERSION.
    pub ifname: String,
    /// `CNI_ARGS`, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on ':'.
    pub path: Vec<PathBuf>,
}

/// The longest interface name Linux accepts (IFNAMSIZ − 1).
pub const MAX_IFNAME_LEN: usize = 15;

impl CniEnv {
    /// Reads the process environment.
    pub fn from_process() -> Result<CniEnv, CniError> {
        CniEnv::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (the process environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let value = |name: &str| get(name).filter(|v| !v.is_empty());
        let command_text = value("CNI_COMMAND").ok_or_else(|| {
            CniError::invalid_env(
                "required env variable CNI_COMMAND missing",
                "set CNI_COMMAND to ADD, DEL, CHECK, STATUS, GC or VERSION",
            )
        })?;
        let command = Command::parse(&command_text).ok_or_else(|| {
            CniError::invalid_env(
                format!("unknown CNI_COMMAND {command_text:?}"),
                "CNI_COMMAND must be ADD, DEL, CHECK, STATUS, GC or VERSION",
            )
        })?;

        let (needs_id, needs_netns, needs_ifname, needs_path) = match command {
            Command::Add | Command::Check => (true, true, true, false),
            Command::Del => (true, false, true, false),
            Command::Gc => (false, false, false, true),
            Command::Status | Command::Version => (false, false, false, false),
        };
        let mut missing = Vec::new();
        for (name, needed) in [
            ("CNI_CONTAINERID", needs_id),
            ("CNI_NETNS", needs_netns),
            ("CNI_IFNAME", needs_ifname),
            ("CNI_PATH", needs_path),
        ] {
            if needed && value(name).is_none() {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            return Err(CniError::invalid_env(
                format!(
                    "required env variables [{}] missing for {}",
                    missing.join(","),
                    command.as_str()
                ),
                "the runtime must set them (SPEC.md section 2)",
            ));
        }

        let container_id = if needs_id {
            value("CNI_CONTAINERID").unwrap_or_default()
        } else {
            String::new()
        };
        if needs_id {
            validate_container_id(&container_id)?;
        }
        let ifname = if needs_ifname {
            value("CNI_IFNAME").unwrap_or_default()
        } else {
            String::new()
        };
        if needs_ifname {
            validate_ifname(&ifname)?;
        }
        let args = match value("CNI_ARGS") {
            Some(text) => parse_args(&text)?,
            None => Vec::new(),
        };
        let path = value("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns: value("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
            path,
        })
    }

    /// The value of `key` in CNI_ARGS.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses CNI_ARGS: `K=V;K=V`. Empty pairs (a trailing ';') are skipped; a pair
/// without '=' or with an empty key is code 4. Values may contain '='.
pub fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for pair in text.split(';') {
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::invalid_env(
                format!("CNI_ARGS: invalid pair {pair:?}"),
                "CNI_ARGS is K=V pairs separated by ';'",
            ));
        };
        if key.is_empty() {
            return Err(CniError::invalid_env(
                format!("CNI_ARGS: empty key in pair {pair:?}"),
                "CNI_ARGS is K=V pairs separated by ';'",
            ));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// A container ID starts with an alphanumeric and goes on with alphanumerics,
/// '_', '.' or '-' (SPEC.md, "Attachment Parameters").
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(CniError::invalid_env(
            format!("invalid CNI_CONTAINERID {id:?}"),
            "it must start with a letter or digit followed by letters, digits, '_', '.' or '-'",
        ));
    }
    Ok(())
}

/// An interface name the kernel accepts: 1–15 bytes, not "." or "..", no '/',
/// ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("it contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        Some(why) => Err(CniError::invalid_env(
            format!("invalid CNI_IFNAME {name:?}"),
            format!("{why}; Linux interface names are 1-15 bytes without '/', ':' or spaces"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
    ];

    #[test]
    fn a_complete_add_environment_is_read() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "abc-1");
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/x")));
        assert_eq!(e.ifname, "eth0");
        assert_eq!(
            e.path,
            [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
        );
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(e.arg("IgnoreUnknown"), Some("1"));
    }

    #[test]
    fn each_missing_variable_is_code_4_and_named() {
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let vars: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != var).collect();
            let err = env(&vars).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment);
            assert!(err.msg.contains(var), "{var}: {}", err.msg);
        }
        let err = env(&[]).unwrap_err();
        assert!(err.msg.contains("CNI_COMMAND"));
        assert_eq!(err.code.number(), 4);
    }

    #[test]
    fn an_empty_variable_counts_as_missing() {
        let vars: Vec<_> = ADD
            .iter()
            .map(|&(k, v)| if k == "CNI_IFNAME" { (k, "") } else { (k, v) })
            .collect();
        assert!(env(&vars).unwrap_err().msg.contains("CNI_IFNAME"));
    }

    #[test]
    fn del_needs_no_netns_but_id_and_ifname() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
        let err = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")]).unwrap_err();
        assert!(err.msg.contains("CNI_IFNAME") && !err.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn gc_needs_cni_path_and_nothing_else() {
        let err = env(&[("CNI_COMMAND", "GC")]).unwrap_err();
        assert!(err.msg.contains("CNI_PATH"), "{}", err.msg);
        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")]).unwrap();
        assert_eq!(e.container_id, "");
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
    }

    #[test]
    fn unknown_command_is_code_4() {
        let err = env(&[("CNI_COMMAND", "UPDATE")]).unwrap_err();
        assert_eq!(err.code.number(), 4);
        assert!(err.msg.contains("UPDATE"));
    }

    #[test]
    fn cni_args_parsing() {
        assert_eq!(parse_args("").unwrap(), []);
        assert_eq!(
            parse_args("A=1;B=two;").unwrap(),
            [("A".into(), "1".into()), ("B".into(), "two".into())]
        );
        assert_eq!(
            parse_args("IP=10.0.0.2=x").unwrap(),
            [("IP".into(), "10.0.0.2=x".into())]
        );
        assert_eq!(parse_args("A=").unwrap(), [("A".into(), "".into())]);
        assert_eq!(parse_args("A").unwrap_err().code.number(), 4);
        assert_eq!(parse_args("=1").unwrap_err().code.number(), 4);
    }

    #[test]
    fn container_ids_and_ifnames_are_validated() {
        assert!(validate_container_id("a1_b.c-d").is_ok());
        for bad in ["", "-a", "a b", "a/b", "_x"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code.number(), 4);
        }
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("fifteen-bytes-x").is_ok());
        for bad in ["", ".", "..", "sixteen-bytes-xx", "a/b", "a:b", "a b"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code.number(), 4, "{bad}");
        }
    }
}
