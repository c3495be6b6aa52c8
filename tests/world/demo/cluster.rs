//! The cluster demo's own steps: etcd in the fabric, `netd cluster init`
//! once, hosts joining with `netd run --store …`, and a host's netd killed
//! and restarted. Everything a user would type is run as typed: processes of
//! the netd binary inside the simulated hosts.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use world::etcd::{ETCD_IP, ETCD_PORT};
use world::{Host, NetdHost};

/// The cluster's IPv4 range, handed out as one /24 per host.
pub const RANGE: &str = "10.66.0.0/16";

/// netd's `--store` value for the world's etcd.
pub fn store_url() -> String {
    format!("etcd://{ETCD_IP}:{ETCD_PORT}")
}

/// `netd cluster init` on `netd`'s host, printed as typed with its output.
pub fn init(netd: &NetdHost) -> Result<()> {
    let url = store_url();
    let args = [
        "cluster",
        "init",
        "--store",
        &url,
        "--range",
        RANGE,
        "--subnet-len",
        "24",
    ];
    println!("   host {}$ netd {}", netd.host.name, args.join(" "));
    let out = netd.run(&args)?;
    for line in out.stdout.lines() {
        println!("   {line}");
    }
    if !out.success {
        bail!(
            "netd cluster init failed (`scripts/demo --static` runs without a store): {}",
            out.stderr.trim()
        );
    }
    Ok(())
}

/// A host's netd with a config naming neither a subnet nor a peer (nor the
/// overlay: with a store, netd turns it on with the cluster's range and port).
pub fn prepare(host: &Host, dir: &std::path::Path) -> Result<NetdHost> {
    let mut netd = NetdHost::prepare(host, dir, "")?;
    netd.log_filter("info");
    std::fs::write(netd.config_path(), "reconcile_interval_secs = 1\n")?;
    Ok(netd)
}

/// `netd run --store … --host-name NAME`, waiting until its API answers.
pub fn start(netd: &mut NetdHost) -> Result<()> {
    let url = store_url();
    let name = netd.host.name.clone();
    netd.start_with(&["--store", &url, "--host-name", &name])
}

/// A host as `netd cluster hosts --json` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    pub name: String,
    pub subnet: String,
    pub alive: bool,
}

/// `netd cluster hosts --json` on `netd`'s host.
pub fn hosts(netd: &NetdHost) -> Result<Vec<HostState>> {
    let value = netd.json(&["cluster", "hosts"])?;
    parse_hosts(&value).with_context(|| format!("netd cluster hosts --json printed {value}"))
}

/// Reads the host list: an array of hosts (or `{"hosts": [...]}`), each with
/// its name, its IPv4 subnet and whether it is alive.
fn parse_hosts(value: &Value) -> Result<Vec<HostState>> {
    let list = value
        .as_array()
        .or_else(|| value["hosts"].as_array())
        .context("no list of hosts")?;
    list.iter()
        .map(|h| {
            let name = h["name"]
                .as_str()
                .or_else(|| h["host_name"].as_str())
                .context("a host without a name")?;
            let subnet = h["ipv4_subnet"]
                .as_str()
                .or_else(|| h["subnet"].as_str())
                .or_else(|| {
                    h["subnets"].as_array().and_then(|s| {
                        s.iter()
                            .filter_map(Value::as_str)
                            .find(|s| !s.contains(':'))
                    })
                })
                .with_context(|| format!("host {name} without an IPv4 subnet"))?;
            let alive = match (&h["alive"], h["state"].as_str()) {
                (Value::Bool(alive), _) => *alive,
                (_, Some(state)) => state == "alive",
                _ => bail!("host {name} is neither alive nor dead"),
            };
            Ok(HostState {
                name: name.to_string(),
                subnet: subnet.to_string(),
                alive,
            })
        })
        .collect()
}

/// Polls `netd cluster hosts --json` on `netd`'s host until `name` is shown
/// `alive` (or not), at most `bound` after `since`; returns that host's
/// entry and the time since `since`.
pub fn wait_state(
    netd: &NetdHost,
    name: &str,
    alive: bool,
    since: Instant,
    bound: Duration,
) -> Result<(HostState, Duration)> {
    let started = since;
    loop {
        let hosts = hosts(netd)?;
        if let Some(h) = hosts.iter().find(|h| h.name == name && h.alive == alive) {
            return Ok((h.clone(), started.elapsed()));
        }
        if started.elapsed() > bound {
            bail!(
                "host {} does not show {name} {} after {bound:?}",
                netd.host.name,
                if alive { "alive" } else { "dead" }
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Polls `netd peers --json` on every host until each lists the others.
pub fn wait_peers(netds: &[NetdHost], bound: Duration) -> Result<Duration> {
    let started = Instant::now();
    for netd in netds {
        loop {
            let peers = netd.peers()?;
            if peers.len() + 1 >= netds.len() {
                break;
            }
            if started.elapsed() > bound {
                bail!(
                    "host {} lists {} of {} peers after {bound:?}",
                    netd.host.name,
                    peers.len(),
                    netds.len() - 1
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_lists_read_in_either_shape() {
        let want = vec![
            HostState {
                name: "a".into(),
                subnet: "10.66.7.0/24".into(),
                alive: true,
            },
            HostState {
                name: "b".into(),
                subnet: "10.66.9.0/24".into(),
                alive: false,
            },
        ];
        let flat = json!([
            {"name": "a", "ipv4_subnet": "10.66.7.0/24", "alive": true},
            {"name": "b", "ipv4_subnet": "10.66.9.0/24", "alive": false},
        ]);
        assert_eq!(parse_hosts(&flat).unwrap(), want);
        let wrapped = json!({"hosts": [
            {"host_name": "a", "subnets": ["fd66::/64", "10.66.7.0/24"], "state": "alive"},
            {"host_name": "b", "subnet": "10.66.9.0/24", "state": "dead"},
        ]});
        assert_eq!(parse_hosts(&wrapped).unwrap(), want);
        assert!(parse_hosts(&json!([{"name": "a", "alive": true}])).is_err());
        assert!(parse_hosts(&json!({"nothing": 1})).is_err());
    }
}
