//! A language-independent CNI conformance runner: it execs any CNI plugin
//! binary through the named checks in [`checks`], the way youki's contest
//! drives any OCI runtime. Each check gets its own world (a fabric, a host
//! namespace `h`, containers on it) and runs the plugin *inside* the host
//! namespace, so bridges and firewall rules land there, never in the root
//! namespace.

pub mod checks;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use world::{Container, Host, World};

/// The spec versions the suite exercises, oldest first.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The test network: 10.77.0.0/24, gateway .1.
pub const SUBNET: &str = "10.77.0.0/24";

/// How long one plugin call may take before it counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The part of a network config a subject controls; the suite picks the rest.
#[derive(Clone, Debug)]
pub struct NetSpec {
    pub version: String,
    pub name: String,
    pub subnet: String,
    /// First and last address to hand out; `None` for the whole subnet.
    pub range: Option<(String, String)>,
    /// A directory for the plugin's (and its IPAM's) state, private to the check.
    pub state_dir: PathBuf,
}

/// A plugin under test.
pub struct Subject {
    pub name: &'static str,
    pub plugin: PathBuf,
    /// CNI_PATH for the plugin (where its IPAM plugin lives).
    pub cni_path: String,
    /// The plugin config for a test network.
    pub config: fn(&NetSpec) -> Value,
}

/// What a check needs from the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Only the protocol: environment, config and version handling.
    Protocol,
    /// A working ADD: interfaces, addresses, reservations.
    Network,
}

/// The body of a check: Ok when the plugin behaves as the spec says.
pub type CheckFn = dyn Fn(&Ctx) -> Result<()> + Send + Sync;

/// A named check.
pub struct Check {
    pub name: String,
    pub needs: Needs,
    pub run: Box<CheckFn>,
}

impl Check {
    pub fn new(
        name: impl Into<String>,
        needs: Needs,
        run: impl Fn(&Ctx) -> Result<()> + Send + Sync + 'static,
    ) -> Check {
        Check {
            name: name.into(),
            needs,
            run: Box::new(run),
        }
    }
}

/// The `CNI_CHECK` filter: a part of a check's name, or `protocol` /
/// `network` for the checks that need only the protocol or a working ADD.
pub fn selected(check: &Check, filter: &str) -> bool {
    match filter {
        "protocol" => check.needs == Needs::Protocol,
        "network" => check.needs == Needs::Network,
        _ => check.name.contains(filter),
    }
}

/// netd's state in `dir` (what weft's standalone mode keeps), read through
/// netd's library: the endpoint ids and the reservation owners. Empty when
/// nothing was ever written there.
#[allow(dead_code)] // the runtime tests use it, the conformance runner does not
pub fn netd_state(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    if !dir.exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let state = netd::Store::open(dir)?.read()?;
    Ok((
        state.endpoints.keys().cloned().collect(),
        state.ipam.owners().into_iter().collect(),
    ))
}

/// One plugin invocation.
#[derive(Clone, Debug)]
pub struct Call {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub cni_args: Option<String>,
    pub cni_path: Option<String>,
    pub stdin: Vec<u8>,
}

/// What the plugin printed and how it exited.
#[derive(Clone, Debug)]
pub struct Reply {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    /// stdout on one line (plugins pretty-print their errors).
    pub fn compact(&self) -> String {
        match self.json() {
            Some(json) => json.to_string(),
            None => self.stdout.trim().to_string(),
        }
    }

    /// stdout as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The result of a successful call.
    pub fn result(&self) -> Result<Value> {
        if !self.success {
            bail!("plugin failed: {} {}", self.compact(), self.stderr.trim());
        }
        self.json()
            .ok_or_else(|| anyhow!("success without a JSON result: {:?}", self.stdout))
    }

    /// Success with nothing on stdout (DEL, CHECK, GC, STATUS).
    pub fn ok(&self) -> Result<()> {
        if !self.success {
            bail!("plugin failed: {} {}", self.compact(), self.stderr.trim());
        }
        Ok(())
    }

