//! The reference tools, driven as a runtime drives them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use world::{Container, Host};

use super::{container_id, host_port, Driver, CNI_PATH, NETAVARK};

/// Runs `program` inside `host` with `env` and `input` on stdin; its stdout
/// when it succeeds.
pub(super) fn run_tool(
    host: &Host,
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    input: &str,
) -> Result<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = host
        .netns
        .run(move || command.spawn())?
        .with_context(|| format!("start {program} in {}", host.netns_name))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CNI `bridge` + `portmap` chain, as a runtime drives it.
pub(super) struct Cni {
    host: Host,
    data_dir: PathBuf,
    results: BTreeMap<usize, Value>,
}

impl Cni {
    /// The chain on `host`, host-local's data under `dir`.
    pub(super) fn new(host: &Host, dir: &Path) -> Cni {
        Cni {
            host: host.clone(),
            data_dir: dir.join("host-local"),
            results: BTreeMap::new(),
        }
    }

    fn network(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "benchnet",
        })
    }

    fn bridge_conf(&self) -> Value {
        let mut conf = self.network();
        conf["type"] = json!("bridge");
        conf["bridge"] = json!("cni0");
        conf["isGateway"] = json!(true);
        conf["ipMasq"] = json!(true);
        conf["hairpinMode"] = json!(true);
        conf["ipam"] = json!({
            "type": "host-local",
            "ranges": [[{"subnet": "10.77.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": self.data_dir,
        });
        conf
    }

    fn portmap_conf(&self, i: usize, prev: Option<&Value>) -> Value {
        let mut conf = self.network();
        conf["type"] = json!("portmap");
        conf["capabilities"] = json!({"portMappings": true});
        conf["snat"] = json!(true);
        conf["runtimeConfig"] = json!({"portMappings": [
            {"hostPort": host_port(i), "containerPort": 80, "protocol": "tcp"}
        ]});
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn call(
        &self,
        command: &str,
        plugin: &str,
        i: usize,
        c: &Container,
        conf: &Value,
    ) -> Result<String> {
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container_id(i)),
            ("CNI_NETNS", format!("/run/netns/{}", c.netns_name)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_PATH.to_string()),
        ];
        run_tool(
            &self.host,
            &format!("{CNI_PATH}/{plugin}"),
            &[],
            &env,
            &conf.to_string(),
        )
        .with_context(|| format!("CNI {command} {plugin} for container {i}"))
    }
}

impl Driver for Cni {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        let bridge: Value =
            serde_json::from_str(&self.call("ADD", "bridge", i, c, &self.bridge_conf())?)?;
        let result: Value = serde_json::from_str(&self.call(
            "ADD",
            "portmap",
            i,
            c,
            &self.portmap_conf(i, Some(&bridge)),
        )?)?;
        self.results.insert(i, result);
        Ok(())
    }

    async fn detach(&mut self, i: usize, c: &Container) -> Result<()> {
        let prev = self.results.remove(&i);
        self.call("DEL", "portmap", i, c, &self.portmap_conf(i, prev.as_ref()))?;
        let mut bridge = self.bridge_conf();
        if let Some(prev) = prev {
            bridge["prevResult"] = prev;
        }
        self.call("DEL", "bridge", i, c, &bridge)?;
        Ok(())
    }
}

/// `netavark setup`/`teardown` with Podman's network JSON.
pub(super) struct Netavark {
    host: Host,
    config_dir: PathBuf,
}

impl Netavark {
    /// netavark on `host`, its configuration under `dir`.
    pub(super) fn new(host: &Host, dir: &Path) -> Result<Netavark> {
        let config_dir = dir.join("netavark");
        std::fs::create_dir_all(&config_dir)?;
        Ok(Netavark {
            host: host.clone(),
            config_dir,
        })
    }

    fn options(&self, i: usize) -> Value {
        // Podman does the IPAM: addresses 10.88.0.2 onwards, one per container.
        let n = i as u32 + 2;
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 88, 0, 0)) + n);
        json!({
            "container_id": container_id(i),
            "container_name": format!("bench{i}"),
            "port_mappings": [
                {"host_ip": "", "container_port": 80, "host_port": host_port(i), "range": 1, "protocol": "tcp"}
            ],
            "networks": {"benchnet": {"static_ips": [ip.to_string()], "interface_name": "eth0"}},
            "network_info": {"benchnet": {
                "name": "benchnet",
                "id": format!("{:064x}", 0xbe_u64),
                "driver": "bridge",
                "network_interface": "podman0",
                "created": "2026-11-25T00:00:00Z",
                "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
                "ipv6_enabled": false,
                "internal": false,
                "dns_enabled": false,
                "ipam_options": {"driver": "host-local"}
            }}
        })
    }

    fn call(&self, command: &str, i: usize, c: &Container) -> Result<()> {
        let config = self.config_dir.display().to_string();
        let netns = format!("/run/netns/{}", c.netns_name);
        let env = [("NETAVARK_FW", "iptables".to_string())];
        run_tool(
            &self.host,
            NETAVARK,
            &["--config", &config, command, &netns],
            &env,
            &self.options(i).to_string(),
        )
        .with_context(|| format!("netavark {command} for container {i}"))?;
        Ok(())
    }
}

impl Driver for Netavark {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        self.call("setup", i, c)
    }

    async fn detach(&mut self, i: usize, c: &Container) -> Result<()> {
        self.call("teardown", i, c)
    }
}
