//! The overlay's arrival counters add up: every datagram that reaches a
//! device's UDP socket is either delivered, taken by a session (handshakes,
//! keepalives), or dropped under exactly one reason — zero-length datagrams
//! included — and each reason counts exactly what was sent for it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use overlay::{ArrivalCounts, Device, DropReason};
use overlay_support::{device_on, peer_of, stranger_initiations};
use plumb::Netlink;
use world::{ping, require_root, World};

mod overlay_support;

const A_OVERLAY: &str = "10.99.0.1";
const B_OVERLAY: &str = "10.99.0.2";
/// An address b holds but a does not accept from b.
const B_DISALLOWED: &str = "10.77.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A WireGuard message of `kind` and `len` bytes, the rest filled with a
/// pattern (`seed` varies it); no valid MAC, no valid session index.
fn junk_message(kind: u8, len: usize, seed: u8) -> Vec<u8> {
    let mut m: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    if len >= 4 {
        m[..4].copy_from_slice(&[kind, 0, 0, 0]);
    }
    m
}

/// Waits until no datagram is in flight in a's rx path: the arrivals count
/// has not moved for a while and every arrival has its outcome.
fn settled(device: &Device, at_least: u64) -> ArrivalCounts {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = device.stats().arrivals;
    let mut still_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = device.stats().arrivals;
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if now.datagrams >= at_least && still_since.elapsed() >= Duration::from_millis(300) {
            return now;
        }
        if Instant::now() > deadline {
            return now;
        }
    }
}

#[tokio::test]
async fn every_arriving_datagram_is_delivered_or_dropped_under_one_reason() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let x = world.host("x").await.unwrap();
    let da = device_on(&a, &format!("{A_OVERLAY}/24")).await;
    let db = device_on(&b, &format!("{B_OVERLAY}/24")).await;
    da.set_peer(peer_of(&db, &b, &format!("{B_OVERLAY}/32")))
        .unwrap();
    db.set_peer(peer_of(&da, &a, &format!("{A_OVERLAY}/32")))
        .unwrap();
    Netlink::open(&b.netns)
        .await
        .unwrap()
        .add_address(
            db.name(),
            format!("{B_DISALLOWED}/32").parse().unwrap(),
            false,
        )
        .await
        .unwrap();

    // A session first: its handshake and pings are arrivals too.
    assert!(ping(&b.netns, ip(A_OVERLAY)).unwrap());
    let before = settled(&da, 1);
    assert_eq!(before.datagrams, before.accounted(), "{before:?}");
    assert!(before.delivered > 0 && before.control > 0, "{before:?}");

    // The known mix. From b, through its session: valid datagrams and ones
    // whose inner source a does not accept from b.
    const VALID: usize = 9;
    const DISALLOWED: usize = 5;
    let receiver = a
        .netns
        .run(|| UdpSocket::bind((ip(A_OVERLAY), 7777)))
        .unwrap()
        .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let from_b = b
        .netns
        .run(|| UdpSocket::bind((ip(B_OVERLAY), 0)))
        .unwrap()
        .unwrap();
    let forged = b
        .netns
        .run(|| UdpSocket::bind((ip(B_DISALLOWED), 0)))
        .unwrap()
        .unwrap();
    for _ in 0..VALID {
        from_b.send_to(b"counted", (ip(A_OVERLAY), 7777)).unwrap();
    }
    for _ in 0..DISALLOWED {
        forged
            .send_to(b"not allowed", (ip(A_OVERLAY), 7777))
            .unwrap();
    }

    // From a stranger on the fabric, straight at a's port.
    const EMPTY: usize = 7;
    const JUNK: usize = 11;
    const SHORT_HANDSHAKE: usize = 4;
    const UNKNOWN_INDEX: usize = 6;
    const BAD_MAC: usize = 3;
    const STRANGER_KEY: usize = 2;
    let initiations = stranger_initiations(da.public_key(), STRANGER_KEY);
    let socket = x.netns.run(|| UdpSocket::bind((x.ip, 0))).unwrap().unwrap();
    let target = SocketAddr::new(a.ip_addr(), da.listen_port());
    let send = |m: &[u8]| assert_eq!(socket.send_to(m, target).unwrap(), m.len());
    for _ in 0..EMPTY {
        send(&[]);
    }
    for i in 0..JUNK {
        // Type 9 does not exist; 3 bytes is shorter than any type field.
        send(&junk_message(9, 40 + i, i as u8)[..if i == 0 { 3 } else { 40 + i }]);
    }
    for i in 0..SHORT_HANDSHAKE {
        send(&junk_message(1, 100 + i, i as u8));
    }
    for i in 0..UNKNOWN_INDEX {
        // Data for receiver index 0xffffffxx: slot 0xffffff is no peer's.
        let mut data = junk_message(4, 64, i as u8);
        data[4..8].copy_from_slice(&(0xffff_ff00u32 | i as u32).to_le_bytes());
        send(&data);
    }
    for i in 0..BAD_MAC {
        send(&junk_message(1, 148, i as u8));
    }
    for m in &initiations {
        send(m);
    }

    let mut buf = [0u8; 64];
    for _ in 0..VALID {
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from.ip()), (&b"counted"[..], ip(B_OVERLAY)));
    }
    let sent = VALID
        + DISALLOWED
        + EMPTY
        + JUNK
        + SHORT_HANDSHAKE
        + UNKNOWN_INDEX
        + BAD_MAC
        + STRANGER_KEY;
    let after = settled(&da, before.datagrams + sent as u64);

    // Everything that arrived has exactly one outcome.
    assert_eq!(after.datagrams, after.accounted(), "{after:?}");
    assert_eq!(after.datagrams - before.datagrams, sent as u64, "{after:?}");
    assert_eq!(after.delivered - before.delivered, VALID as u64);
    assert_eq!(after.control, before.control);
    let delta = |reason| after.drops.get(reason) - before.drops.get(reason);
    let expected = [
        (DropReason::Empty, EMPTY),
        (DropReason::Malformed, JUNK + SHORT_HANDSHAKE),
        (DropReason::UnknownIndex, UNKNOWN_INDEX),
        (DropReason::Authentication, BAD_MAC),
        (DropReason::UnknownKey, STRANGER_KEY),
        (DropReason::DisallowedSource, DISALLOWED),
    ];
    for reason in DropReason::ALL {
        let want = expected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n as u64);
        assert_eq!(
            delta(reason),
            want,
            "{reason:?}: {:?}",
            after.drops.nonzero()
        );
    }

    // The same drops are on the device's and the peer's own counters, where
    // netd reads them.
    let stats = da.stats();
    for reason in [
        DropReason::Empty,
        DropReason::Malformed,
        DropReason::UnknownIndex,
        DropReason::Authentication,
        DropReason::UnknownKey,
    ] {
        assert_eq!(
            stats.drops.get(reason),
            after.drops.get(reason),
            "{reason:?}"
        );
    }
    let peer = da.peer_stats(&db.public_key()).unwrap();
    assert_eq!(
        peer.drops.get(DropReason::DisallowedSource),
        DISALLOWED as u64
    );
}
