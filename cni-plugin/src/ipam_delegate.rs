//! IPAM delegation (SPEC.md section 4): exec the plugin named by `ipam.type`
//! from CNI_PATH with the same environment and the same config weft received,
//! its stderr going to ours.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::env::{self, CniEnv};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::result_from_json;

/// A delegated IPAM plugin, ready to be called.
#[derive(Clone, Debug)]
pub struct IpamDelegate {
    plugin: String,
    binary: PathBuf,
    /// The environment weft was called with (CNI_COMMAND is set per call).
    vars: Vec<(String, String)>,
    /// The config exactly as weft received it on stdin.
    config: Vec<u8>,
}

impl IpamDelegate {
    /// Finds `plugin` in CNI_PATH: code 4 when CNI_PATH is unset (it is then
    /// required after all), code 7 when no directory holds the plugin.
    pub fn find(
        plugin: &str,
        env: &CniEnv,
        vars: Vec<(String, String)>,
        config: &[u8],
    ) -> Result<IpamDelegate, CniError> {
        if env.path.is_empty() {
            return Err(CniError::invalid_env(
                "required env variable CNI_PATH missing",
                format!("the config delegates IPAM to {plugin:?}, which is looked up in CNI_PATH"),
            ));
        }
        let binary = find_in(plugin, &env.path).ok_or_else(|| {
            let dirs: Vec<String> = env.path.iter().map(|p| p.display().to_string()).collect();
            CniError::invalid_config(
                format!("IPAM plugin {plugin:?} not found"),
                format!("looked in CNI_PATH {}", dirs.join(":")),
            )
        })?;
        Ok(IpamDelegate {
            plugin: plugin.to_string(),
            binary,
            vars,
            config: config.to_vec(),
        })
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// ADD: the addresses, gateway, routes and DNS the plugin allocated.
    pub fn add(&self) -> Result<CniResult, CniError> {
        let out = self.exec(env::Command::Add)?;
        let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::decoding(
                format!("IPAM plugin {} printed no result", self.plugin),
                e.to_string(),
            )
        })?;
        result_from_json(&value).map_err(|e| e.context(&format!("IPAM plugin {}", self.plugin)))
    }

    pub fn del(&self) -> Result<(), CniError> {
        self.exec(env::Command::Del).map(drop)
    }

    /// DEL for another attachment than this call's (GC of a removed one).
    pub fn del_attachment(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let mut other = self.clone();
        other.vars.retain(|(k, _)| k != "CNI_NETNS");
        other.set_var("CNI_CONTAINERID", container_id);
        other.set_var("CNI_IFNAME", ifname);
        other.exec(env::Command::Del).map(drop)
    }

    pub fn check(&self) -> Result<(), CniError> {
        self.exec(env::Command::Check).map(drop)
    }

    /// GC, when the plugin speaks spec 1.1.0; one that predates GC is left
    /// alone (weft's GC then releases each removed attachment by DEL).
    pub fn gc(&self) -> Result<(), CniError> {
        if !self.speaks_1_1()? {
            return Ok(());
        }
        self.exec(env::Command::Gc).map(drop)
    }

    /// STATUS, when the plugin speaks spec 1.1.0; one that predates STATUS
    /// has no way to say it is not ready, so it counts as ready.
    pub fn status(&self) -> Result<(), CniError> {
        if !self.speaks_1_1()? {
            return Ok(());
        }
        self.exec(env::Command::Status).map(drop)
    }

    fn set_var(&mut self, key: &str, value: &str) {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_string(), value.to_string()));
    }

    /// The versions the plugin answers VERSION with.
    pub fn supported_versions(&self) -> Result<Vec<String>, CniError> {
        let mut probe = self.clone();
        probe.config = br#"{"cniVersion":"1.0.0"}"#.to_vec();
        let out = probe.exec_once(env::Command::Version)?;
        let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::decoding(
                format!("IPAM plugin {} VERSION", self.plugin),
                e.to_string(),
            )
        })?;
        Ok(value["supportedVersions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn speaks_1_1(&self) -> Result<bool, CniError> {
        Ok(self.supported_versions()?.iter().any(|v| v == "1.1.0"))
    }

    /// Runs the plugin. When it refuses the config's cniVersion (code 1), asks
    /// it which versions it speaks and calls it again with the newest of them
    /// that is not newer than the config's: the reference plugins of Debian 12
    /// stop at 1.0.0, and their IPAM results read back in any version.
    fn exec(&self, command: env::Command) -> Result<Vec<u8>, CniError> {
        match self.exec_once(command) {
            Err(e) if e.code == ErrorCode::IncompatibleVersion => {
                let Some(older) = self.older_version()? else {
                    return Err(e);
                };
                let mut again = self.clone();
                again.config = older;
                again.exec_once(command)
            }
            other => other,
        }
    }

    /// The config rewritten to the newest version the plugin speaks below the config's.
    fn older_version(&self) -> Result<Option<Vec<u8>>, CniError> {
        let Ok(mut config) = serde_json::from_slice::<serde_json::Value>(&self.config) else {
            return Ok(None);
        };
        let asked = config["cniVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let theirs = self.supported_versions()?;
        let order = |v: &str| crate::version::SUPPORTED.iter().position(|s| *s == v);
        let Some(limit) = order(&asked) else {
            return Ok(None);
        };
        let best = theirs
            .iter()
            .filter_map(|v| order(v).filter(|i| *i < limit))
            .max();
        Ok(best.map(|i| {
            config["cniVersion"] = serde_json::json!(crate::version::SUPPORTED[i]);
            serde_json::to_vec(&config).expect("a JSON value serialises")
        }))
    }

    /// Runs the plugin once; a failure keeps the plugin's own code and message,
    /// prefixed with the plugin's name.
    fn exec_once(&self, command: env::Command) -> Result<Vec<u8>, CniError> {
        let doing = format!("IPAM plugin {} {}", self.plugin, command.as_str());
        let spawn = || {
            Command::new(&self.binary)
                .env_clear()
                .envs(self.vars.iter().map(|(k, v)| (k, v)))
                .env("CNI_COMMAND", command.as_str())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        };
        // ETXTBSY: the binary is still open for writing somewhere (being
        // installed or upgraded, or held by a process forked meanwhile);
        // that passes within moments, so try a few times before failing.
        let mut attempt = 0;
        let mut child = loop {
            match spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
                }
                other => {
                    break other.map_err(|e| {
                        CniError::io(format!("{doing}: cannot start it"), e.to_string())
                    })?
                }
            }
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A plugin that exits without reading stdin closes the pipe: not our error.
        let _ = stdin.write_all(&self.config);
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::io(format!("{doing}: cannot wait for it"), e.to_string()))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Err(match CniError::from_json(&text) {
            Some(e) => e.context(&doing),
            None => CniError::new(
                ErrorCode::Internal,
                format!("{doing} failed ({})", out.status),
                text.trim().to_string(),
            ),
        })
    }
}

