//! The WireGuard device: a TUN link and one UDP socket in a given namespace,
//! one Noise session per peer, and the threads that move packets between them.
//!
//! ```text
//!  TUN read ─▶ allowed IPs (dst) ─▶ peer session encapsulate ─▶ sendmmsg to endpoint   [tx thread]
//!  recvmmsg ─▶ classify ─▶ peer by index / static key ─▶ decapsulate
//!           ─▶ inner source in that peer's allowed IPs? ─▶ TUN write                   [rx thread]
//!  every 100 ms: session timers (handshake retries, rekey, keepalive)                  [timer thread]
//! ```
//!
//! Peers can be added, changed and removed while traffic flows: the peer
//! table sits behind a read-write lock that the data path takes once per batch.

mod arrivals;
mod handshakes;
mod peer;
mod refused;
mod rekey;
mod table;
mod workers;

pub use arrivals::ArrivalCounts;
pub use handshakes::{HandshakeAttempts, HandshakeFailure};
pub use peer::{DropCounts, DropReason, PeerConfig, PeerStats};

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use plumb::{LinkChange, Netlink, Netns};
use serde::Serialize;

use crate::allowed_ips::AllowedIpsError;
use crate::keys::{PrivateKey, PublicKey};
use crate::session::{SessionError, MAX_SLOT};
use crate::tun::{Tun, TunError};
use crate::udp::{UdpError, UdpSocket};
use crate::wait::Stop;

use arrivals::ArrivalCounters;
use peer::{DropCounters, Peer, PeerCounters, PeerState, SessionRecipe};
use refused::RefusedInitiators;
use rekey::DeviceKeys;
use table::PeerTable;

/// The overlay's TUN link name.
pub const DEFAULT_NAME: &str = "weft-wg0";
/// WireGuard's UDP port.
pub const DEFAULT_PORT: u16 = 51820;
/// Outer IPv6 (40) + UDP (8) + WireGuard data header and tag (32).
pub const OVERHEAD: u32 = 80;
/// Underlay MTU assumed when the namespace has no link to measure.
pub const FALLBACK_UNDERLAY_MTU: u32 = 1500;

/// Why a device could not be created or changed; each names the device (its
/// TUN link) and, where it matters, the namespace or the peer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device's namespace could not be entered.
    #[error("enter namespace {netns} to create device {name}: {source}")]
    Netns {
        /// The device's TUN link name.
        name: String,
        /// The namespace, as its label reads (name or path).
        netns: String,
        /// What plumb said.
        #[source]
        source: Box<plumb::Error>,
    },
    /// The TUN link could not be made or set up.
    #[error("device {name} in namespace {netns}: {source}")]
    Tun {
        /// The device's TUN link name.
        name: String,
        /// The namespace, as its label reads.
        netns: String,
        /// What failed on the TUN device.
        #[source]
        source: TunError,
    },
    /// The UDP socket could not be made or bound.
    #[error("device {name} in namespace {netns}: {source}")]
    Udp {
        /// The device's TUN link name.
        name: String,
        /// The namespace, as its label reads.
        netns: String,
        /// What failed on the socket.
        #[source]
        source: UdpError,
    },
    /// A netlink change to the TUN link (MTU, up, queue length) failed.
    #[error("device {name} in namespace {netns}: {action}: {source}")]
    Link {
        /// The device's TUN link name.
        name: String,
        /// The namespace, as its label reads.
        netns: String,
        /// What was being done, in a few words ("set the MTU", …).
        action: &'static str,
        /// What plumb said.
        #[source]
        source: Box<plumb::Error>,
    },
    /// The rx, tx or timer thread could not be started.
    #[error("device {name} in namespace {netns}: start its threads: {source}")]
    Threads {
        /// The device's TUN link name.
        name: String,
        /// The namespace, as its label reads.
        netns: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// A peer's allowed IPs overlap another peer's.
    #[error("device {name}: peer {peer}: {source}")]
    AllowedIps {
        /// The device's TUN link name.
        name: String,
        /// The peer being set.
        peer: PublicKey,
        /// Which prefix, and whose it is.
        #[source]
        source: AllowedIpsError,
    },
    /// A peer's Noise session could not be made (bad key material).
    #[error("device {name}: peer {peer}: {source}")]
    Session {
        /// The device's TUN link name.
        name: String,
        /// The peer being set.
        peer: PublicKey,
        /// What boringtun refused.
        #[source]
        source: SessionError,
    },
    /// A peer with the device's own public key: it would talk to itself.
    #[error("device {name}: peer {peer} is this device's own public key")]
    OwnKey {
        /// The device's TUN link name.
        name: String,
        /// The key given as a peer's.
        peer: PublicKey,
    },
    /// No peer has this public key (removing or reading one).
    #[error("device {name}: no peer {peer}")]
    UnknownPeer {
        /// The device's TUN link name.
        name: String,
        /// The key asked for.
        peer: PublicKey,
    },
    /// Every session slot (2^24) is taken.
    #[error("device {name}: all {} peer slots are in use", MAX_SLOT + 1)]
    Full {
        /// The device's TUN link name.
        name: String,
    },
}

