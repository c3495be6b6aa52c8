//! overlay: weft's encrypted data path between hosts — a WireGuard device
//! (TUN link, one UDP socket, one boringtun Noise session per peer) that netd
//! drives — and the cluster's shared state: a store trait with etcd and
//! in-memory backends ([`store`]) and the records, membership, liveness and
//! peer view built on it ([`cluster`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), overlay::Error> {
//! use overlay::{Device, DeviceConfig, PeerConfig, PrivateKey};
//! let netns = plumb::Netns::named("host-a").map_err(overlay::Error::Plumb)?;
//! let device = Device::create(&netns, DeviceConfig::new(PrivateKey::generate()?)).await?;
//! let mut peer = PeerConfig::new("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".parse()?);
//! peer.endpoint = Some("198.18.0.2:51820".parse().unwrap());
//! peer.allowed_ips = vec!["10.99.1.0/24".parse().unwrap()];
//! device.set_peer(peer)?;
//! println!("{:?}", device.stats());
//! # Ok(()) }
//! ```
//!
//! Modules: `keys` (X25519 keys, wg's base64, key files), `allowed_ips`
//! (longest-prefix match), `packet` (message and header classification),
//! `session` (the `PeerSession` trait on boringtun, the handshake guard),
//! `tun`, `udp` (batched socket I/O), `device` (peers, threads, counters).

#![warn(missing_docs)]

pub mod allowed_ips;
pub mod cluster;
pub mod device;
pub mod icmp;
pub mod keys;
pub mod offload;
pub mod packet;
pub mod session;
pub mod store;
pub mod tun;
pub mod udp;
mod wait;

pub use allowed_ips::{AllowedIps, AllowedIpsError};
pub use device::{
    ArrivalCounts, Device, DeviceConfig, DeviceError, DeviceStats, DropCounts, DropReason,
    PeerConfig, PeerStats, DEFAULT_NAME, DEFAULT_PORT,
};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use packet::{IpHeader, PacketError, WireMessage};
pub use session::{NoiseSession, PeerSession, SessionError, SessionOutput};
pub use tun::TunError;
pub use udp::UdpError;

/// Every overlay error; each layer's own error says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key could not be read, parsed, made or written.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Allowed IPs overlap another peer's.
    #[error(transparent)]
    AllowedIps(#[from] AllowedIpsError),
    /// A datagram or packet is not what it claims.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// A Noise session refused a message or could not be made.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The TUN device failed.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// The UDP socket failed.
    #[error(transparent)]
    Udp(#[from] UdpError),
    /// Creating or changing a device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Kernel plumbing (namespaces, links) failed.
    #[error(transparent)]
    Plumb(#[from] plumb::Error),
}

/// A result with the overlay's [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