    /// A failure with a well-formed error result: its JSON.
    pub fn error(&self) -> Result<Value> {
        if self.success {
            bail!(
                "expected an error, the plugin succeeded: {}",
                self.stdout.trim()
            );
        }
        let json = self.json().ok_or_else(|| {
            anyhow!(
                "failed without an error result on stdout: stdout {:?}, stderr {:?}",
                self.stdout,
                self.stderr
            )
        })?;
        if !json["code"].is_u64() || !json["msg"].is_string() {
            bail!("error result lacks a numeric code or a msg: {json}");
        }
        Ok(json)
    }

    /// A failure with error code `code`; returns the message.
    pub fn error_code(&self, code: u64) -> Result<String> {
        let json = self.error()?;
        if json["code"].as_u64() != Some(code) {
            bail!("expected error code {code}, got {json}");
        }
        Ok(format!(
            "{} {}",
            json["msg"].as_str().unwrap_or(""),
            json["details"].as_str().unwrap_or("")
        ))
    }
}

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("weft-cni-conformance-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a check works with.
pub struct Ctx<'a> {
    pub subject: &'a Subject,
    pub world: World,
    pub host: Host,
    pub scratch: Scratch,
}

impl Ctx<'_> {
    /// A container namespace on the host.
    pub fn container(&self, name: &str) -> Result<Container> {
        self.host.container(name)
    }

    /// The subject's config for the test network in `version`, whole subnet.
    pub fn config(&self, version: &str) -> Value {
        self.config_with(version, None)
    }

    /// The same, handing out only `first..=last` (host numbers in 10.77.0.0/24).
    pub fn config_with(&self, version: &str, range: Option<(u8, u8)>) -> Value {
        (self.subject.config)(&NetSpec {
            version: version.into(),
            name: "conformance".into(),
            subnet: SUBNET.into(),
            range: range.map(|(a, b)| (format!("10.77.0.{a}"), format!("10.77.0.{b}"))),
            state_dir: self.scratch.0.clone(),
        })
    }

    /// The ordinary call: all variables set for `container` and `ifname`.
    pub fn call(&self, command: &str, container: &Container, ifname: &str, config: &Value) -> Call {
        Call {
            command: command.into(),
            container_id: Some(container_id(container)),
            netns: Some(netns_path(container)),
            ifname: Some(ifname.into()),
            cni_args: None,
            cni_path: Some(self.subject.cni_path.clone()),
            stdin: config.to_string().into_bytes(),
        }
    }

    /// A call with no attachment parameters (VERSION, GC, STATUS).
    pub fn bare_call(&self, command: &str, config: &Value) -> Call {
        Call {
            command: command.into(),
            container_id: None,
            netns: None,
            ifname: None,
            cni_args: None,
            cni_path: Some(self.subject.cni_path.clone()),
            stdin: config.to_string().into_bytes(),
        }
    }

    /// Runs the plugin inside the host namespace.
    pub fn exec(&self, call: &Call) -> Result<Reply> {
        exec_in(&self.host, &self.subject.plugin, call)
    }

    /// ADD that must succeed; returns the result.
    pub fn add(&self, container: &Container, ifname: &str, config: &Value) -> Result<Value> {
        self.exec(&self.call("ADD", container, ifname, config))?
            .result()
            .with_context(|| format!("ADD {} {ifname}", container.name))
    }

    /// `config` with `prevResult` set.
    pub fn with_prev(config: &Value, prev: &Value) -> Value {
        let mut c = config.clone();
        c["prevResult"] = prev.clone();
        c
    }
}

pub fn container_id(container: &Container) -> String {
    format!("ctr-{}", container.name)
}

pub fn netns_path(container: &Container) -> String {
    format!("/run/netns/{}", container.netns_name)
}

/// Forks the plugin from a thread inside the host namespace, so it and
/// everything it creates live there; bounded in time.
pub fn exec_in(host: &Host, plugin: &Path, call: &Call) -> Result<Reply> {
    let mut command = Command::new(plugin);
    command
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", &call.command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in [
        ("CNI_CONTAINERID", &call.container_id),
        ("CNI_NETNS", &call.netns),
        ("CNI_IFNAME", &call.ifname),
        ("CNI_ARGS", &call.cni_args),
        ("CNI_PATH", &call.cni_path),
    ] {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let child = host
        .netns
        .run(move || command.spawn())?
        .with_context(|| format!("start {}", plugin.display()))?;
    wait(child, &call.stdin)
}

