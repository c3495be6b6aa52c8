//! The weft demo: three simulated hosts in network namespaces and an etcd in
//! the fabric namespace. `netd cluster init` writes the cluster's range once;
//! each host runs `netd run --store …` and gets its subnet and its peers from
//! the store, with nothing written by hand. Two containers per host attached
//! through netd; traffic shown flowing between containers on different hosts
//! (with the address the server saw), a published port, `netd cluster hosts`
//! and `netd peers` as a user types them; then one host's netd is killed
//! (shown dead on the others) and restarted (same subnet, traffic back).
//! `--static` runs the older demo instead: hand-written static peer lists and
//! subnets, no etcd.
//! Nothing touches this machine's own network; everything is removed on exit,
//! also on Ctrl-C or SIGTERM (the world's signal thread tears it down).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use world::etcd::Etcd;
use world::{NetdHost, World};

mod cluster;
mod steps;

use steps::{Attached, Steps};

pub const HOSTS: [&str; 3] = ["a", "b", "c"];
/// The static demo's cluster range.
const STATIC_RANGE: &str = "10.66.0.0/16";
/// How long a killed host may take to be shown dead (the liveness lease is 10 s).
const DEAD_BOUND: Duration = Duration::from_secs(30);
/// How long traffic to a restarted host may take to come back.
const RECOVERY_BOUND: Duration = Duration::from_secs(40);

const USAGE: &str = "\
Usage: weft-demo [--static] [--help]   (scripts/demo builds it and runs it)

Builds a world of network namespaces: an etcd, three simulated hosts that
join one cluster through it (`netd cluster init` once, then `netd run
--store …`: no subnet and no peer written by hand), two containers per host.
Shows traffic between containers on different hosts, a published port,
`netd cluster hosts` and `netd peers`, then kills one host's netd (shown dead
on the others) and restarts it (same subnet, traffic back), and removes the
world. As root; touches nothing of this machine's own network. Ctrl-C
removes the world too.

  --static   the same three hosts from hand-written static peer lists and
             subnets instead, without etcd
";

fn short_key(key: &str) -> String {
    format!("{}…", &key[..key.len().min(10)])
}

