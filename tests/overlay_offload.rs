//! The overlay moves super-packets, not MTU-sized ones: the kernel hands the
//! sender's device TCP super-segments (TSO), the encrypted datagrams cross
//! the fabric as UDP GSO packets, and the receiver's device writes coalesced
//! super-packets (GRO). A regression to one packet per system call shows
//! here as average sizes near the MTU, long before a benchmark would notice.

use std::time::Duration;

use overlay::{DeviceConfig, PrivateKey};
use overlay_support::{device_with, peer_of, TwoHosts};
use plumb::Netns;
use world::{ip_json, require_root, tcp_bulk, World};

mod overlay_support;

/// (bytes, packets) a link counted in one direction ("rx" or "tx").
fn link_counts(netns: &Netns, link: &str, dir: &str) -> (u64, u64) {
    let v = ip_json(netns, &["-s", "link", "show", link]).unwrap();
    let s = &v[0]["stats64"][dir];
    (s["bytes"].as_u64().unwrap(), s["packets"].as_u64().unwrap())
}

fn average(before: (u64, u64), after: (u64, u64)) -> u64 {
    let (bytes, packets) = (after.0 - before.0, after.1 - before.1);
    assert!(packets > 0, "no packets counted");
    bytes / packets
}

#[tokio::test]
async fn bulk_tcp_crosses_as_super_packets_at_every_step() {
    require_root!();
    let world = World::new().await.unwrap();
    let hosts = TwoHosts::new(&world).await;
    hosts.peer_both_ways();
    let TwoHosts { a, b, da, db } = &hosts;
    tcp_bulk(
        &a.netns,
        "10.99.0.1:0".parse().unwrap(),
        &b.netns,
        1 << 20,
        Duration::from_secs(20),
    )
    .unwrap();

    // b sends 64 MiB to a.
    let sent_before = link_counts(&b.netns, "weft-wg0", "tx");
    let wire_before = link_counts(world.fabric(), "h-b", "rx");
    let written_before = link_counts(&a.netns, "weft-wg0", "rx");
    tcp_bulk(
        &a.netns,
        "10.99.0.1:0".parse().unwrap(),
        &b.netns,
        64 << 20,
        Duration::from_secs(60),
    )
    .unwrap();
    // What b's kernel handed weft (the link's tx: packets leaving the host
    // into the TUN), what b's port on the fabric bridge received (GSO
    // datagrams count once each), and what weft wrote into a's kernel.
    let handed = average(sent_before, link_counts(&b.netns, "weft-wg0", "tx"));
    let wire = average(wire_before, link_counts(world.fabric(), "h-b", "rx"));
    let written = average(written_before, link_counts(&a.netns, "weft-wg0", "rx"));
    eprintln!("average packet: TSO {handed} B, fabric {wire} B, GRO {written} B");
    // ACKs and the odd lone segment pull the averages down; MTU-sized
    // packets would put them near 1420.
    assert!(handed > 8000, "no TSO: {handed} B per TUN read");
    assert!(wire > 8000, "no UDP GSO on the fabric: {wire} B per packet");
    assert!(written > 8000, "no GRO into the TUN: {written} B per write");
    let stats = da.peer_stats(&db.public_key()).unwrap();
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops.nonzero());
}

/// A burst of UDP datagrams arrives whole and in its boundaries: the
/// receiver's device writes them as UDP super-packets (USO, where the kernel
/// takes them), which the kernel cuts again for the socket.
#[tokio::test]
async fn a_udp_burst_arrives_datagram_by_datagram() {
    require_root!();
    let world = World::new().await.unwrap();
    let hosts = TwoHosts::new(&world).await;
    hosts.peer_both_ways();
    let TwoHosts { a, b, .. } = &hosts;
    assert!(world::ping(&b.netns, "10.99.0.1".parse().unwrap()).unwrap());

    let receiver = a
        .netns
        .run(|| std::net::UdpSocket::bind("10.99.0.1:0"))
        .unwrap()
        .unwrap();
    force_receive_buffer(&receiver, 8 << 20);
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let sender = b
        .netns
        .run(|| std::net::UdpSocket::bind("10.99.0.2:0"))
        .unwrap()
        .unwrap();
    const COUNT: u32 = 300;
    const SIZE: usize = 1200;
    let written_before = link_counts(&a.netns, "weft-wg0", "rx");
    for i in 0..COUNT {
        let mut d = vec![(i % 251) as u8; SIZE];
        d[..4].copy_from_slice(&i.to_be_bytes());
        sender.send_to(&d, to).unwrap();
    }
    let mut buf = vec![0u8; 65536];
    for i in 0..COUNT {
        let (n, _) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {COUNT}: {e}"));
        assert_eq!(n, SIZE, "datagram {i} lost its boundaries");
        assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i, "order");
        assert!(buf[4..n].iter().all(|b| *b == (i % 251) as u8), "content");
    }
    let writes = link_counts(&a.netns, "weft-wg0", "rx").1 - written_before.1;
    eprintln!("{COUNT} datagrams in {writes} TUN writes");
    // Back-to-back datagrams share receive batches: some must have merged
    // (typically 300 datagrams take under ten writes).
    assert!(writes < u64::from(COUNT), "no UDP merging: {writes} writes");
}

/// SO_RCVBUFFORCE (root), so a burst waits in the socket instead of dropping.
fn force_receive_buffer(socket: &std::net::UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: the option value is a c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// An underlay smaller than the overlay was configured for: the kernel
/// refuses GSO sends whose datagrams exceed the path MTU (EMSGSIZE); the
/// device sends those datagrams one by one (the kernel fragments them) and
/// the traffic still arrives. (Before this was handled, the transfer stalled
/// after its first window: every GSO message was dropped.)
#[tokio::test]
async fn an_underlay_smaller_than_configured_still_carries_bulk_tcp() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let mut devices = Vec::new();
    for (host, cidr) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
        let mut config = DeviceConfig::new(PrivateKey::generate().unwrap());
        // 1420 + 32 bytes of WireGuard + 28 of UDP/IPv4: more than b's 1400.
        config.mtu = Some(1420);
        devices.push(device_with(host, cidr, config).await);
    }
    let (da, db) = (&devices[0], &devices[1]);
    da.set_peer(peer_of(db, &b, "10.99.0.2/32")).unwrap();
    db.set_peer(peer_of(da, &a, "10.99.0.1/32")).unwrap();
    let out = world::run_in(
        &b.netns,
        "ip",
        &["link", "set", "eth0", "mtu", "1400"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    // b sends full-sized datagrams in bulk: GSO first, refused, then singles.
    tcp_bulk(
        &a.netns,
        "10.99.0.1:0".parse().unwrap(),
        &b.netns,
        4 << 20,
        Duration::from_secs(30),
    )
    .unwrap();
    let peer = db.peer_stats(&da.public_key()).unwrap();
    assert_eq!(peer.drops.total(), 0, "{:?}", peer.drops.nonzero());
}
