//! The CNI benchmark `scripts/bench-cni` runs (ignored in ordinary test runs).
//!
//! 1. ADD and DEL latency per container, each with one published port, for
//!    `weft` (standalone, built-in IPAM, `portMappings`), the reference
//!    `bridge` + `host-local` + `portmap` chain, and `netavark setup` /
//!    `teardown` (static addresses, as podman hands them over), each in a
//!    fresh simulated host of one world, in the same run. Wall time of the
//!    plugin processes, fork included. One published port per subject is
//!    checked from another host, so none is measured doing nothing.
//! 2. `podman run --rm IMAGE true` with `--network none`, a weft network, the
//!    CNI reference network (`podman network create`) and netavark, rounds
//!    interleaved.
//!
//! `BENCH_CNI_CONTAINERS` (default 50) and `BENCH_CNI_PODMAN_RUNS` (default
//! 10) bound the counts; `WEFT_CNI_PLUGIN` names the weft binary (the script
//! builds a release one).

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;
mod runtime_support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use world::{require_root, tcp_via, Container, Host, World};

use cni::{Reply, Scratch};
use runtime_support::{run_with_stdin, weft_dir, Podman, IMAGE};

const NETAVARK: &str = "/usr/lib/podman/netavark";

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        Duration::ZERO
    } else {
        s[s.len() / 2]
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The timings of one subject.
struct Timings {
    name: &'static str,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// One plugin call in `host`, timed by the caller: the CNI variables, the
/// config on stdin, a blocking wait (no polling in the measured time).
fn plugin(
    host: &Host,
    binary: &Path,
    command: &str,
    c: &Container,
    stdin: &Value,
) -> Result<Reply> {
    let env = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", format!("bench-{}", c.name)),
        ("CNI_NETNS", format!("/run/netns/{}", c.netns_name)),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
    ];
    let out = run_with_stdin(
        &host.netns,
        &binary.display().to_string(),
        &[],
        &env,
        Some(stdin.to_string().as_bytes()),
        Duration::from_secs(60),
    )?;
    Ok(Reply {
        success: out.success,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

fn port_mapping(i: usize) -> Value {
    json!([{"hostPort": 20000 + i, "containerPort": 8080, "protocol": "tcp"}])
}

fn address(result: &Value) -> Result<IpAddr> {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {result}"))
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let out = f()?;
    Ok((start.elapsed(), out))
}

/// One subject: its host, containers and what each ADD returned.
struct Subject {
    name: &'static str,
    host: Host,
    cs: Vec<Container>,
    dir: Scratch,
    /// Per container: what DEL needs (configs with prevResult, or netavark's options file).
    added: Vec<Value>,
    /// Container 0's address, for the published-port check.
    first_ip: Option<IpAddr>,
}

const WEFT: &str = "weft";
const REFERENCE: &str = "bridge+portmap";
const NETAVARK_NAME: &str = "netavark";

impl Subject {
    fn add(&mut self, i: usize) -> Result<Duration> {
        let c = &self.cs[i];
        let dir = &self.dir.0;
        let (d, (keep, ip)) = match self.name {
            WEFT => {
                let binary = weft_dir().join("weft");
                let mut conf = json!({"cniVersion": "1.0.0", "name": "bench", "type": "weft",
                    "mode": "standalone", "bridge": "weftbn0", "subnet": "10.90.0.0/16",
                    "stateDir": dir.join("weft")});
                conf["runtimeConfig"] = json!({"portMappings": port_mapping(i)});
                timed(|| {
                    let r = plugin(&self.host, &binary, "ADD", c, &conf)?.result()?;
                    let ip = address(&r)?;
                    conf["prevResult"] = r;
                    Ok((json!([conf]), ip))
                })?
            }
            REFERENCE => {
                let bridge = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
                    "bridge": "cnibn0", "isGateway": true, "ipMasq": true,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.91.0.0/16"}]],
                        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.join("ipam")}});
                timed(|| {
                    let r1 = plugin(
                        &self.host,
                        Path::new("/usr/lib/cni/bridge"),
                        "ADD",
                        c,
                        &bridge,
                    )?
                    .result()?;
                    let mut pm = json!({"cniVersion": "1.0.0", "name": "bench", "type": "portmap",
                        "capabilities": {"portMappings": true}, "snat": true,
                        "runtimeConfig": {"portMappings": port_mapping(i)}});
                    pm["prevResult"] = r1;
                    let r2 = plugin(&self.host, Path::new("/usr/lib/cni/portmap"), "ADD", c, &pm)?
                        .result()?;
                    let ip = address(&r2)?;
                    let mut b = bridge.clone();
                    pm["prevResult"] = r2.clone();
                    b["prevResult"] = r2;
                    Ok((json!([pm, b]), ip))
                })?
            }
            _ => {
                let config = dir.join("netavark");
                std::fs::create_dir_all(&config)?;
                let path = dir.join(format!("opts-{i}.json"));
                let opts = netavark_opts(i, c);
                std::fs::write(&path, opts.to_string())?;
                let ip: IpAddr = opts["networks"]["bench"]["static_ips"][0]
                    .as_str()
                    .unwrap_or_default()
                    .parse()?;
                timed(|| {
                    netavark(&self.host, "setup", c, &path, &config)?;
                    Ok((json!(path), ip))
                })?
            }
        };
        self.added.push(keep);
        if i == 0 {
            self.first_ip = Some(ip);
        }
        Ok(d)
    }

    fn del(&self, i: usize) -> Result<Duration> {
        let c = &self.cs[i];
        let keep = &self.added[i];
        match self.name {
            WEFT | REFERENCE => timed(|| {
                for conf in keep.as_array().into_iter().flatten() {
                    let binary = match conf["type"].as_str() {
                        Some("weft") => weft_dir().join("weft"),
                        Some(other) => Path::new("/usr/lib/cni").join(other),
                        None => anyhow::bail!("no type in {conf}"),
                    };
                    plugin(&self.host, &binary, "DEL", c, conf)?.ok()?;
                }
                Ok(())
            })
            .map(|(d, ())| d),
            _ => {
                let path = PathBuf::from(keep.as_str().unwrap_or_default());
                timed(|| {
                    netavark(
                        &self.host,
                        "teardown",
                        c,
                        &path,
                        &self.dir.0.join("netavark"),
                    )
                })
                .map(|(d, ())| d)
            }
        }
    }

    /// Container 0's published port, from `peer`.
    fn port_works(&self, peer: &Host) -> Result<()> {
        let ip = self.first_ip.context("nothing added")?;
        tcp_via(
            &self.cs[0].netns,
            SocketAddr::new(ip, 8080),
            &peer.netns,
            SocketAddr::new(self.host.ip_addr(), 20000),
        )
        .map(drop)
        .with_context(|| format!("{}: published port", self.name))
    }
}

fn netavark_opts(i: usize, c: &Container) -> Value {
    json!({
        "container_id": format!("{:064x}", i + 1),
        "container_name": c.name,
        "port_mappings": [{"host_ip": "", "container_port": 8080, "host_port": 20000 + i, "range": 1, "protocol": "tcp"}],
        "networks": {"bench": {"static_ips": [format!("10.92.{}.{}", (i + 2) / 250, (i + 2) % 250 + 2)], "interface_name": "eth0"}},
        "network_info": {"bench": {"name": "bench", "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
            "driver": "bridge", "network_interface": "netavbn0", "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": "10.92.0.0/16", "gateway": "10.92.0.1"}],
            "ipv6_enabled": false, "internal": false, "dns_enabled": false, "ipam_options": {"driver": "host-local"}}}
    })
}

