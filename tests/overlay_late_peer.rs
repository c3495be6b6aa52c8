//! Two hosts that learn of each other at slightly different moments (a
//! cluster's hosts read the store each on its own): a's first initiation
//! reaches b before b has a as a peer and is refused. When b adds a moments
//! later, b handshakes at once; without that, a would wait for WireGuard's
//! 5 s rekey timeout before trying again.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use overlay::DropReason;
use overlay_support::{peer_of, TwoHosts};
use world::{ping, require_root, World};

mod overlay_support;

#[tokio::test]
async fn a_peer_added_moments_after_its_initiation_was_refused_gets_a_handshake_at_once() {
    require_root!();
    let world = World::new().await.unwrap();
    let TwoHosts { a, b, da, db } = TwoHosts::new(&world).await;
    // Only a knows b, to begin with.
    da.set_peer(peer_of(&db, &b, "10.99.0.2/32")).unwrap();
    let b_overlay: IpAddr = "10.99.0.2".parse().unwrap();

    // a tries first (one datagram starts its handshake): b does not know a
    // yet and refuses the initiation.
    a.netns
        .run(|| UdpSocket::bind("0.0.0.0:0")?.send_to(b"hello", (b_overlay, 9)))
        .unwrap()
        .unwrap();
    let start = Instant::now();
    while db.stats().drops.get(DropReason::UnknownKey) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "b never saw a's initiation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // b adds a, without any endpoint: the refused initiation told it where
    // a is, and b answers the wait with an initiation of its own.
    let mut a_on_b = peer_of(&da, &a, "10.99.0.1/32");
    a_on_b.endpoint = None;
    db.set_peer(a_on_b).unwrap();
    let sent = db.peer_stats(&da.public_key()).unwrap();
    assert_eq!(sent.handshakes.initiations, 1, "{:?}", sent.handshakes);
    assert_eq!(
        sent.endpoint,
        Some((a.ip_addr(), da.listen_port()).into()),
        "the endpoint the refused initiation came from"
    );
    // a answered it: the session is up before a's own retry was due.
    let mut answered = false;
    for _ in 0..50 {
        if db
            .peer_stats(&da.public_key())
            .unwrap()
            .last_handshake
            .is_some()
        {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answered, "a did not answer b's initiation");
    // Both ways now, well before a's own retry (5 s after its first
    // initiation; a ping gives up after 3 s).
    assert!(ping(&a.netns, b_overlay).unwrap());
    assert!(ping(&b.netns, "10.99.0.1".parse().unwrap()).unwrap());
}
