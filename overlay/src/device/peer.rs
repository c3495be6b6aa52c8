//! Peers as configured and as they run: their session, endpoint and counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::keys::{PresharedKey, PublicKey};
use crate::session::{NoiseSession, PeerSession, SessionError};

use super::rekey::DeviceKeys;

/// A peer as netd configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its static public key: who it is.
    pub public_key: PublicKey,
    /// A pre-shared key mixed into the handshake, if both sides set the same one.
    pub preshared_key: Option<PresharedKey>,
    /// Where to send; learned from authenticated traffic when None (and
    /// updated when the peer roams).
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses routed to this peer and accepted from it.
    pub allowed_ips: Vec<IpNetwork>,
    /// Seconds between keepalives when idle (NAT traversal); None or 0: off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A peer with only its key: no endpoint (learned when it speaks), no
    /// allowed IPs (nothing routed to it), no keepalive.
    pub fn new(public_key: PublicKey) -> PeerConfig {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }
}

/// Why a packet was dropped. Counted per peer where the peer is known, per
/// device otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A decrypted packet's inner source is not in the sender's allowed IPs.
    DisallowedSource,
    /// A message failed authentication (wrong key, tampered, bad MAC).
    Authentication,
    /// A replayed or too old message.
    Replay,
    /// Data for a session that does not exist (any more).
    NoSession,
    /// Not a valid WireGuard message or IP packet.
    Malformed,
    /// A packet for a peer whose endpoint is not known yet.
    NoEndpoint,
    /// The kernel refused to send the datagram.
    SendFailed,
    /// The TUN device refused a decrypted packet.
    TunWriteFailed,
    /// A handshake this peer's session refused (stale timestamp, wrong key).
    HandshakeRejected,
    /// A packet from the TUN device whose destination no peer's allowed IPs cover.
    NoRoute,
    /// Data or a handshake response for an index no peer has.
    UnknownIndex,
    /// A handshake initiation from a static key that is not a peer.
    UnknownKey,
    /// A handshake answered with a cookie reply because we are under load.
    RateLimited,
    /// A packet larger than the overlay carries, answered with ICMP
    /// "fragmentation needed" / "packet too big".
    TooBig,
    /// A zero-length datagram at the UDP socket: nothing to classify.
    Empty,
}

impl DropReason {
    /// Every reason, in the order of their counters (and of the enum).
    pub const ALL: [DropReason; 15] = [
        DropReason::DisallowedSource,
        DropReason::Authentication,
        DropReason::Replay,
        DropReason::NoSession,
        DropReason::Malformed,
        DropReason::NoEndpoint,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
        DropReason::HandshakeRejected,
        DropReason::NoRoute,
        DropReason::UnknownIndex,
        DropReason::UnknownKey,
        DropReason::RateLimited,
        DropReason::TooBig,
        DropReason::Empty,
    ];

    pub(crate) fn from_session(e: SessionError) -> DropReason {
        match e {
            SessionError::Authentication => DropReason::Authentication,
            SessionError::Replay => DropReason::Replay,
            SessionError::NoSession | SessionError::Expired => DropReason::NoSession,
            SessionError::StaleHandshake | SessionError::WrongKey => DropReason::HandshakeRejected,
            SessionError::UnderLoad => DropReason::RateLimited,
            SessionError::Malformed
            | SessionError::BufferTooSmall
            | SessionError::SlotOutOfRange(_) => DropReason::Malformed,
        }
    }
}