fn wait(mut child: Child, stdin: &[u8]) -> Result<Reply> {
    let mut input = child.stdin.take().expect("piped");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A plugin may exit without reading its input (VERSION, early errors).
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + CALL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // Our own child, by PID.
            let _ = child.kill();
            let _ = child.wait();
            bail!("plugin timed out after {CALL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let stdout = reader
        .join()
        .map_err(|_| anyhow!("stdout reader panicked"))?;
    let stderr = err_reader
        .join()
        .map_err(|_| anyhow!("stderr reader panicked"))?;
    Ok(Reply {
        success: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// The outcome of one check.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub result: Result<(), String>,
}

/// Runs every check `wanted` admits against `subject`, each in a fresh world,
/// and prints a table.
pub async fn run_suite(subject: &Subject, wanted: impl Fn(&Check) -> bool) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (n, check) in checks::all().into_iter().enumerate() {
        if !wanted(&check) {
            continue;
        }
        let started = Instant::now();
        let result = run_one(subject, &check, n).await;
        let mark = match &result {
            Ok(()) => "pass".to_string(),
            Err(e) => format!("FAIL: {e}"),
        };
        eprintln!(
            "[{}] {:<44} {:>6} ms  {mark}",
            subject.name,
            check.name,
            started.elapsed().as_millis()
        );
        outcomes.push(Outcome {
            name: check.name.clone(),
            result,
        });
    }
    outcomes
}

async fn run_one(subject: &Subject, check: &Check, n: usize) -> Result<(), String> {
    let setup = async {
        let world = World::new().await?;
        let host = world.host("h").await?;
        let scratch = Scratch::new(&format!("{}-{n}", world.prefix()))?;
        anyhow::Ok(Ctx {
            subject,
            world,
            host,
            scratch,
        })
    };
    let ctx = setup.await.map_err(|e| format!("setup: {e:#}"))?;
    let result = (check.run)(&ctx).map_err(|e| format!("{e:#}"));
    drop(ctx);
    result
}

/// The reference `bridge` plugin with `host-local` IPAM.
pub fn reference_bridge() -> Subject {
    Subject {
        name: "bridge",
        plugin: PathBuf::from("/usr/lib/cni/bridge"),
        cni_path: "/usr/lib/cni".into(),
        config: |spec| {
            json!({
                "cniVersion": spec.version,
                "name": spec.name,
                "type": "bridge",
                "bridge": "cnibr0",
                "isGateway": true,
                "ipam": host_local(spec),
            })
        },
    }
}

/// `weft`, with the same `host-local` IPAM (delegation is part of the bar).
pub fn weft(plugin: PathBuf) -> Subject {
    Subject {
        name: "weft",
        plugin,
        cni_path: "/usr/lib/cni".into(),
        config: |spec| {
            json!({
                "cniVersion": spec.version,
                "name": spec.name,
                "type": "weft",
                "bridge": "weftbr0",
                "isGateway": true,
                "mode": "standalone",
                "stateDir": spec.state_dir.join("weft"),
                "ipam": host_local(spec),
            })
        },
    }
}

/// `weft` with its built-in IPAM (netd's reservations), the range given as
/// `rangeStart`/`rangeEnd` in an `ipam` section of type `weft`.
pub fn weft_builtin(plugin: PathBuf) -> Subject {
    Subject {
        name: "weft-builtin",
        plugin,
        cni_path: "/usr/lib/cni".into(),
        config: |spec| {
            let mut ipam = json!({"type": "weft"});
            if let Some((first, last)) = &spec.range {
                ipam["rangeStart"] = json!(first);
                ipam["rangeEnd"] = json!(last);
            }
            json!({
                "cniVersion": spec.version,
                "name": spec.name,
                "type": "weft",
                "bridge": "weftbr0",
                "mode": "standalone",
                "subnet": spec.subnet,
                "stateDir": spec.state_dir.join("weft"),
                "ipam": ipam,
            })
        },
    }
}

fn host_local(spec: &NetSpec) -> Value {
    let mut range = json!({"subnet": spec.subnet});
    if let Some((first, last)) = &spec.range {
        range["rangeStart"] = json!(first);
        range["rangeEnd"] = json!(last);
    }
    json!({
        "type": "host-local",
        "ranges": [[range]],
        "dataDir": spec.state_dir.join("ipam"),
    })
}
