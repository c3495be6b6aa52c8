//! The WireGuard overlay between two simulated hosts: traffic crosses it,
//! the fabric sees only WireGuard, and peers, allowed IPs and the handshake
//! guard hold under change, forgery and flood.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay::{Device, DropReason, PeerConfig, PrivateKey, DEFAULT_PORT};
use overlay_support::{device_on, initiations, peer_of, stranger_initiations};
use plumb::Netlink;
use world::{
    classify_frame, contains, ip_json, ping, require_root, tcp_exchange, Capture, Frame, Host,
    World,
};

mod overlay_support;

const A_OVERLAY: &str = "10.99.0.1";
const B_OVERLAY: &str = "10.99.0.2";

/// Two hosts, each with an overlay device whose peer is the other.
struct Pair {
    world: World,
    a: Host,
    b: Host,
    da: Device,
    db: Device,
}

impl Pair {
    fn peer_b(&self) -> PeerConfig {
        peer_of(&self.db, &self.b, &format!("{B_OVERLAY}/32"))
    }
    fn peer_a(&self) -> PeerConfig {
        peer_of(&self.da, &self.a, &format!("{A_OVERLAY}/32"))
    }
}

async fn pair() -> Pair {
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let da = device_on(&a, &format!("{A_OVERLAY}/24")).await;
    let db = device_on(&b, &format!("{B_OVERLAY}/24")).await;
    let pair = Pair {
        world,
        a,
        b,
        da,
        db,
    };
    pair.da.set_peer(pair.peer_b()).unwrap();
    pair.db.set_peer(pair.peer_a()).unwrap();
    pair
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn ping_and_tcp_cross_the_overlay_and_the_fabric_sees_only_wireguard() {
    require_root!();
    let p = pair().await;
    // MTU: the underlay's 1500 minus 80.
    let link = ip_json(&p.a.netns, &["link", "show", "weft-wg0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1420);
    // A deep enough kernel queue that bursts wait instead of being dropped.
    assert_eq!(link[0]["txqlen"], 5000);
    assert_eq!(p.da.mtu(), 1420);

    let capture = Capture::start(p.world.fabric(), "h-a").unwrap();
    assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
    assert!(ping(&p.b.netns, ip(A_OVERLAY)).unwrap());
    tcp_exchange(&p.b.netns, (ip(B_OVERLAY), 7000).into(), &p.a.netns).unwrap();
    let frames = capture.stop();

    let mut wireguard = 0;
    for frame in &frames {
        match classify_frame(frame) {
            Frame::WireGuard => wireguard += 1,
            Frame::Neighbour => {}
            Frame::Store => panic!("the fabric carried etcd traffic in a world without etcd"),
            Frame::Other(what) => panic!("the fabric carried {what} outside WireGuard"),
        }
        assert!(
            !contains(frame, b"weft test payload"),
            "plaintext on the fabric"
        );
    }
    // Handshake, 2 pings with replies, a TCP exchange: well over 10 datagrams.
    assert!(wireguard >= 10, "only {wireguard} WireGuard frames seen");

    let stats = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert!(stats.rx_packets >= 3 && stats.tx_packets >= 3, "{stats:?}");
    assert!(stats.rx_bytes > 0 && stats.tx_bytes > 0);
    assert!(stats.last_handshake.is_some());
    assert_eq!(
        stats.endpoint,
        Some(SocketAddr::new(p.b.ip_addr(), DEFAULT_PORT))
    );
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops.nonzero());
}

#[tokio::test]
async fn ipv6_inside_and_outside_the_overlay() {
    require_root!();
    let p = pair().await;
    for (host, cidr) in [(&p.a, "fd99::1/64"), (&p.b, "fd99::2/64")] {
        let nl = Netlink::open(&host.netns).await.unwrap();
        nl.add_address("weft-wg0", cidr.parse().unwrap(), true)
            .await
            .unwrap();
    }
    // Each side reaches the other over the IPv6 underlay, for both families inside.
    let mut b = p.peer_b();
    b.endpoint = Some(SocketAddr::new(IpAddr::V6(p.b.ip6), p.db.listen_port()));
    b.allowed_ips.push("fd99::2/128".parse().unwrap());
    p.da.set_peer(b).unwrap();
    let mut a = p.peer_a();
    a.endpoint = Some(SocketAddr::new(IpAddr::V6(p.a.ip6), p.da.listen_port()));
    a.allowed_ips.push("fd99::1/128".parse().unwrap());
    p.db.set_peer(a).unwrap();

    assert!(world::ping6(&p.a.netns, "fd99::2").unwrap());
    assert!(ping(&p.b.netns, ip(A_OVERLAY)).unwrap());
    tcp_exchange(&p.b.netns, (ip("fd99::2"), 7004).into(), &p.a.netns).unwrap();
    let stats = p.db.peer_stats(&p.da.public_key()).unwrap();
    assert_eq!(
        stats.endpoint,
        Some(SocketAddr::new(IpAddr::V6(p.a.ip6), p.da.listen_port()))
    );
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops.nonzero());
}

#[tokio::test]
async fn a_removed_peer_is_unreachable_and_can_come_back() {
    require_root!();
    let p = pair().await;
    assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());

    p.da.remove_peer(&p.db.public_key()).unwrap();
    assert!(p.da.peer_stats(&p.db.public_key()).is_none());
    assert!(!ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
    assert!(!ping(&p.b.netns, ip(A_OVERLAY)).unwrap());
    let drops = p.da.stats().drops;
    // a has no route to b any more, and b's data (old session) and fresh
    // handshakes (unknown static key) find no peer.
    assert!(drops.get(DropReason::NoRoute) > 0, "{:?}", drops.nonzero());
    assert!(
        drops.get(DropReason::UnknownIndex) + drops.get(DropReason::UnknownKey) > 0,
        "{:?}",
        drops.nonzero()
    );
    assert!(p.da.remove_peer(&p.db.public_key()).is_err());

    // Added again while b keeps trying: the overlay heals.
    p.da.set_peer(p.peer_b()).unwrap();
    assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
    tcp_exchange(&p.a.netns, (ip(A_OVERLAY), 7001).into(), &p.b.netns).unwrap();
}

#[tokio::test]
async fn a_private_key_changed_in_place_handshakes_again_and_the_old_key_is_refused() {
    require_root!();
    let p = pair().await;
    assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
    let before = p.da.peer_stats(&p.db.public_key()).unwrap();

    // A key that is a peer's is refused, and nothing changes.
    let own = PrivateKey::generate().unwrap();
    let kept = p.da.public_key();
    p.da.set_peer(PeerConfig::new(own.public_key())).unwrap();
    assert!(p.da.set_private_key(own.clone()).is_err());
    assert_eq!(p.da.public_key(), kept);
    p.da.remove_peer(&own.public_key()).unwrap();

    // Rotate twice; b follows each time as netd does: the peer under the
    // old key replaced, then a handshake sent at once.
    let first = PrivateKey::generate().unwrap();
    for key in [first.clone(), PrivateKey::generate().unwrap()] {
        let old = p.da.public_key();
        p.da.set_private_key(key.clone()).unwrap();
        assert_eq!(p.da.public_key(), key.public_key());
        p.db.remove_peer(&old).unwrap();
        p.db.set_peer(p.peer_a()).unwrap();
        // `false` is not a failure: b's own traffic to a (the last
        // exchange's closing segments) may have started the handshake first.
        p.db.initiate_handshake(&key.public_key()).unwrap();
        assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
        tcp_exchange(&p.a.netns, (ip(A_OVERLAY), 7002).into(), &p.b.netns).unwrap();
    }
    // a's peer entry for b kept its counters and endpoint through both.
    let after = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert!(after.rx_packets > before.rx_packets);
    assert_eq!(after.endpoint, before.endpoint);
    // b's initiation to the new key was counted and answered.
    let a_on_b = p.db.peer_stats(&p.da.public_key()).unwrap().handshakes;
    assert!(a_on_b.initiations >= 1, "{a_on_b:?}");
    assert_eq!(a_on_b.unanswered, 0, "{a_on_b:?}");

    // Initiations under the first rotated key: b knows no such peer any more.
    let unknown = p.db.stats().drops.get(DropReason::UnknownKey);
    let socket =
        p.a.netns
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
    let to: SocketAddr = (p.b.ip_addr(), p.db.listen_port()).into();
    for message in initiations(&first, p.db.public_key(), 3) {
        socket.send_to(&message, to).unwrap();
    }
    let start = Instant::now();
    while p.db.stats().drops.get(DropReason::UnknownKey) < unknown + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            p.db.stats().drops.nonzero()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_disallowed_inner_source_is_dropped_and_counted() {
    require_root!();
    let p = pair().await;
    // b owns an address that a does not accept from it.
    let nl = Netlink::open(&p.b.netns).await.unwrap();
    nl.add_address("weft-wg0", "10.77.0.2/32".parse().unwrap(), false)
        .await
        .unwrap();
    assert!(ping(&p.b.netns, ip(A_OVERLAY)).unwrap());
    let before = p.da.peer_stats(&p.db.public_key()).unwrap();

    let receiver =
        p.a.netns
            .run(|| UdpSocket::bind((ip(A_OVERLAY), 7777)))
            .unwrap()
            .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let forged =
        p.b.netns
            .run(|| UdpSocket::bind((ip("10.77.0.2"), 0)))
            .unwrap()
            .unwrap();
    for _ in 0..5 {
        forged
            .send_to(b"not from an allowed source", (ip(A_OVERLAY), 7777))
            .unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        receiver.recv_from(&mut buf).is_err(),
        "a packet with a disallowed inner source was delivered"
    );
    let after = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert_eq!(
        after.drops.get(DropReason::DisallowedSource),
        5,
        "{:?}",
        after.drops.nonzero()
    );
    assert_eq!(after.rx_packets, before.rx_packets);

    // The same datagram from b's allowed address arrives.
    let allowed =
        p.b.netns
            .run(|| UdpSocket::bind((ip(B_OVERLAY), 0)))
            .unwrap()
            .unwrap();
    allowed
        .send_to(b"from an allowed source", (ip(A_OVERLAY), 7777))
        .unwrap();
    let (n, from) = receiver.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from an allowed source");
    assert_eq!(from.ip(), ip(B_OVERLAY));
}

#[tokio::test]
async fn an_endpoint_is_learned_from_authenticated_traffic() {
    require_root!();
    let p = pair().await;
    let mut unknown = p.peer_b();
    unknown.endpoint = None;
    p.da.remove_peer(&unknown.public_key).unwrap();
    p.da.set_peer(unknown).unwrap();
    // a cannot reach b before b has spoken.
    assert!(!ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
    let stats = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert!(stats.drops.get(DropReason::NoEndpoint) > 0);
    assert_eq!(stats.endpoint, None);

    assert!(ping(&p.b.netns, ip(A_OVERLAY)).unwrap());
    let stats = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert_eq!(
        stats.endpoint,
        Some(SocketAddr::new(p.b.ip_addr(), p.db.listen_port()))
    );
    assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
}

#[tokio::test]
async fn a_handshake_flood_from_a_stranger_does_not_stop_the_session() {
    require_root!();
    let p = pair().await;
    let x = p.world.host("x").await.unwrap();
    assert!(ping(&p.b.netns, ip(A_OVERLAY)).unwrap());

    // Valid initiations (right mac1) from a key a has never heard of.
    const DISTINCT: usize = 50;
    const FLOOD: usize = 2000;
    let initiations = stranger_initiations(p.da.public_key(), DISTINCT);
    let socket = x.netns.run(|| UdpSocket::bind((x.ip, 0))).unwrap().unwrap();
    let target = SocketAddr::new(p.a.ip_addr(), p.da.listen_port());
    let stop = Arc::new(AtomicBool::new(false));
    let cookies = {
        let socket = socket.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut cookies = 0;
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    if n == 64 && buf[0] == 3 {
                        cookies += 1;
                    }
                }
            }
            cookies
        })
    };
    let flood = std::thread::spawn(move || {
        for i in 0..FLOOD {
            socket.send_to(&initiations[i % DISTINCT], target).unwrap();
            if i % 200 == 199 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    // The established session carries traffic during the flood and after it.
    tcp_exchange(&p.a.netns, (ip(A_OVERLAY), 7002).into(), &p.b.netns).unwrap();
    flood.join().unwrap();
    assert!(ping(&p.b.netns, ip(A_OVERLAY)).unwrap());
    tcp_exchange(&p.b.netns, (ip(B_OVERLAY), 7003).into(), &p.a.netns).unwrap();

    // Every flood packet was either refused as a stranger or answered with a cookie.
    let deadline = Instant::now() + Duration::from_secs(10);
    let drops = loop {
        let drops = p.da.stats().drops;
        let accounted = drops.get(DropReason::UnknownKey) + drops.get(DropReason::RateLimited);
        if accounted >= FLOOD as u64 || Instant::now() > deadline {
            break drops;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    let cookies = cookies.join().unwrap();
    assert_eq!(
        drops.get(DropReason::UnknownKey) + drops.get(DropReason::RateLimited),
        FLOOD as u64,
        "{:?}",
        drops.nonzero()
    );
    assert!(drops.get(DropReason::RateLimited) > 0, "never under load");
    assert!(cookies > 0, "the stranger got no cookie replies");
    let peer = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert_eq!(peer.drops.total(), 0, "{:?}", peer.drops.nonzero());
}

#[tokio::test]
async fn a_bulk_tcp_transfer_arrives_intact() {
    require_root!();
    let p = pair().await;
    const SIZE: usize = 50 << 20;
    let listener =
        p.a.netns
            .run(|| TcpListener::bind((ip(A_OVERLAY), 7100)))
            .unwrap()
            .unwrap();
    let server = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut hash) = (0u64, Fnv::new());
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
        let (total, digest) = (total, hash.0);
        conn.write_all(&total.to_le_bytes())?;
        conn.write_all(&digest.to_le_bytes())?;
        Ok((total, digest))
    });
    let target: SocketAddr = (ip(A_OVERLAY), 7100).into();
    let mut stream =
        p.b.netns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .unwrap()
            .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut source = PseudoRandom(0x5eed_cafe_f00d_d00d);
    let mut expected = Fnv::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut sent = 0;
    while sent < SIZE {
        let n = chunk.len().min(SIZE - sent);
        source.fill(&mut chunk[..n]);
        expected.update(&chunk[..n]);
        stream.write_all(&chunk[..n]).unwrap();
        sent += n;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "transfer too slow"
        );
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = [0u8; 16];
    stream.read_exact(&mut answer).unwrap();
    let (total, digest) = server.join().unwrap().unwrap();
    assert_eq!(total, SIZE as u64);
    assert_eq!(digest, expected.0, "the bytes arrived changed");
    assert_eq!(u64::from_le_bytes(answer[..8].try_into().unwrap()), total);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "50 MB over the overlay in {secs:.2} s ({:.0} Mbit/s, debug build)",
        SIZE as f64 * 8.0 / secs / 1e6
    );
    let stats = p.da.peer_stats(&p.db.public_key()).unwrap();
    assert!(stats.rx_bytes >= SIZE as u64, "{stats:?}");
}

