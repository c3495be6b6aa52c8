//! The weft demo: a world of simulated hosts and containers in network
//! namespaces, wired with plumb, with traffic shown flowing between them.
//! Nothing touches this machine's own network; everything is removed on exit.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use anyhow::{Context, Result};
use plumb::{LinkOptions, Netlink, Route};
use world::{ping, tcp_exchange, Host, World};

/// Each host's container subnet: 10.77.<n>.0/24, gateway .1 on bridge weft0.
fn subnet(n: u8) -> (String, String) {
    (format!("10.77.{n}.1/24"), format!("10.77.{n}.0/24"))
}

async fn wire_host(
    host: &Host,
    n: u8,
    containers: &[&str],
) -> Result<Vec<(String, IpAddr, plumb::Netns)>> {
    let nl = Netlink::open(&host.netns).await?;
    let (gateway, _) = subnet(n);
    let up = LinkOptions {
        up: true,
        ..Default::default()
    };
    nl.add_bridge("weft0", &up).await?;
    nl.add_address("weft0", gateway.parse()?, false).await?;
    plumb::sysctl::write(&host.netns, "net.ipv4.ip_forward", "1")?;
    let mut out = Vec::new();
    for (i, name) in containers.iter().enumerate() {
        let c = host.container(name)?;
        let port = format!("veth-{name}");
        nl.add_veth(
            &port,
            &up,
            "eth0",
            &LinkOptions {
                netns: Some(c.netns.clone()),
                up: true,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("wire container {name}"))?;
        nl.attach_to_bridge(&port, "weft0").await?;
        let ip: IpAddr = format!("10.77.{n}.{}", i + 2).parse()?;
        let cnl = Netlink::open(&c.netns).await?;
        cnl.add_address("eth0", format!("{ip}/24").parse()?, false)
            .await?;
        cnl.add_route(&Route {
            gateway: Some(format!("10.77.{n}.1").parse()?),
            ..Default::default()
        })
        .await?;
        println!(
            "  {:<4} {:<3} eth0 {ip}/24  (veth {port} on weft0 of host {})",
            "", name, host.name
        );
        out.push((name.to_string(), ip, c.netns));
    }
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if !world::is_root() {
        anyhow::bail!("the demo builds network namespaces and needs root");
    }
    let started = Instant::now();
    let world = World::new().await?;
    println!(
        "weft demo — world {} (namespaces only; removed on exit)",
        world.prefix()
    );
    println!(
        "fabric: bridge fabric0 in namespace {}-fab, hosts on 198.18.0.0/15",
        world.prefix()
    );
    let a = world.host("a").await?;
    let b = world.host("b").await?;
    println!("host a: {}   host b: {}", a.ip, b.ip);
    println!("containers:");
    let on_a = wire_host(&a, 1, &["c1", "c2"]).await?;
    let on_b = wire_host(&b, 2, &["c3"]).await?;
    // Until the overlay takes over, hosts route each other's container subnets
    // over the fabric.
    for (host, peer, n) in [(&a, &b, 2u8), (&b, &a, 1u8)] {
        let nl = Netlink::open(&host.netns).await?;
        nl.add_route(&Route {
            destination: Some(subnet(n).1.parse()?),
            gateway: Some(peer.ip_addr()),
            ..Default::default()
        })
        .await?;
    }
    println!("traffic:");
    let mut failures = 0;
    let all: Vec<_> = on_a.iter().chain(on_b.iter()).collect();
    for (from, _, from_ns) in &all {
        for (to, to_ip, to_ns) in &all {
            if from == to {
                continue;
            }
            let icmp = ping(from_ns, *to_ip)?;
            let tcp = tcp_exchange(to_ns, SocketAddr::new(*to_ip, 0), from_ns).is_ok();
            failures += usize::from(!icmp) + usize::from(!tcp);
            println!(
                "  {from:<3} -> {to:<3} {to_ip:<11} ping {}  tcp {}",
                if icmp { "ok" } else { "FAILED" },
                if tcp { "ok" } else { "FAILED" }
            );
        }
    }
    println!(
        "done in {:.2} s; tearing the world down",
        started.elapsed().as_secs_f64()
    );
    drop(world);
    if failures > 0 {
        anyhow::bail!("{failures} checks failed");
    }
    Ok(())
}
