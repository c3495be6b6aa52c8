//! A quick throughput look (not the benchmark): iperf3 between two hosts,
//! over the raw fabric and over the overlay, 5 s each. Run it optimised:
//!
//! ```text
//! cargo test --release --test overlay_throughput -- --ignored --nocapture
//! ```

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use overlay_support::TwoHosts;
use world::{require_root, run_in, Host, World};

mod overlay_support;

/// Gbit/s received by an iperf3 server on `server_ip` inside `server`.
fn iperf(world: &World, server: &Host, server_ip: IpAddr, client: &Host, streams: u32) -> f64 {
    let mut command = Command::new("iperf3");
    command
        .args(["-s", "-1", "-B", &server_ip.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    world.spawn(&server.netns, command).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = run_in(
        &client.netns,
        "iperf3",
        &[
            "-c",
            &server_ip.to_string(),
            "-t",
            "5",
            "-P",
            &streams.to_string(),
            "-J",
        ],
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.success, "iperf3: {}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 reports received bits per second");
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "  {streams} stream(s) to {server_ip}: {:.2} Gbit/s, {retransmits} retransmits",
        bits / 1e9
    );
    bits / 1e9
}

#[tokio::test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
async fn iperf3_over_the_fabric_and_over_the_overlay() {
    require_root!();
    let world = World::new().await.unwrap();
    let hosts = TwoHosts::new(&world).await;
    hosts.peer_both_ways();
    let TwoHosts { a, b, da, db } = &hosts;

    eprintln!("raw fabric (veth + bridge, MTU 1500):");
    let raw = iperf(&world, a, a.ip_addr(), b, 1);
    eprintln!("overlay (weft-wg0, MTU {}):", da.mtu());
    let one = iperf(&world, a, "10.99.0.1".parse().unwrap(), b, 1);
    let two = iperf(&world, a, "10.99.0.1".parse().unwrap(), b, 2);
    let stats = da.peer_stats(&db.public_key()).unwrap();
    eprintln!(
        "overlay/raw: {:.1}% (1 stream); drops at the receiver: {:?}",
        one / raw * 100.0,
        stats.drops.nonzero()
    );
    for host in [&a, &b] {
        eprintln!("{}: {}", host.name, loss_counters(host));
    }
    assert!(raw > 0.0 && one > 0.0 && two > 0.0);
}

/// Where packets were lost inside a host: the TUN link's drop counters and
/// the UDP receive-buffer overflows of its namespace.
fn loss_counters(host: &Host) -> String {
    let link = world::ip_json(&host.netns, &["-s", "link", "show", "weft-wg0"]).unwrap();
    let stats = &link[0]["stats64"];
    let snmp = run_in(
        &host.netns,
        "cat",
        &["/proc/net/snmp"],
        Duration::from_secs(5),
    )
    .unwrap()
    .stdout;
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let rcvbuf_errors = match udp.as_slice() {
        [names, values] => names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RcvbufErrors")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    format!(
        "weft-wg0 rx dropped {}, tx dropped {}; UDP RcvbufErrors {rcvbuf_errors}",
        stats["rx"]["dropped"], stats["tx"]["dropped"]
    )
}
