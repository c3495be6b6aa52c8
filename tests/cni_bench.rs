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
use world::{root_or_skip, tcp_via, Container, Host, World};

use cni::{exec_in, Call, Scratch};
use runtime_support::{run, weft_dir, Podman, IMAGE};

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

fn call(command: &str, c: &Container, stdin: &Value, cni_path: &str) -> Call {
    Call {
        command: command.into(),
        container_id: Some(format!("bench-{}", c.name)),
        netns: Some(format!("/run/netns/{}", c.netns_name)),
        ifname: Some("eth0".into()),
        cni_args: None,
        cni_path: Some(cni_path.into()),
        stdin: stdin.to_string().into_bytes(),
    }
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

/// Checks container 0's published port from `peer`.
fn port_works(host: &Host, peer: &Host, c0: &Container, ip: IpAddr) -> Result<()> {
    tcp_via(
        &c0.netns,
        SocketAddr::new(ip, 8080),
        &peer.netns,
        SocketAddr::new(host.ip_addr(), 20000),
    )
    .map(drop)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let out = f()?;
    Ok((start.elapsed(), out))
}

fn bench_weft(host: &Host, peer: &Host, cs: &[Container], dir: &Path) -> Result<Timings> {
    let plugin = weft_dir().join("weft");
    let base = json!({"cniVersion": "1.0.0", "name": "bench", "type": "weft", "mode": "standalone",
        "bridge": "weftbn0", "subnet": "10.90.0.0/16", "stateDir": dir.join("weft")});
    let mut t = Timings {
        name: "weft",
        add: vec![],
        del: vec![],
    };
    let mut results = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let mut conf = base.clone();
        conf["runtimeConfig"] = json!({"portMappings": port_mapping(i)});
        let (d, r) =
            timed(|| exec_in(host, &plugin, &call("ADD", c, &conf, "/usr/lib/cni"))?.result())?;
        t.add.push(d);
        results.push((conf, r));
    }
    port_works(host, peer, &cs[0], address(&results[0].1)?)?;
    for (c, (conf, r)) in cs.iter().zip(results) {
        let mut del = conf;
        del["prevResult"] = r;
        let (d, ()) =
            timed(|| exec_in(host, &plugin, &call("DEL", c, &del, "/usr/lib/cni"))?.ok())?;
        t.del.push(d);
    }
    Ok(t)
}

fn bench_reference(host: &Host, peer: &Host, cs: &[Container], dir: &Path) -> Result<Timings> {
    let bridge = json!({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cnibn0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.91.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.join("ipam")}});
    let bridge_bin = PathBuf::from("/usr/lib/cni/bridge");
    let portmap_bin = PathBuf::from("/usr/lib/cni/portmap");
    let mut t = Timings {
        name: "bridge+portmap",
        add: vec![],
        del: vec![],
    };
    let mut results = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let (d, (pm, r)) = timed(|| {
            let r1 =
                exec_in(host, &bridge_bin, &call("ADD", c, &bridge, "/usr/lib/cni"))?.result()?;
            let mut pm = json!({"cniVersion": "1.0.0", "name": "bench", "type": "portmap",
                "capabilities": {"portMappings": true}, "snat": true});
            pm["runtimeConfig"] = json!({"portMappings": port_mapping(i)});
            pm["prevResult"] = r1;
            let r2 = exec_in(host, &portmap_bin, &call("ADD", c, &pm, "/usr/lib/cni"))?.result()?;
            Ok((pm, r2))
        })?;
        t.add.push(d);
        results.push((pm, r));
    }
    port_works(host, peer, &cs[0], address(&results[0].1)?)?;
    for (c, (mut pm, r)) in cs.iter().zip(results) {
        let (d, ()) = timed(|| {
            pm["prevResult"] = r.clone();
            exec_in(host, &portmap_bin, &call("DEL", c, &pm, "/usr/lib/cni"))?.ok()?;
            let mut b = bridge.clone();
            b["prevResult"] = r;
            exec_in(host, &bridge_bin, &call("DEL", c, &b, "/usr/lib/cni"))?.ok()
        })?;
        t.del.push(d);
    }
    Ok(t)
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
    let script = format!(
        "exec {NETAVARK} --config {} {verb} {netns} < {}",
        config.display(),
        opts.display()
    );
    run(
        &host.netns,
        "sh",
        &["-c", &script],
        &[],
        Duration::from_secs(60),
    )?
    .ok(&format!("netavark {verb}"))
    .map(drop)
}

fn bench_netavark(host: &Host, peer: &Host, cs: &[Container], dir: &Path) -> Result<Timings> {
    let config = dir.join("netavark");
    std::fs::create_dir_all(&config)?;
    let mut t = Timings {
        name: "netavark",
        add: vec![],
        del: vec![],
    };
    let mut opts = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let path = dir.join(format!("opts-{i}.json"));
        std::fs::write(&path, netavark_opts(i, c).to_string())?;
        let (d, ()) = timed(|| netavark(host, "setup", c, &path, &config))?;
        t.add.push(d);
        opts.push(path);
    }
    let ip: IpAddr = netavark_opts(0, &cs[0])["networks"]["bench"]["static_ips"][0]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    port_works(host, peer, &cs[0], ip)?;
    for (c, path) in cs.iter().zip(&opts) {
        let (d, ()) = timed(|| netavark(host, "teardown", c, path, &config))?;
        t.del.push(d);
    }
    Ok(t)
}

async fn per_container(n: usize) -> Result<Vec<Timings>> {
    let world = World::new().await?;
    let peer = world.host("peer").await?;
    let mut out = Vec::new();
    type Bench = fn(&Host, &Host, &[Container], &Path) -> Result<Timings>;
    let subjects: [(&str, Bench); 3] = [
        ("w", bench_weft),
        ("r", bench_reference),
        ("n", bench_netavark),
    ];
    for (tag, bench) in subjects {
        let host = world.host(tag).await?;
        let scratch = Scratch::new(&format!("{}-bench-{tag}", world.prefix()))?;
        let cs: Vec<Container> = (0..n)
            .map(|i| host.container(&format!("b{i}")))
            .collect::<Result<_>>()?;
        let t = bench(&host, &peer, &cs, &scratch.0).with_context(|| format!("subject {tag}"))?;
        eprintln!(
            "{}: {} ADDs, {} DELs measured",
            t.name,
            t.add.len(),
            t.del.len()
        );
        out.push(t);
    }
    Ok(out)
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
    root_or_skip!();
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
