//! The overlay's MTU: packets larger than the overlay carries get ICMP
//! "fragmentation needed" (IPv4) or "packet too big" (IPv6) back to their
//! sender, whose kernel then remembers the path MTU, and TCP keeps flowing.
//!
//! Oversized packets reach the device when its link's MTU is raised past the
//! overlay MTU the device was made with (an admin's `ip link set … mtu`):
//! the kernel then hands over packets whose encryption would not fit the underlay.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use overlay::{Device, DropReason, PeerConfig};
use plumb::Netlink;
use world::{ip_json, require_root, run_in, tcp_bulk, Host, World};

mod overlay_support;

/// A device holding `v4` and `v6` on its TUN link.
async fn device_on(host: &Host, v4: &str, v6: &str) -> Device {
    let device = overlay_support::device_on(host, v4).await;
    Netlink::open(&host.netns)
        .await
        .unwrap()
        .add_address(device.name(), v6.parse().unwrap(), true)
        .await
        .unwrap();
    device
}

fn peer(device: &Device, host: &Host, allowed: &[&str]) -> PeerConfig {
    let mut p = PeerConfig::new(device.public_key());
    p.endpoint = Some(SocketAddr::new(host.ip_addr(), device.listen_port()));
    p.allowed_ips = allowed.iter().map(|a| a.parse().unwrap()).collect();
    p
}

/// `ip route get` in `host`: the kernel's route to `to`, with any learned MTU.
fn route_mtu(host: &Host, to: &str) -> Option<u64> {
    let route = ip_json(&host.netns, &["route", "get", to]).unwrap();
    route[0]["metrics"]
        .as_array()
        .and_then(|m| m.iter().find_map(|x| x["mtu"].as_u64()))
}

#[tokio::test]
async fn oversized_packets_get_icmp_too_big_and_tcp_adapts() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let da = device_on(&a, "10.99.0.1/24", "fd99::1/64").await;
    let db = device_on(&b, "10.99.0.2/24", "fd99::2/64").await;
    da.set_peer(peer(
        &db,
        &b,
        &[
            "10.99.0.2/31",
            "10.99.0.12/32",
            "fd99::2/127",
            "fd99::12/128",
        ],
    ))
    .unwrap();
    db.set_peer(peer(&da, &a, &["10.99.0.1/32", "fd99::1/128"]))
        .unwrap();
    assert_eq!(da.mtu(), 1420);

    // Packets that fit cross, and nothing is answered.
    let fits = run_in(
        &a.netns,
        "ping",
        &[
            "-4",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1392",
            "10.99.0.2",
        ],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(fits.success, "{}{}", fits.stdout, fits.stderr);
    assert_eq!(route_mtu(&a, "10.99.0.2"), None);

    // The link now takes 1500-byte packets; the overlay still carries 1420.
    let out = run_in(
        &a.netns,
        "ip",
        &["link", "set", "weft-wg0", "mtu", "1500"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);

    // IPv4 with DF: "fragmentation needed", MTU 1420, which the kernel keeps.
    let big = run_in(
        &a.netns,
        "ping",
        &[
            "-4",
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "1450",
            "10.99.0.2",
        ],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!big.success, "a 1478-byte packet crossed a 1420 overlay");
    let said = format!("{}{}", big.stdout, big.stderr);
    assert!(said.contains("1420"), "ping saw no MTU: {said}");
    assert_eq!(route_mtu(&a, "10.99.0.2"), Some(1420));

    // IPv6: "packet too big".
    let big6 = run_in(
        &a.netns,
        "ping",
        &[
            "-6", "-c", "1", "-W", "2", "-M", "do", "-s", "1450", "fd99::2",
        ],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!big6.success);
    let said = format!("{}{}", big6.stdout, big6.stderr);
    assert!(said.contains("1420"), "ping -6 saw no MTU: {said}");
    assert_eq!(route_mtu(&a, "fd99::2"), Some(1420));

    let drops = da.peer_stats(&db.public_key()).unwrap().drops;
    assert!(drops.get(DropReason::TooBig) >= 2, "{:?}", drops.nonzero());

    // TCP from a to addresses of b that ping never touched, with b's link
    // raised too (so b offers a 1460-byte MSS): a's first full segments meet
    // the limit, a learns 1420, and everything arrives intact.
    let before = drops.get(DropReason::TooBig);
    let out = run_in(
        &b.netns,
        "ip",
        &["link", "set", "weft-wg0", "mtu", "1500"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    let nl = Netlink::open(&b.netns).await.unwrap();
    nl.add_address("weft-wg0", "10.99.0.12/24".parse().unwrap(), false)
        .await
        .unwrap();
    nl.add_address("weft-wg0", "fd99::12/64".parse().unwrap(), true)
        .await
        .unwrap();
    for server in ["10.99.0.12", "fd99::12"] {
        assert_eq!(route_mtu(&a, server), None);
        let addr = SocketAddr::new(server.parse::<IpAddr>().unwrap(), 0);
        tcp_bulk(&b.netns, addr, &a.netns, 4 << 20, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("TCP to {server}: {e:#}"));
        assert_eq!(route_mtu(&a, server), Some(1420), "{server}");
    }
    let drops = da.peer_stats(&db.public_key()).unwrap().drops;
    assert!(
        drops.get(DropReason::TooBig) > before,
        "{:?}",
        drops.nonzero()
    );
}
