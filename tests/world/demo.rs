//! The weft demo: three simulated hosts in network namespaces, each running
//! netd with the WireGuard overlay from a static peer list, two containers
//! per host attached through netd, and traffic shown flowing between
//! containers on different hosts (with the address the server saw), a
//! published port reached from another host, a container and the host's own
//! 127.0.0.1 and [::1], and each host's `netd peers`.
//! Nothing touches this machine's own network; everything is removed on exit,
//! also on Ctrl-C or SIGTERM (the world's signal thread tears it down).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use world::{classify_frame, ping, tcp_via, Capture, Container, Frame, NetdHost, World};

const CLUSTER: &str = "10.66.0.0/16";
const HOSTS: [&str; 3] = ["a", "b", "c"];
const CONTAINERS: [&str; 2] = ["web", "db"];
/// Host a publishes its `web` container's port 80 here.
const PUBLISHED: u16 = 8080;

struct Attached {
    host: usize,
    container: Container,
    ip: IpAddr,
}

impl Attached {
    fn label(&self) -> String {
        format!("{}/{}", HOSTS[self.host], self.container.name)
    }
}

const USAGE: &str = "\
Usage: weft-demo [--help]   (scripts/demo builds it and runs it)

Builds a world of network namespaces (three simulated hosts, each running
netd with the WireGuard overlay, two containers per host), shows traffic
between containers on different hosts, a published port and each host's
`netd peers`, then removes the world. As root; touches nothing of this
machine's own network. Ctrl-C removes the world too. No options.
";

fn short_key(key: &str) -> String {
    format!("{}…", &key[..key.len().min(10)])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    if let Some(arg) = args.first() {
        eprint!("weft-demo: unknown argument {arg:?}\n\n{USAGE}");
        std::process::exit(2);
    }
    if !world::is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(demo())
        .inspect_err(|_| world::wait_if_torn_down_by_signal())
}

async fn demo() -> Result<()> {
    let started = Instant::now();
    let world = World::new().await?;
    // The demo's files (configs, keys, state, logs) go with the world.
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", world.prefix()));
    world.remove_on_teardown(&dir);
    let result = run(&world, &dir).await;
    println!(
        "\ndone in {:.1} s; tearing the world down (netd stopped, namespaces removed)",
        started.elapsed().as_secs_f64()
    );
    drop(world);
    result
}