/// The first executable file named `plugin` in `dirs`.
pub fn find_in(plugin: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return None;
    }
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The CNI_* and other variables of this process, to hand to a delegate.
pub fn process_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("weft-cni-test-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// A shell-script plugin: records its CNI_COMMAND and stdin, then runs `body`.
        fn plugin(&self, name: &str, body: &str) {
            let path = self.0.join(name);
            let log = self.0.join("calls");
            let script = format!(
                "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\" >> {log}\ncat > {stdin}\n{body}\n",
                log = log.display(),
                stdin = self.0.join("stdin").display(),
            );
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn calls(&self) -> String {
            std::fs::read_to_string(self.0.join("calls")).unwrap_or_default()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env_for(dir: &Path) -> (CniEnv, Vec<(String, String)>) {
        let vars: Vec<(String, String)> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &format!("/nonexistent:{}", dir.display())),
            ("PATH", "/usr/bin:/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let map: std::collections::HashMap<_, _> = vars.iter().cloned().collect();
        (CniEnv::from_lookup(|k| map.get(k).cloned()).unwrap(), vars)
    }

    #[test]
    fn add_passes_env_and_config_and_reads_the_result() {
        let s = Scratch::new("add");
        s.plugin(
            "ipam1",
            r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.5.0.2/24","gateway":"10.5.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}'"#,
        );
        let (env, vars) = env_for(&s.0);
        let config = br#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"ipam1"}}"#;
        let d = IpamDelegate::find("ipam1", &env, vars, config).unwrap();
        let r = d.add().unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.5.0.2/24");
        assert_eq!(r.routes.len(), 1);
        assert_eq!(s.calls(), "ADD c1 eth0\n");
        assert_eq!(std::fs::read(s.0.join("stdin")).unwrap(), config);
        d.del().unwrap();
        d.check().unwrap();
        assert_eq!(s.calls(), "ADD c1 eth0\nDEL c1 eth0\nCHECK c1 eth0\n");
    }

    #[test]
    fn a_failing_plugin_keeps_its_code() {
        let s = Scratch::new("fail");
        s.plugin(
            "ipam2",
            r#"echo '{"code": 11, "msg": "range busy"}'; exit 1"#,
        );
        let (env, vars) = env_for(&s.0);
        let d = IpamDelegate::find("ipam2", &env, vars, b"{}").unwrap();
        let e = d.add().unwrap_err();
        assert_eq!(e.code, ErrorCode::TryAgainLater);
        assert!(
            e.msg.contains("ipam2") && e.msg.contains("range busy"),
            "{e}"
        );
        s.plugin("ipam3", "echo oops; exit 3");
        let d = IpamDelegate::find("ipam3", &env, env_for(&s.0).1, b"{}").unwrap();
        let e = d.del().unwrap_err();
        assert_eq!(e.code.number(), 100);
        assert_eq!(e.details, "oops");
    }

    #[test]
    fn garbage_output_is_a_decoding_error() {
        let s = Scratch::new("garbage");
        s.plugin("ipam4", "echo not-json");
        let (env, vars) = env_for(&s.0);
        let d = IpamDelegate::find("ipam4", &env, vars, b"{}").unwrap();
        assert_eq!(d.add().unwrap_err().code.number(), 6);
    }

    #[test]
    fn lookup_errors() {
        let s = Scratch::new("lookup");
        let (env, vars) = env_for(&s.0);
        let e = IpamDelegate::find("absent", &env, vars.clone(), b"{}").unwrap_err();
        assert_eq!(e.code.number(), 7);
        assert!(e.details.contains(&s.0.display().to_string()));
        std::fs::write(s.0.join("notexec"), "#!/bin/sh\n").unwrap();
        assert!(IpamDelegate::find("notexec", &env, vars.clone(), b"{}").is_err());
        let mut no_path = env.clone();
        no_path.path.clear();
        let e = IpamDelegate::find("absent", &no_path, vars, b"{}").unwrap_err();
        assert_eq!(e.code.number(), 4);
        assert!(e.msg.contains("CNI_PATH"));
    }
}