/// Drop counters by reason.
#[derive(Debug)]
pub(crate) struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl DropCounters {
    #[inline]
    pub(crate) fn add(&self, reason: DropReason, n: u64) {
        self.0[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DropCounts {
        DropCounts(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// A snapshot of drop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// The count for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// All drops, every reason together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counters only, for logs and status output.
    pub fn nonzero(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl Serialize for DropCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let nonzero = self.nonzero();
        let mut map = s.serialize_map(Some(nonzero.len()))?;
        for (reason, n) in nonzero {
            map.serialize_entry(&reason, &n)?;
        }
        map.end()
    }
}

/// Traffic counters of one peer. Bytes and packets are inner IP packets:
/// `rx` delivered to the TUN device, `tx` encrypted for the peer.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub drops: DropCounters,
    pub handshakes: super::handshakes::HandshakeTally,
}

impl PeerCounters {
    #[inline]
    pub(crate) fn received(&self, bytes: usize) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `packets` inner packets of `bytes` bytes in all sent.
    #[inline]
    pub(crate) fn sent(&self, bytes: u64, packets: u64) {
        if packets > 0 {
            self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        }
    }

    /// Counts a data message sent; keepalives and
    /// handshake messages carry no inner packet and are not counted.
    #[inline]
    pub(crate) fn sent_message(&self, wire: &[u8]) {
        self.handshakes.sent(wire);
        if wire.first() == Some(&4) && wire.len() > crate::packet::DATA_OVERHEAD {
            self.tx_bytes.fetch_add(
                (wire.len() - crate::packet::DATA_OVERHEAD) as u64,
                Ordering::Relaxed,
            );
            self.tx_packets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a peer's session and endpoint are now; locked per packet.
pub(crate) struct PeerState {
    /// Made at the first packet, handshake message or handshake request that
    /// needs it ([`PeerState::session`]), or at once for a peer with a
    /// persistent keepalive (its timer starts the first handshake). A
    /// session (boringtun's `Tunn`, with room for eight key pairs) takes
    /// about 11 KB, and a quiet host talks to few of its peers.
    session: Option<Box<dyn PeerSession>>,
    /// What the next session is made from: changes with the peer's config.
    recipe: SessionRecipe,
    pub endpoint: Option<SocketAddr>,
}

/// A peer's part of a new session; the device's key is the other part.
#[derive(Clone)]
pub(crate) struct SessionRecipe {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub keepalive: Option<u16>,
    pub slot: u32,
}

impl SessionRecipe {
    pub(crate) fn new(config: &PeerConfig, slot: u32) -> SessionRecipe {
        SessionRecipe {
            public_key: config.public_key,
            preshared_key: config.preshared_key.clone(),
            keepalive: config.persistent_keepalive.filter(|k| *k > 0),
            slot,
        }
    }

    fn make(&self, keys: &DeviceKeys) -> Result<Box<dyn PeerSession>, SessionError> {
        Ok(Box::new(NoiseSession::new(
            &keys.private_key,
            self.public_key,
            self.preshared_key.as_ref(),
            self.keepalive,
            self.slot,
            keys.guard.session_limiter(),
        )?))
    }
}

impl PeerState {
    /// A peer's state with no session yet (one at once with a keepalive).
    pub(crate) fn new(
        recipe: SessionRecipe,
        endpoint: Option<SocketAddr>,
        keys: &DeviceKeys,
    ) -> Result<PeerState, SessionError> {
        let mut state = PeerState {
            session: None,
            recipe,
            endpoint,
        };
        state.session = state.fresh(keys)?;
        Ok(state)
    }

    /// Ends the session: the next one is made from `recipe`.
    pub(crate) fn renew(
        &mut self,
        recipe: SessionRecipe,
        keys: &DeviceKeys,
    ) -> Result<(), SessionError> {
        self.recipe = recipe;
        self.session = self.fresh(keys)?;
        Ok(())
    }

    /// What replaces the session when it ends (the device's key changed):
    /// a new one under `keys` for a peer with a keepalive, else none yet.
    pub(crate) fn fresh(
        &self,
        keys: &DeviceKeys,
    ) -> Result<Option<Box<dyn PeerSession>>, SessionError> {
        match self.recipe.keepalive {
            Some(_) => self.recipe.make(keys).map(Some),
            None => Ok(None),
        }
    }

    /// Puts what [`PeerState::fresh`] made in place of the session.
    pub(crate) fn replace_session(&mut self, session: Option<Box<dyn PeerSession>>) {
        self.session = session;
    }

    /// The session, made now under the device's current keys if there is
    /// none (`keys` is only asked then).
    #[inline]
    pub(crate) fn session(
        &mut self,
        keys: impl FnOnce() -> Arc<DeviceKeys>,
    ) -> Result<&mut dyn PeerSession, SessionError> {
        let session = match self.session.take() {
            Some(session) => session,
            None => self.recipe.make(&keys())?,
        };
        Ok(self.session.insert(session).as_mut())
    }

    /// The session if one was made: a peer without one has no timers to run.
    pub(crate) fn existing_session(&mut self) -> Option<&mut (dyn PeerSession + 'static)> {
        self.session.as_deref_mut()
    }
}

/// A running peer.
pub(crate) struct Peer {
    /// Upper 24 bits of this peer's session indexes, and its value in the
    /// allowed-IPs table.
    pub slot: u32,
    pub config: Mutex<PeerConfig>,
    pub state: Mutex<PeerState>,
    pub counters: PeerCounters,
}

/// A peer's counters and status, for netd's status output.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStats {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Where its datagrams go now: configured, or learned from its traffic.
    pub endpoint: Option<SocketAddr>,
    /// Inner prefixes routed to it and accepted from it.
    pub allowed_ips: Vec<IpNetwork>,
    /// When the current session's handshake completed; None before the first.
    #[serde(serialize_with = "unix_seconds")]
    pub last_handshake: Option<SystemTime>,
    /// Bytes of inner packets from it delivered to the TUN device.
    pub rx_bytes: u64,
    /// Inner packets from it delivered to the TUN device.
    pub rx_packets: u64,
    /// Bytes of inner packets encrypted for it (keepalives and handshakes not counted).
    pub tx_bytes: u64,
    /// Inner packets encrypted for it.
    pub tx_packets: u64,
    /// Packets to or from it dropped, by reason.
    pub drops: DropCounts,
    /// Handshake initiations sent, those unanswered since the last
    /// handshake, and the last failure.
    #[serde(serialize_with = "handshake_attempts")]
    pub handshakes: super::HandshakeAttempts,
}

fn handshake_attempts<S: serde::Serializer>(
    a: &super::HandshakeAttempts,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(4))?;
    map.serialize_entry("unanswered", &a.unanswered)?;
    map.serialize_entry("initiations", &a.initiations)?;
    map.serialize_entry("last_failure", &a.last_failure.map(|(f, _)| f.to_string()))?;
    let at = a
        .last_failure
        .and_then(|(_, t)| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    map.serialize_entry("last_failure_at", &at)?;
    map.end()
}

fn unix_seconds<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

impl Peer {
    pub(crate) fn stats(&self) -> PeerStats {
        let config = self.config.lock().expect("peer config lock poisoned");
        let (endpoint, since) = {
            let state = self.state.lock().expect("peer state lock poisoned");
            let since = state
                .session
                .as_ref()
                .and_then(|s| s.since_last_handshake());
            (state.endpoint, since)
        };
        let c = &self.counters;
        PeerStats {
            public_key: config.public_key,
            endpoint,
            allowed_ips: config.allowed_ips.clone(),
            last_handshake: since.and_then(|d| SystemTime::now().checked_sub(d)),
            rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
            rx_packets: c.rx_packets.load(Ordering::Relaxed),
            tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
            tx_packets: c.tx_packets.load(Ordering::Relaxed),
            drops: c.drops.snapshot(),
            handshakes: c.handshakes.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::session::SessionOutput;

    fn recipe(keepalive: Option<u16>) -> SessionRecipe {
        let peer = PrivateKey::generate().unwrap().public_key();
        let mut config = PeerConfig::new(peer);
        config.persistent_keepalive = keepalive;
        SessionRecipe::new(&config, 7)
    }

    #[test]
    fn a_session_is_made_when_first_needed() {
        let keys = Arc::new(DeviceKeys::new(PrivateKey::generate().unwrap(), 100));
        let mut state = PeerState::new(recipe(None), None, &keys).unwrap();
        assert!(state.existing_session().is_none(), "no session before use");
        let mut asked = 0;
        let mut out = [0u8; 256];
        let session = state
            .session(|| {
                asked += 1;
                keys.clone()
            })
            .unwrap();
        assert!(matches!(
            session.initiate_handshake(&mut out, false),
            SessionOutput::ToNetwork(m) if m.first() == Some(&1)
        ));
        // Made once: the second call finds it (and its handshake in flight).
        state.session(|| unreachable!("made already")).unwrap();
        assert_eq!(asked, 1);
        assert!(state.existing_session().is_some());
        // A key change drops it; none is made until needed again.
        let fresh = state.fresh(&keys).unwrap();
        assert!(fresh.is_none());
        state.replace_session(fresh);
        assert!(state.existing_session().is_none());
    }

    #[test]
    fn a_keepalive_needs_its_session_at_once() {
        let keys = DeviceKeys::new(PrivateKey::generate().unwrap(), 100);
        let mut state = PeerState::new(recipe(Some(25)), None, &keys).unwrap();
        assert!(state.existing_session().is_some());
        assert!(state.fresh(&keys).unwrap().is_some());
        // Switched off: the session ends and the next is made when needed.
        state.renew(recipe(Some(0)), &keys).unwrap();
        assert!(state.existing_session().is_none());
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let c = DropCounters::default();
        c.add(DropReason::DisallowedSource, 2);
        c.add(DropReason::RateLimited, 5);
        let s = c.snapshot();
        assert_eq!(s.get(DropReason::DisallowedSource), 2);
        assert_eq!(s.get(DropReason::RateLimited), 5);
        assert_eq!(s.total(), 7);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"disallowed_source":2,"rate_limited":5}"#
        );
    }
}