async fn run(world: &World, dir: &Path) -> Result<()> {
    println!(
        "weft demo — world {} (namespaces only; removed on exit)",
        world.prefix()
    );
    println!(
        "fabric: bridge fabric0 in namespace {}-fab; hosts on 198.18.0.0/15",
        world.prefix()
    );

    println!("\n1. three hosts, each running netd with the WireGuard overlay");
    println!("   cluster range {CLUSTER}, one /24 per host; keys from `netd pubkey`");
    let mut netds = Vec::new();
    for (i, name) in HOSTS.iter().enumerate() {
        let host = world.host(name).await?;
        let subnet = format!("10.66.{}.0/24", i + 1);
        let mut netd = NetdHost::prepare(&host, &dir.join(name), &subnet)?;
        netd.log_filter("info");
        netds.push(netd);
    }
    for (i, netd) in netds.iter().enumerate() {
        let others: Vec<&NetdHost> = netds
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n)
            .collect();
        netd.write_config(CLUSTER, &others, "")?;
    }
    for netd in &mut netds {
        netd.start()?;
        let status = netd.json(&["status"])?;
        println!(
            "   host {}  {:<11}  subnet {}  key {}  wg {} MTU {}",
            netd.host.name,
            netd.host.ip,
            netd.subnet,
            short_key(&netd.public_key),
            status["overlay"]["interface"].as_str().unwrap_or("?"),
            status["overlay"]["mtu"],
        );
    }
    println!(
        "   static peers: each host's netd.toml lists the other two ([[overlay.peer]]: key, endpoint, subnet)"
    );

    println!("\n2. two containers per host, attached through netd (`netd attach`)");
    let mut attached = Vec::new();
    for (h, netd) in netds.iter().enumerate() {
        for name in CONTAINERS {
            let container = netd.host.container(name)?;
            let publish = format!("{PUBLISHED}:80/tcp");
            let extra: Vec<&str> = if h == 0 && name == "web" {
                vec!["-p", &publish]
            } else {
                Vec::new()
            };
            let ip = netd
                .attach(&container, &extra)
                .with_context(|| format!("attach {name} on host {}", netd.host.name))?;
            let mtu =
                world::ip_json(&container.netns, &["link", "show", "eth0"])?[0]["mtu"].clone();
            let note = if extra.is_empty() {
                String::new()
            } else {
                format!("  published {}:{PUBLISHED} → port 80", netd.host.ip)
            };
            let a = Attached {
                host: h,
                container,
                ip,
            };
            println!("   {:<6} eth0 {:<10} MTU {mtu}{note}", a.label(), a.ip);
            attached.push(a);
        }
    }

    println!("\n3. traffic between containers on different hosts, through WireGuard");
    let captures = HOSTS
        .iter()
        .map(|h| Capture::start(world.fabric(), &format!("h-{h}")))
        .collect::<Result<Vec<_>>>()?;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut rows = 0;
    let mut port = 7000;
    for from in &attached {
        for to in &attached {
            if from.host == to.host {
                continue;
            }
            port += 1;
            checked += 1;
            let icmp = ping(&from.container.netns, to.ip)?;
            let addr = SocketAddr::new(to.ip, port);
            let tcp = tcp_via(&to.container.netns, addr, &from.container.netns, addr);
            let shown = from.container.name == "web" && to.container.name == "db";
            let (tcp_text, seen, real) = match &tcp {
                Ok(peer) => (
                    "ok",
                    format!("server saw {}", peer.ip()),
                    peer.ip() == from.ip,
                ),
                Err(e) => ("FAILED", format!("{e:#}"), false),
            };
            if !icmp || !real {
                failures.push(format!("{} → {}", from.label(), to.label()));
            }
            if shown || !icmp || !real {
                rows += 1;
                println!(
                    "   {:<6} → {:<6} {:<10} ping {:<6} tcp {tcp_text:<6} {seen}",
                    from.label(),
                    to.label(),
                    to.ip,
                    if icmp { "ok" } else { "FAILED" },
                );
            }
        }
    }
    println!(
        "   all {checked} cross-host container pairs, the {rows} above and {} more summarised here: {} (servers see the real container addresses: no NAT inside the cluster)",
        checked - rows,
        if failures.is_empty() { "ping ok, tcp ok".to_string() } else { format!("{} FAILED", failures.len()) }
    );
    let mut wireguard = 0;
    let mut other = Vec::new();
    for capture in captures {
        for frame in capture.stop() {
            match classify_frame(&frame) {
                Frame::WireGuard => wireguard += 1,
                Frame::Neighbour => {}
                Frame::Other(what) => other.push(what),
            }
        }
    }
    println!(
        "   on the fabric meanwhile: {wireguard} WireGuard (UDP 51820) frames, {} others{}",
        other.len(),
        if other.is_empty() {
            " — nothing in plaintext"
        } else {
            ""
        }
    );
    if !other.is_empty() {
        failures.push(format!("the fabric carried {}", other.join(", ")));
    }

    println!("\n4. a published port reached from another host, a container and host a itself");
    let web = &attached[0];
    let listen = SocketAddr::new(web.ip, 80);
    let a_host = &netds[0].host;
    let c_host = &netds[2].host;
    let b_web = &attached[2];
    let fabric = SocketAddr::new(a_host.ip_addr(), PUBLISHED);
    let clients = [
        (format!("host c ({})", c_host.ip), &c_host.netns, fabric, ""),
        (
            format!("{} ({})", b_web.label(), b_web.ip),
            &b_web.container.netns,
            fabric,
            " (host b: leaving the cluster range is masqueraded)",
        ),
        (
            "host a".to_string(),
            &a_host.netns,
            SocketAddr::from(([127, 0, 0, 1], PUBLISHED)),
            " (kernel DNAT, route_localnet)",
        ),
        (
            "host a".to_string(),
            &a_host.netns,
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, PUBLISHED)),
            " (netd's [::1] relay)",
        ),
    ];
    for (client, netns, target, why) in clients {
        match tcp_via(&web.container.netns, listen, netns, target) {
            Ok(peer) => println!(
                "   {client} → {target} → {}:80   tcp ok, server saw {}{why}",
                web.label(),
                peer.ip()
            ),
            Err(e) => {
                println!("   {client} → {target}: FAILED: {e:#}");
                failures.push(format!("published port from {client} via {target}"));
            }
        }
    }

    println!("\n5. netd peers, per host, as you would type it");
    for netd in &netds {
        let socket = netd.socket();
        println!(
            "\n   host {}$ netd peers --socket {}",
            netd.host.name,
            socket.display()
        );
        let out = netd.cli(&["peers"])?;
        for line in out.stdout.lines() {
            println!("   {line}");
        }
        if !out.success {
            println!("   (netd peers failed: {})", out.stderr.trim());
            failures.push(format!("netd peers on host {}", netd.host.name));
        }
    }

    if !failures.is_empty() {
        for netd in &netds {
            let log = netd.log_text();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            eprintln!("--- netd on host {} (last lines) ---", netd.host.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        bail!("{} checks failed: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}