fn netavark(host: &Host, verb: &str, c: &Container, opts: &Path, config: &Path) -> Result<()> {
    let netns = format!("/run/netns/{}", c.netns_name);
    let input = std::fs::read(opts)?;
    run_with_stdin(
        &host.netns,
        NETAVARK,
        &["--config", &config.display().to_string(), verb, &netns],
        &[],
        Some(&input),
        Duration::from_secs(60),
    )?
    .ok(&format!("netavark {verb}"))
    .map(drop)
}

/// ADD container i on every subject in turn, then DEL likewise: the
/// subjects share the machine's load as it drifts, so the ratios hold.
async fn per_container(n: usize) -> Result<Vec<Timings>> {
    let world = World::new().await?;
    let peer = world.host("peer").await?;
    let mut subjects = Vec::new();
    for (tag, name) in [("w", WEFT), ("r", REFERENCE), ("n", NETAVARK_NAME)] {
        let host = world.host(tag).await?;
        let dir = Scratch::new(&format!("{}-bench-{tag}", world.prefix()))?;
        let cs: Vec<Container> = (0..n)
            .map(|i| host.container(&format!("b{i}")))
            .collect::<Result<_>>()?;
        subjects.push(Subject {
            name,
            host,
            cs,
            dir,
            added: Vec::new(),
            first_ip: None,
        });
    }
    let mut timings: Vec<Timings> = subjects
        .iter()
        .map(|s| Timings {
            name: s.name,
            add: Vec::new(),
            del: Vec::new(),
        })
        .collect();
    for i in 0..n {
        for (s, t) in subjects.iter_mut().zip(timings.iter_mut()) {
            t.add
                .push(s.add(i).with_context(|| format!("{} ADD {i}", s.name))?);
        }
    }
    for s in &subjects {
        s.port_works(&peer)?;
    }
    for i in 0..n {
        for (s, t) in subjects.iter().zip(timings.iter_mut()) {
            t.del
                .push(s.del(i).with_context(|| format!("{} DEL {i}", s.name))?);
        }
    }
    Ok(timings)
}

