//! The demo's steps both modes share: containers attached through netd,
//! traffic between them across hosts, a published port, and showing a netd
//! command's output as a user would type it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use world::{classify_frame, ping, tcp_via, Capture, Container, Frame, NetdHost, World};

use crate::HOSTS;

const CONTAINERS: [&str; 2] = ["web", "db"];
/// Host a publishes its `web` container's port 80 here.
const PUBLISHED: u16 = 8080;

/// Prints the demo's numbered step titles.
pub struct Steps(usize);

impl Steps {
    pub fn new() -> Steps {
        Steps(0)
    }

    pub fn next(&mut self, title: &str) {
        self.0 += 1;
        println!("\n{}. {title}", self.0);
    }
}

pub struct Attached {
    pub host: usize,
    pub container: Container,
    pub ip: IpAddr,
}

impl Attached {
    pub fn label(&self) -> String {
        format!("{}/{}", HOSTS[self.host], self.container.name)
    }
}

/// Two containers per host, attached with `netd attach`; host a's `web`
/// publishes port 80 on 8080.
pub fn attach_containers(netds: &[NetdHost]) -> Result<Vec<Attached>> {
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
    Ok(attached)
}

/// One ping and one TCP exchange from `from` to `to`; prints the row, after
/// `lead`, when `show` or when it failed. True when both worked and the server saw
/// `from`'s own address.
pub fn check_pair(
    from: &Attached,
    to: &Attached,
    port: u16,
    show: bool,
    lead: &str,
) -> Result<bool> {
    let icmp = ping(&from.container.netns, to.ip)?;
    let addr = SocketAddr::new(to.ip, port);
    let tcp = tcp_via(&to.container.netns, addr, &from.container.netns, addr);
    let (tcp_text, seen, real) = match &tcp {
        Ok(peer) => (
            "ok",
            format!("server saw {}", peer.ip()),
            peer.ip() == from.ip,
        ),
        Err(e) => ("FAILED", format!("{e:#}"), false),
    };
    let ok = icmp && real;
    if show || !ok {
        println!(
            "{lead}{:<6} → {:<6} {:<10} ping {:<6} tcp {tcp_text:<6} {seen}",
            from.label(),
            to.label(),
            to.ip,
            if icmp { "ok" } else { "FAILED" },
        );
    }
    Ok(ok)
}

/// Pings `to` from `from` until it answers, at most `bound` after `since`:
/// the time since `since` when it did, or None.
pub fn wait_ping(
    from: &Attached,
    to: &Attached,
    since: Instant,
    bound: Duration,
) -> Result<Option<Duration>> {
    while !ping(&from.container.netns, to.ip)? {
        if since.elapsed() > bound {
            return Ok(None);
        }
    }
    Ok(Some(since.elapsed()))
}

/// Every cross-host pair, ping and TCP, with the fabric captured to show
/// that only WireGuard crossed it. Failures are added to `failures`.
pub fn cross_host_traffic(
    world: &World,
    attached: &[Attached],
    failures: &mut Vec<String>,
) -> Result<()> {
    let captures = HOSTS
        .iter()
        .map(|h| Capture::start(world.fabric(), &format!("h-{h}")))
        .collect::<Result<Vec<_>>>()?;
    let mut checked = 0;
    let mut shown = 0;
    let mut failed = 0;
    let mut port = 7000;
    for from in attached {
        for to in attached {
            if from.host == to.host {
                continue;
            }
            port += 1;
            checked += 1;
            let show = from.container.name == "web" && to.container.name == "db";
            let ok = check_pair(from, to, port, show, "   ")?;
            if show || !ok {
                shown += 1;
            }
            if !ok {
                failed += 1;
                failures.push(format!("{} → {}", from.label(), to.label()));
            }
        }
    }
    println!(
        "   all {checked} cross-host container pairs, the {shown} above and {} more summarised here: {} (servers see the real container addresses: no NAT inside the cluster)",
        checked - shown,
        if failed == 0 { "ping ok, tcp ok".to_string() } else { format!("{failed} FAILED") }
    );
    let mut wireguard = 0;
    let mut store = 0;
    let mut other = Vec::new();
    for capture in captures {
        for frame in capture.stop() {
            match classify_frame(&frame) {
                Frame::WireGuard => wireguard += 1,
                Frame::Store => store += 1,
                Frame::Neighbour => {}
                Frame::Other(what) => other.push(what),
            }
        }
    }
    println!(
        "   on the fabric meanwhile: {wireguard} WireGuard (UDP 51820) frames, {store} to or from etcd (the store), {} others{}",
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
    Ok(())
}

/// Host a's published port from host c, from a container on host b, and from
/// host a's own 127.0.0.1 and [::1].
pub fn published_port(
    netds: &[NetdHost],
    attached: &[Attached],
    failures: &mut Vec<String>,
) -> Result<()> {
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
    Ok(())
}

/// Runs `netd ARGS --socket …` on `netd`'s host and prints it as typed,
/// with its output indented.
pub fn show(netd: &NetdHost, args: &[&str], failures: &mut Vec<String>) -> Result<()> {
    println!(
        "\n   host {}$ netd {} --socket {}",
        netd.host.name,
        args.join(" "),
        netd.socket().display()
    );
    let out = netd.cli(args)?;
    for line in out.stdout.lines() {
        println!("   {line}");
    }
    if !out.success {
        println!("   (netd {} failed: {})", args.join(" "), out.stderr.trim());
        failures.push(format!(
            "netd {} on host {}",
            args.join(" "),
            netd.host.name
        ));
    }
    Ok(())
}

/// The last lines of each netd's log, on stderr, when something failed.
pub fn log_tails(netds: &[NetdHost]) {
    for netd in netds {
        let log = netd.log_text();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        eprintln!("--- netd on host {} (last lines) ---", netd.host.name);
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}