/// How to build a device. `DeviceConfig::new(key)` gives weft's defaults.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// TUN link name (≤ 15 bytes).
    pub name: String,
    /// The device's static private key; its public key is what peers configure.
    pub private_key: PrivateKey,
    /// UDP port; 0 picks a free one (see `Device::listen_port`).
    pub listen_port: u16,
    /// Overlay MTU; None: underlay MTU − 80.
    pub mtu: Option<u32>,
    /// Underlay MTU; None: measured in the namespace (the default route's
    /// link, else the smallest MTU of its other up links).
    pub underlay_mtu: Option<u32>,
    /// UDP receive and send buffer, forced past rmem_max/wmem_max when root.
    pub socket_buffer: usize,
    /// Datagrams per recvmmsg/sendmmsg.
    pub batch: usize,
    /// Handshake messages per second handled without a cookie round trip.
    pub handshakes_per_second: u64,
    /// Packets the kernel queues on the TUN link for the tx thread (its
    /// txqueuelen); bursts beyond it are dropped.
    pub tun_queue_len: u32,
}

impl DeviceConfig {
    /// weft's defaults: link `weft-wg0`, port 51820, MTU from the underlay less
    /// 80, 8 MiB socket buffers, batches of 32, 100 handshakes a second, a TUN
    /// queue of 5000 packets.
    pub fn new(private_key: PrivateKey) -> DeviceConfig {
        DeviceConfig {
            name: DEFAULT_NAME.to_string(),
            private_key,
            listen_port: DEFAULT_PORT,
            mtu: None,
            underlay_mtu: None,
            socket_buffer: 8 << 20,
            batch: 32,
            handshakes_per_second: 100,
            tun_queue_len: 5000,
        }
    }
}

/// A device's counters for netd's status output.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStats {
    /// The TUN link's name.
    pub name: String,
    /// The device's public key, as peers configure it.
    pub public_key: PublicKey,
    /// The UDP port it listens on (the one picked when 0 was asked).
    pub listen_port: u16,
    /// The overlay MTU in bytes: the largest inner packet carried whole.
    pub mtu: u32,
    /// Every peer's counters and status, sorted by public key.
    pub peers: Vec<PeerStats>,
    /// Drops not attributable to a peer (no route, unknown index or key,
    /// malformed, rate limited handshakes).
    pub drops: DropCounts,
    /// What became of each datagram that arrived at the UDP socket.
    pub arrivals: ArrivalCounts,
}

/// What the worker threads share.
pub(crate) struct Shared {
    pub name: String,
    pub netns: String,
    /// The static key pair and its handshake guard; replaced whole by
    /// `Device::set_private_key` (taken once per handshake message).
    pub keys: RwLock<Arc<DeviceKeys>>,
    /// Handshake messages per second admitted without a cookie.
    pub handshakes_per_second: u64,
    pub tun: Tun,
    pub udp: UdpSocket,
    pub peers: RwLock<PeerTable>,
    pub drops: DropCounters,
    pub arrivals: ArrivalCounters,
    pub stop: Stop,
    pub batch: usize,
    /// The largest inner packet carried whole (the overlay MTU the device was
    /// made with, whatever the link's MTU is changed to later).
    pub max_packet: usize,
    /// Initiations refused for an unknown key lately (see `refused.rs`).
    pub refused: Mutex<RefusedInitiators>,
    next_slot: AtomicU32,
}