fn main() -> Result<()> {
    let mut with_store = true;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--static" => with_store = false,
            _ => {
                eprint!("weft-demo: unknown argument {arg:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if !world::is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(demo(with_store))
        .inspect_err(|_| world::wait_if_torn_down_by_signal())
}

async fn demo(with_store: bool) -> Result<()> {
    let started = Instant::now();
    let world = World::new().await?;
    // The demo's files (configs, keys, state, logs) go with the world.
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", world.prefix()));
    world.remove_on_teardown(&dir);
    println!(
        "weft demo — world {} (namespaces only; removed on exit)",
        world.prefix()
    );
    println!(
        "fabric: bridge fabric0 in namespace {}-fab; hosts on 198.18.0.0/15",
        world.prefix()
    );
    let mut failures = Vec::new();
    let mut netds = Vec::new();
    let result = if with_store {
        run_cluster(&world, &dir, &mut netds, &mut failures).await
    } else {
        run_static(&world, &dir, &mut netds, &mut failures).await
    };
    let result = result.and_then(|()| match failures.is_empty() {
        true => Ok(()),
        false => bail!("{} checks failed: {}", failures.len(), failures.join("; ")),
    });
    if result.is_err() {
        steps::log_tails(&netds);
    }
    println!(
        "\ndone in {:.1} s; tearing the world down (netd{} stopped, namespaces removed)",
        started.elapsed().as_secs_f64(),
        if with_store { " and etcd" } else { "" }
    );
    drop(world);
    result
}

fn print_host(netd: &NetdHost, origin: &str) -> Result<()> {
    let status = netd.json(&["status"])?;
    println!(
        "   host {}  {:<11}  subnet {}{origin}  key {}  wg {} MTU {}",
        netd.host.name,
        netd.host.ip,
        netd.subnet,
        short_key(&netd.public_key),
        status["overlay"]["interface"].as_str().unwrap_or("?"),
        status["overlay"]["mtu"],
    );
    Ok(())
}

/// Containers, cross-host traffic and the published port: the same in both modes.
fn containers_and_traffic(
    world: &World,
    netds: &[NetdHost],
    steps: &mut Steps,
    failures: &mut Vec<String>,
) -> Result<Vec<Attached>> {
    steps.next("two containers per host, attached through netd (`netd attach`)");
    let attached = steps::attach_containers(netds)?;
    steps.next("traffic between containers on different hosts, through WireGuard");
    steps::cross_host_traffic(world, &attached, failures)?;
    steps.next("a published port reached from another host, a container and host a itself");
    steps::published_port(netds, &attached, failures)?;
    Ok(attached)
}

async fn run_cluster(
    world: &World,
    dir: &Path,
    netds: &mut Vec<NetdHost>,
    failures: &mut Vec<String>,
) -> Result<()> {
    let mut steps = Steps::new();
    steps.next("etcd, started by the demo in the fabric namespace");
    let etcd = Etcd::start(world).await?;
    println!("   etcd {} (Debian's etcd-server)", etcd.endpoint());

    let mut hosts = Vec::new();
    for name in HOSTS {
        hosts.push(world.host(name).await?);
    }
    steps.next("the cluster's range, written once to the store");
    for host in &hosts {
        netds.push(cluster::prepare(host, &dir.join(&host.name))?);
    }
    cluster::init(&netds[0])?;

    steps.next("three hosts join: `netd run --store …`, no subnet and no peer in their netd.toml");
    for netd in netds.iter_mut() {
        cluster::start(netd)?;
    }
    for netd in netds.iter_mut() {
        let name = netd.host.name.clone();
        netd.subnet = cluster::hosts(netd)?
            .into_iter()
            .find(|h| h.name == name)
            .map(|h| h.subnet)
            .unwrap_or_else(|| "(not in the store)".into());
        print_host(netd, " (reserved in etcd)")?;
    }
    let took = cluster::wait_peers(netds, Duration::from_secs(20))?;
    println!(
        "   each host lists the other two as peers {:.1} s later, from the store",
        took.as_secs_f64()
    );

    let attached = containers_and_traffic(world, netds, &mut steps, failures)?;

    steps.next("the cluster and the peers, as you would type it");
    steps::show(&netds[0], &["cluster", "hosts"], failures)?;
    for netd in netds.iter() {
        steps::show(netd, &["peers"], failures)?;
    }

    steps.next("host c's netd killed (kill -9): shown dead on the others");
    let c_subnet = netds[2].subnet.clone();
    netds[2].signal(libc::SIGKILL)?;
    let killed = Instant::now();
    for netd in &netds[..2] {
        let (_, took) = cluster::wait_state(netd, "c", false, killed, DEAD_BOUND)?;
        println!(
            "   host {}: c shown dead {:.1} s after the kill (its liveness lease: 10 s)",
            netd.host.name,
            took.as_secs_f64()
        );
    }
    steps::show(&netds[0], &["cluster", "hosts"], failures)?;
    let kept = netds[0].peers()?.len();
    println!("   host a still has {kept} peers: a dead host keeps its peer and route (a flapping lease never cuts traffic)");

    steps.next("host c's netd restarted: same subnet, traffic back");
    let restarted = Instant::now();
    cluster::start(&mut netds[2])?;
    let (c, took) = cluster::wait_state(&netds[0], "c", true, restarted, DEAD_BOUND)?;
    println!(
        "   host a shows c alive {:.1} s after the restart, subnet {} ({})",
        took.as_secs_f64(),
        c.subnet,
        if c.subnet == c_subnet {
            "the same".to_string()
        } else {
            failures.push(format!("c came back on {} instead of {c_subnet}", c.subnet));
            format!("was {c_subnet}: CHANGED")
        }
    );
    // The WireGuard sessions a and b had with c died with c's netd: their
    // first packets to c go out on them until WireGuard makes a new
    // handshake, so each pair's time to answer again is measured (all at
    // once, from the restart), not assumed.
    let pairs = [(0, 5), (4, 1), (3, 4)];
    let back: Vec<Option<Duration>> = std::thread::scope(|scope| {
        let waits: Vec<_> = pairs
            .iter()
            .map(|&(from, to)| {
                let (from, to) = (&attached[from], &attached[to]);
                scope.spawn(move || steps::wait_ping(from, to, restarted, RECOVERY_BOUND))
            })
            .collect();
        waits
            .into_iter()
            .map(|w| w.join().expect("ping thread"))
            .collect::<Result<_>>()
    })?;
    for (port, (&(from, to), took)) in (7101..).zip(pairs.iter().zip(back)) {
        let (from, to) = (&attached[from], &attached[to]);
        let ok = match took {
            Some(took) => {
                let lead = format!("   back {:>4.1} s after the restart: ", took.as_secs_f64());
                steps::check_pair(from, to, port, true, &lead)?
            }
            None => false,
        };
        if !ok {
            failures.push(format!(
                "{} → {} not back within {RECOVERY_BOUND:?} of the restart",
                from.label(),
                to.label()
            ));
        }
    }
    drop(etcd);
    Ok(())
}

async fn run_static(
    world: &World,
    dir: &Path,
    netds: &mut Vec<NetdHost>,
    failures: &mut Vec<String>,
) -> Result<()> {
    let mut steps = Steps::new();
    steps.next("three hosts, each running netd with the WireGuard overlay");
    println!("   cluster range {STATIC_RANGE}, one /24 per host; keys from `netd pubkey`");
    for (i, name) in HOSTS.iter().enumerate() {
        let host = world.host(name).await?;
        let subnet = format!("10.66.{}.0/24", i + 1);
        let mut netd = NetdHost::prepare(&host, &dir.join(name), &subnet)?;
        netd.log_filter("info");
        netds.push(netd);
    }
    NetdHost::write_mesh_configs(netds, STATIC_RANGE, "")?;
    for netd in netds.iter_mut() {
        netd.start()?;
        print_host(netd, "")?;
    }
    println!(
        "   static peers: each host's netd.toml lists the other two ([[overlay.peer]]: key, endpoint, subnet)"
    );
    containers_and_traffic(world, netds, &mut steps, failures)?;
    steps.next("netd peers, per host, as you would type it");
    for netd in netds.iter() {
        steps::show(netd, &["peers"], failures)?;
    }
    Ok(())
}
