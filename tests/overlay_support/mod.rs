//! Overlay devices inside simulated hosts, for the overlay integration tests.

#![allow(dead_code)] // each test file uses a different part of this module

use overlay::session::{HandshakeGuard, SessionOutput};
use overlay::{Device, DeviceConfig, NoiseSession, PeerConfig, PeerSession, PrivateKey, PublicKey};
use plumb::Netlink;
use world::{Host, World};

/// A device with weft's defaults in `host`, its TUN link holding `cidr`.
pub async fn device_on(host: &Host, cidr: &str) -> Device {
    device_with(
        host,
        cidr,
        DeviceConfig::new(PrivateKey::generate().unwrap()),
    )
    .await
}

/// A device made with `config` in `host`, its TUN link holding `cidr`.
pub async fn device_with(host: &Host, cidr: &str, config: DeviceConfig) -> Device {
    let device = Device::create(&host.netns, config).await.unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    nl.add_address(device.name(), cidr.parse().unwrap(), false)
        .await
        .unwrap();
    device
}

/// Hosts `a` and `b` of a world with a device each: a's TUN link holds
/// 10.99.0.1/24, b's 10.99.0.2/24. Neither knows the other until a test
/// sets a peer.
pub struct TwoHosts {
    pub a: Host,
    pub b: Host,
    pub da: Device,
    pub db: Device,
}

impl TwoHosts {
    pub async fn new(world: &World) -> TwoHosts {
        let a = world.host("a").await.unwrap();
        let b = world.host("b").await.unwrap();
        let da = device_on(&a, "10.99.0.1/24").await;
        let db = device_on(&b, "10.99.0.2/24").await;
        TwoHosts { a, b, da, db }
    }

    /// Each device takes the other as its peer.
    pub fn peer_both_ways(&self) {
        self.da
            .set_peer(peer_of(&self.db, &self.b, "10.99.0.2/32"))
            .unwrap();
        self.db
            .set_peer(peer_of(&self.da, &self.a, "10.99.0.1/32"))
            .unwrap();
    }
}

/// `device` in `host` as its peers configure it: its key, its endpoint on
/// the fabric, and `allowed` (a prefix) as its allowed IPs.
pub fn peer_of(device: &Device, host: &Host, allowed: &str) -> PeerConfig {
    let mut p = PeerConfig::new(device.public_key());
    p.endpoint = Some((host.ip_addr(), device.listen_port()).into());
    p.allowed_ips = vec![allowed.parse().unwrap()];
    p
}

/// `count` distinct, valid handshake initiations (right mac1) to `to` from a
/// fresh key that no device knows.
pub fn stranger_initiations(to: PublicKey, count: usize) -> Vec<Vec<u8>> {
    initiations(&PrivateKey::generate().unwrap(), to, count)
}

/// `count` distinct, valid handshake initiations (right mac1) to `to`, made
/// with the static key `from`.
pub fn initiations(from: &PrivateKey, to: PublicKey, count: usize) -> Vec<Vec<u8>> {
    let guard = HandshakeGuard::new(from, 10);
    let mut session = NoiseSession::new(from, to, None, None, 1, guard.session_limiter()).unwrap();
    let mut out = [0u8; 256];
    (0..count)
        .map(|_| match session.initiate_handshake(&mut out, true) {
            SessionOutput::ToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        })
        .collect()
}
