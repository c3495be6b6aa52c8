//! One file per CNI command; [`run`] reads the environment and stdin, picks
//! the command, and turns its outcome into stdout and an exit code.

mod add;
mod check;
mod del;
mod gc;
mod status;
mod version;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::Backend;
use crate::env::{CniEnv, Command};
use crate::error::CniError;
use crate::ipam_delegate::IpamDelegate;
use crate::types::NetConf;
use crate::version::Version;

/// What the process prints on stdout and exits with. Non-empty output ends
/// with a newline, as the reference plugins' does.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Builds the backend a config asks for (its `mode`), or says why it cannot.
pub type BackendFor<'a> = dyn Fn(&NetConf) -> Result<Box<dyn Backend>, CniError> + 'a;

/// Checks CNI_NETNS for ADD and CHECK ([`crate::netns::container_netns`]).
pub type NetnsCheck<'a> = dyn Fn(&Path) -> Result<PathBuf, CniError> + 'a;

/// One call of the plugin: environment, raw config and parsed config.
pub struct Invocation<'a> {
    pub env: CniEnv,
    /// The container's namespace: checked for ADD and CHECK (never the
    /// host's), for DEL only when it is a container's, else `None`.
    pub netns: Option<PathBuf>,
    /// The whole environment, handed on to a delegated IPAM plugin.
    pub vars: Vec<(String, String)>,
    pub stdin: &'a [u8],
    pub conf: NetConf,
}

impl Invocation<'_> {
    /// The delegated IPAM plugin, when the config names one.
    pub fn ipam_delegate(&self) -> Result<Option<IpamDelegate>, CniError> {
        self.conf
            .ipam_delegate()
            .map(|plugin| IpamDelegate::find(plugin, &self.env, self.vars.clone(), self.stdin))
            .transpose()
    }
}

/// Runs one CNI invocation. `vars` is the process environment.
pub fn run(vars: Vec<(String, String)>, stdin: &[u8], backend_for: &BackendFor) -> Outcome {
    run_with(vars, stdin, backend_for, &crate::netns::container_netns)
}

/// [`run`] with the CNI_NETNS check given (tests stand a path in for a
/// container's namespace; everything else goes through the real check).
pub fn run_with(
    vars: Vec<(String, String)>,
    stdin: &[u8],
    backend_for: &BackendFor,
    netns_check: &NetnsCheck,
) -> Outcome {
    let asked_version = asked_version(stdin);
    match dispatch(vars, stdin, backend_for, netns_check) {
        Ok(Some(value)) => Outcome {
            stdout: serde_json::to_string(&value).expect("results serialise") + "\n",
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(asked_version.as_deref().unwrap_or(Version::NEWEST.as_str())) + "\n",
            exit_code: 1,
        },
    }
}

fn dispatch(
    vars: Vec<(String, String)>,
    stdin: &[u8],
    backend_for: &BackendFor,
    netns_check: &NetnsCheck,
) -> Result<Option<Value>, CniError> {
    let env =
        CniEnv::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))?;
    if env.command == Command::Version {
        return version::run(stdin).map(Some);
    }
    let conf = NetConf::parse(stdin)?;
    let v = conf.version();
    let allowed = match env.command {
        Command::Check => v.has_check(),
        Command::Gc | Command::Status => v.has_gc_and_status(),
        _ => true,
    };
    if !allowed {
        return Err(CniError::incompatible_version(
            format!(
                "config version {} does not allow {}",
                v.as_str(),
                env.command.as_str()
            ),
            "CHECK needs cniVersion 0.4.0 or later; GC and STATUS need 1.1.0",
        ));
    }
    // Before the backend exists: nothing is touched for a bad namespace.
    let netns = match env.command {
        Command::Add | Command::Check => {
            let path = env
                .netns
                .as_deref()
                .expect("ADD and CHECK require CNI_NETNS");
            Some(netns_check(path)?)
        }
        Command::Del => env.netns.as_deref().and_then(|p| netns_check(p).ok()),
        _ => None,
    };
    let backend = backend_for(&conf)?;
    let inv = Invocation {
        env,
        netns,
        vars,
        stdin,
        conf,
    };
    match inv.env.command {
        Command::Add => add::run(&inv, backend.as_ref()).map(Some),
        Command::Del => del::run(&inv, backend.as_ref()).map(|()| None),
        Command::Check => check::run(&inv, backend.as_ref()).map(|()| None),
        Command::Gc => gc::run(&inv, backend.as_ref()).map(|()| None),
        Command::Status => status::run(&inv, backend.as_ref()).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The `cniVersion` of stdin, if it has one: errors are written in it.
fn asked_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    let text = value.get("cniVersion")?.as_str()?;
    Version::parse(text).ok().map(|v| v.as_str().to_string())
}

/// Carries on past errors, then reports all of them under the first one's code.
fn combine(errors: Vec<CniError>) -> Result<(), CniError> {
    let mut errors = errors.into_iter();
    let Some(first) = errors.next() else {
        return Ok(());
    };
    Err(errors.fold(first, |mut acc, e| {
        acc.msg = format!("{}; {}", acc.msg, e.msg);
        if !e.details.is_empty() {
            acc.details = if acc.details.is_empty() {
                e.details
            } else {
                format!("{}; {}", acc.details, e.details)
            };
        }
        acc
    }))
}