/// A running WireGuard device. Dropping it stops its threads and removes the
/// TUN link.
pub struct Device {
    shared: Arc<Shared>,
    mtu: u32,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.shared.name)
            .field("netns", &self.shared.netns)
            .field("public_key", &self.shared.keys().public_key)
            .field("listen_port", &self.shared.udp.port())
            .finish()
    }
}

impl Device {
    /// Creates the TUN link and UDP socket inside `netns`, sets the link's MTU
    /// and brings it up, and starts the worker threads (which run inside
    /// `netns` too). Must be called within a tokio runtime (for netlink).
    pub async fn create(netns: &Netns, config: DeviceConfig) -> Result<Device, DeviceError> {
        let name = config.name.clone();
        let label = netns.label().to_string();
        let (tun, udp) = netns
            .run(|| -> Result<(Tun, UdpSocket), DeviceError> {
                let tun_error = |source| DeviceError::Tun {
                    name: name.clone(),
                    netns: label.clone(),
                    source,
                };
                let tun = Tun::create(&config.name).map_err(tun_error)?;
                tun.set_queue_len(config.tun_queue_len).map_err(tun_error)?;
                let udp = UdpSocket::bind(config.listen_port, config.socket_buffer).map_err(
                    |source| DeviceError::Udp {
                        name: name.clone(),
                        netns: label.clone(),
                        source,
                    },
                )?;
                Ok((tun, udp))
            })
            .map_err(|source| DeviceError::Netns {
                name: name.clone(),
                netns: label.clone(),
                source: Box::new(source),
            })??;

        let link_error = |action: &'static str| {
            let (name, netns) = (name.clone(), label.clone());
            move |source| DeviceError::Link {
                name,
                netns,
                action,
                source: Box::new(source),
            }
        };
        let nl = Netlink::open(netns)
            .await
            .map_err(link_error("open netlink"))?;
        let mtu = match config.mtu {
            Some(mtu) => mtu,
            None => {
                let underlay = match config.underlay_mtu {
                    Some(m) => m,
                    None => underlay_mtu(&nl, &name)
                        .await
                        .map_err(link_error("measure the underlay MTU"))?,
                };
                underlay.saturating_sub(OVERHEAD).max(1280)
            }
        };
        nl.set_link(
            &name,
            &LinkChange {
                mtu: Some(mtu),
                up: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(link_error("set MTU and bring up"))?;

        let public_key = config.private_key.public_key();
        let shared = Arc::new(Shared {
            keys: RwLock::new(Arc::new(DeviceKeys::new(
                config.private_key,
                config.handshakes_per_second,
            ))),
            handshakes_per_second: config.handshakes_per_second,
            name: name.clone(),
            netns: label.clone(),
            tun,
            udp,
            peers: RwLock::new(PeerTable::default()),
            drops: DropCounters::default(),
            arrivals: ArrivalCounters::default(),
            stop: Stop::new().map_err(|source| DeviceError::Threads {
                name: name.clone(),
                netns: label.clone(),
                source,
            })?,
            batch: config.batch.clamp(1, 1024),
            max_packet: mtu as usize,
            refused: Mutex::default(),
            next_slot: AtomicU32::new(random_slot()),
        });
        let device = Device {
            shared: shared.clone(),
            mtu,
            threads: Mutex::new(Vec::new()),
        };
        type Job = fn(&Shared);
        let jobs: [(&str, Job); 3] = [
            ("wg-tx", workers::tx_loop),
            ("wg-rx", workers::rx_loop),
            ("wg-timers", workers::timer_loop),
        ];
        for (thread_name, job) in jobs {
            let shared = shared.clone();
            let netns = netns.clone();
            let handle = std::thread::Builder::new()
                .name(thread_name.to_string())
                .spawn(move || {
                    // A dedicated thread: entering the namespace cannot leak into other work.
                    if let Err(e) =
                        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    {
                        tracing::error!(
                            device = %shared.name,
                            "{thread_name}: enter namespace {}: {e}; stopping the device",
                            shared.netns
                        );
                        shared.stop.signal();
                        return;
                    }
                    job(&shared)
                })
                .map_err(|source| DeviceError::Threads {
                    name: name.clone(),
                    netns: label.clone(),
                    source,
                })?;
            device.threads.lock().expect("threads lock").push(handle);
        }
        tracing::info!(
            device = %name,
            netns = %label,
            public_key = %public_key,
            port = device.listen_port(),
            mtu,
            "WireGuard device up"
        );
        Ok(device)
    }

    /// The TUN link's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The public key peers use for this device.
    pub fn public_key(&self) -> PublicKey {
        self.shared.keys().public_key
    }

    /// The UDP port the device listens on (the free one picked when the
    /// configuration asked for 0).
    pub fn listen_port(&self) -> u16 {
        self.shared.udp.port()
    }

    /// The MTU set on the TUN link.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Adds a peer, or changes one in place. A changed preshared key or
    /// keepalive starts a new session (the next packet handshakes again); an
    /// endpoint of None keeps the one learned from traffic.
    pub fn set_peer(&self, config: PeerConfig) -> Result<(), DeviceError> {
        let s = &self.shared;
        let key = config.public_key;
        let keys = s.keys();
        if key == keys.public_key {
            return Err(DeviceError::OwnKey {
                name: s.name.clone(),
                peer: key,
            });
        }
        let mut table = s.peers.write().expect("peer table lock poisoned");
        let existing = table.by_key.get(&key).cloned();
        let slot = match &existing {
            Some(p) => p.slot,
            None => self.free_slot(&table)?,
        };
        for network in &config.allowed_ips {
            if let Some(owner) = table.allowed.get(*network).filter(|o| *o != slot) {
                let owner = table
                    .by_slot
                    .get(&owner)
                    .map(|p| {
                        p.config
                            .lock()
                            .expect("peer config lock")
                            .public_key
                            .to_base64()
                    })
                    .unwrap_or_else(|| format!("slot {owner}"));
                return Err(DeviceError::AllowedIps {
                    name: s.name.clone(),
                    peer: key,
                    source: AllowedIpsError::Conflict {
                        network: *network,
                        owner,
                    },
                });
            }
        }
        let session_error = |source| DeviceError::Session {
            name: s.name.clone(),
            peer: key,
            source,
        };
        let recipe = SessionRecipe::new(&config, slot);
        let is_new = existing.is_none();
        match existing {
            Some(peer) => {
                let mut current = peer.config.lock().expect("peer config lock poisoned");
                let mut state = peer.state.lock().expect("peer state lock poisoned");
                if current.preshared_key != config.preshared_key
                    || current.persistent_keepalive != config.persistent_keepalive
                {
                    state.renew(recipe, &keys).map_err(session_error)?;
                }
                if config.endpoint.is_some() {
                    state.endpoint = config.endpoint;
                }
                *current = config.clone();
            }
            None => {
                let state =
                    PeerState::new(recipe, config.endpoint, &keys).map_err(session_error)?;
                let peer = Arc::new(Peer {
                    slot,
                    state: Mutex::new(state),
                    config: Mutex::new(config.clone()),
                    counters: PeerCounters::default(),
                });
                table.by_key.insert(key, peer.clone());
                table.by_slot.insert(slot, peer);
            }
        }
        table.allowed.remove_value(slot);
        for network in &config.allowed_ips {
            table.allowed.insert(*network, slot);
        }
        tracing::debug!(device = %s.name, peer = %key, slot, "peer set");
        // A new peer that tried us moments ago, refused then: answer its
        // wait with a handshake now rather than after its 5 s retry.
        let tried_from = match is_new {
            true => s.refused.lock().expect("refused lock poisoned").take(&key),
            false => None,
        };
        if let Some(from) = tried_from {
            let peer = table.by_key.get(&key).cloned();
            drop(table);
            if let Some(peer) = peer {
                let mut state = peer.state.lock().expect("peer state lock poisoned");
                state.endpoint = state.endpoint.or(Some(from));
            }
            match self.initiate_handshake(&key) {
                Ok(sent) => {
                    tracing::debug!(device = %s.name, peer = %key, sent, "handshake with a peer refused moments ago")
                }
                Err(e) => tracing::debug!(device = %s.name, peer = %key, "handshake: {e}"),
            }
        }
        Ok(())
    }

    /// Removes a peer: its session ends and its allowed IPs stop routing at once.
    pub fn remove_peer(&self, key: &PublicKey) -> Result<(), DeviceError> {
        let s = &self.shared;
        let mut table = s.peers.write().expect("peer table lock poisoned");
        let Some(peer) = table.by_key.remove(key) else {
            return Err(DeviceError::UnknownPeer {
                name: s.name.clone(),
                peer: *key,
            });
        };
        table.by_slot.remove(&peer.slot);
        table.allowed.remove_value(peer.slot);
        tracing::debug!(device = %s.name, peer = %key, "peer removed");
        Ok(())
    }

    /// The peers as configured (endpoints as last learned).
    pub fn peers(&self) -> Vec<PeerConfig> {
        let table = self.shared.peers.read().expect("peer table lock poisoned");
        let mut out: Vec<PeerConfig> = table
            .by_key
            .values()
            .map(|p| {
                let mut c = p.config.lock().expect("peer config lock").clone();
                c.endpoint = p.state.lock().expect("peer state lock").endpoint;
                c
            })
            .collect();
        out.sort_by_key(|c| c.public_key);
        out
    }

    /// One peer's counters, or None when it is not a peer.
    pub fn peer_stats(&self, key: &PublicKey) -> Option<PeerStats> {
        let table = self.shared.peers.read().expect("peer table lock poisoned");
        table.by_key.get(key).map(|p| p.stats())
    }

    /// Every peer's counters and the device's own drop counters.
    pub fn stats(&self) -> DeviceStats {
        let table = self.shared.peers.read().expect("peer table lock poisoned");
        let mut peers: Vec<PeerStats> = table.by_key.values().map(|p| p.stats()).collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceStats {
            name: self.shared.name.clone(),
            public_key: self.shared.keys().public_key,
            listen_port: self.listen_port(),
            mtu: self.mtu,
            peers,
            drops: self.shared.drops.snapshot(),
            arrivals: self.shared.arrivals.snapshot(),
        }
    }

    /// Stops the threads and closes the TUN link (as dropping does).
    pub fn shutdown(self) {
        drop(self)
    }

    fn free_slot(&self, table: &PeerTable) -> Result<u32, DeviceError> {
        if table.by_slot.len() as u64 > u64::from(MAX_SLOT) {
            return Err(DeviceError::Full {
                name: self.shared.name.clone(),
            });
        }
        loop {
            let slot = self.shared.next_slot.fetch_add(1, Ordering::Relaxed) & MAX_SLOT;
            if !table.by_slot.contains_key(&slot) {
                return Ok(slot);
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop.signal();
        for handle in self.threads.lock().expect("threads lock").drain(..) {
            if handle.join().is_err() {
                tracing::error!(device = %self.shared.name, "a worker thread panicked");
            }
        }
    }
}

/// The MTU of the default route's link, else the smallest MTU among the other
/// up links (loopback and `own` excepted), else 1500.
async fn underlay_mtu(nl: &Netlink, own: &str) -> plumb::Result<u32> {
    let links = nl.links().await?;
    for ipv6 in [false, true] {
        let routes = nl.routes(ipv6, false).await?;
        if let Some(dev) = routes
            .iter()
            .find(|r| r.destination.is_none_or(|d| d.prefix() == 0))
            .and_then(|r| r.dev.as_deref())
        {
            if let Some(link) = links.iter().find(|l| l.name == dev) {
                return Ok(link.mtu);
            }
        }
    }
    Ok(links
        .iter()
        .filter(|l| l.up && l.name != "lo" && l.name != own)
        .map(|l| l.mtu)
        .min()
        .unwrap_or(FALLBACK_UNDERLAY_MTU))
}

fn random_slot() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 4, libc::GRND_NONBLOCK) };
    if n == 4 {
        u32::from_ne_bytes(bytes) & MAX_SLOT
    } else {
        std::process::id() & MAX_SLOT
    }
}

/// Sends one datagram outside the batched path; failures are counted.
pub(crate) fn send_one(shared: &Shared, data: &[u8], to: SocketAddr, counters: &DropCounters) {
    if let Err(e) = shared.udp.send_to(data, to) {
        tracing::debug!(device = %shared.name, "send to {to}: {e}");
        counters.add(DropReason::SendFailed, 1);
    }
}