/// podman run --rm: median wall time per network.
async fn podman_runs(runs: usize) -> Result<Vec<(String, Duration)>> {
    let world = World::new().await?;
    let host = world.host("p").await?;
    let scratch = Scratch::new(&format!("{}-bench-podman", world.prefix()))?;
    let cni = Podman::new(&scratch.0.join("c"), &host.netns)?;
    cni.network(
        "weftnet",
        &json!({"cniVersion": "1.0.0", "name": "weftnet", "plugins": [{"type": "weft", "mode": "standalone",
            "bridge": "weftpb0", "subnet": "10.93.0.0/16", "stateDir": scratch.0.join("weft"),
            "capabilities": {"portMappings": true}}]}),
    )?;
    cni.run(
        &[
            "network",
            "create",
            "--disable-dns",
            "--subnet",
            "10.94.0.0/16",
            "refnet",
        ],
        Duration::from_secs(60),
    )?
    .ok("podman network create (CNI)")?;
    let nav = Podman::with_backend(&scratch.0.join("n"), &host.netns, "netavark")?;
    nav.run(
        &[
            "network",
            "create",
            "--disable-dns",
            "--subnet",
            "10.95.0.0/16",
            "navnet",
        ],
        Duration::from_secs(60),
    )?
    .ok("podman network create (netavark)")?;
    let variants: [(&str, &Podman, &str); 4] = [
        ("--network none", &cni, "none"),
        ("weft (CNI)", &cni, "weftnet"),
        ("CNI reference bridge", &cni, "refnet"),
        ("netavark", &nav, "navnet"),
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    // One warm-up round, not counted; then rounds interleaved.
    for round in 0..=runs {
        for (k, (label, podman, network)) in variants.iter().enumerate() {
            let (d, ()) = timed(|| {
                podman
                    .run(
                        &["run", "--rm", "--network", network, IMAGE, "true"],
                        Duration::from_secs(120),
                    )?
                    .ok(&format!("podman run --rm ({label})"))
                    .map(drop)
            })?;
            if round > 0 {
                samples[k].push(d);
            }
        }
    }
    Ok(variants
        .iter()
        .zip(samples)
        .map(|((label, _, _), s)| (label.to_string(), median(&s)))
        .collect())
}

#[tokio::test]
#[ignore = "benchmark: scripts/bench-cni runs it"]
async fn bench_cni() {
    require_root!();
    let n = count("BENCH_CNI_CONTAINERS", 50).clamp(1, 500);
    let runs = count("BENCH_CNI_PODMAN_RUNS", 10).clamp(1, 100);
    let plugin = weft_dir().join("weft");
    println!("weft plugin: {}", plugin.display());
    let timings = per_container(n).await.unwrap();
    let weft_add = median(&timings[0].add);
    let weft_del = median(&timings[0].del);
    println!("\n## ADD and DEL per container, one published port each, {n} containers\n");
    println!("| subject | ADD median ms | ADD #1-10 | ADD last 10 | DEL median ms | ADD / weft | DEL / weft |");
    println!("|---|---|---|---|---|---|---|");
    for t in &timings {
        let first = median(&t.add[..t.add.len().min(10)]);
        let last = median(&t.add[t.add.len().saturating_sub(10)..]);
        println!(
            "| {} | {} | {} | {} | {} | {:.1}× | {:.1}× |",
            t.name,
            ms(median(&t.add)),
            ms(first),
            ms(last),
            ms(median(&t.del)),
            median(&t.add).as_secs_f64() / weft_add.as_secs_f64(),
            median(&t.del).as_secs_f64() / weft_del.as_secs_f64(),
        );
    }
    let podman = podman_runs(runs).await.unwrap();
    let none = podman[0].1;
    println!("\n## podman run --rm busybox true, {runs} runs each (median)\n");
    println!("| network | median ms | network cost ms (− none) |");
    println!("|---|---|---|");
    for (label, d) in &podman {
        println!("| {label} | {} | {} |", ms(*d), ms(d.saturating_sub(none)));
    }
}