#[tokio::test]
async fn peer_changes_are_checked_before_they_apply() {
    require_root!();
    let p = pair().await;
    // Allowed IPs already routed to b cannot go to another peer too.
    let mut other = PeerConfig::new(PrivateKey::generate().unwrap().public_key());
    other.allowed_ips = vec![format!("{B_OVERLAY}/32").parse().unwrap()];
    let err = p.da.set_peer(other.clone()).unwrap_err().to_string();
    assert!(err.contains("10.99.0.2/32 already route to peer"), "{err}");
    assert!(p.da.peer_stats(&other.public_key).is_none());
    // Our own key is not a peer.
    let err =
        p.da.set_peer(PeerConfig::new(p.da.public_key()))
            .unwrap_err()
            .to_string();
    assert!(err.contains("own public key"), "{err}");
    // Changing b's allowed IPs in place keeps the session and re-routes.
    let mut wider = p.peer_b();
    wider.allowed_ips = vec!["10.99.0.0/24".parse().unwrap()];
    p.da.set_peer(wider).unwrap();
    assert!(ping(&p.a.netns, ip(B_OVERLAY)).unwrap());
    assert_eq!(
        p.da.peers()[0].allowed_ips,
        vec!["10.99.0.0/24".parse::<ipnetwork::IpNetwork>().unwrap()]
    );
}

/// FNV-1a, 64 bits: enough to notice a changed byte.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

struct PseudoRandom(u64);

impl PseudoRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}
