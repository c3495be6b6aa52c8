//! One peer's Noise session behind a small trait of ours, implemented with
//! `boringtun::noise::Tunn`; and the device-wide handshake guard (MAC checks,
//! rate limiting with cookies, finding who sent an initiation).
//!
//! The device only speaks `PeerSession` and `HandshakeGuard`, so another
//! Noise implementation can be swapped in here without touching the data path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

use crate::keys::{PresharedKey, PrivateKey, PublicKey};

/// Session indexes carry the peer's slot in their upper 24 bits (boringtun
/// keeps the low 8 for the session ring), so a slot must fit in 24 bits.
pub const MAX_SLOT: u32 = (1 << 24) - 1;

/// Why a message was not accepted. Copy and allocation-free: these are
/// counted per packet on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Bad MAC or AEAD tag: wrong key, or tampered with.
    #[error("message failed authentication (bad MAC or AEAD tag)")]
    Authentication,
    /// A data counter seen before or behind the replay window.
    #[error("replayed or too old message counter")]
    Replay,
    /// A handshake initiation whose timestamp is not newer than the last.
    #[error("replayed or stale handshake timestamp")]
    StaleHandshake,
    /// Data for a session that is not (or no longer) established.
    #[error("no session for this message (handshake not done, or expired)")]
    NoSession,
    /// A handshake from a static key other than this peer's.
    #[error("handshake from a different static key than this peer's")]
    WrongKey,
    /// Bytes boringtun cannot parse as the message they claim to be.
    #[error("malformed or unexpected message")]
    Malformed,
    /// A handshake while under load without a valid cookie.
    #[error("under load: handshake needs a cookie")]
    UnderLoad,
    /// No handshake has succeeded for too long: the session gave up.
    #[error("session expired: no successful handshake for too long")]
    Expired,
    /// The output buffer cannot hold the result.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A session slot beyond 24 bits (the low 8 of an index are boringtun's).
    #[error("session slot {0} does not fit in 24 bits")]
    SlotOutOfRange(u32),
}

impl From<WireGuardError> for SessionError {
    fn from(e: WireGuardError) -> Self {
        use WireGuardError as W;
        match e {
            W::DestinationBufferTooSmall => SessionError::BufferTooSmall,
            W::InvalidMac | W::InvalidAeadTag => SessionError::Authentication,
            W::InvalidCounter | W::DuplicateCounter => SessionError::Replay,
            W::InvalidTai64nTimestamp | W::WrongTai64nTimestamp => SessionError::StaleHandshake,
            W::WrongIndex | W::NoCurrentSession => SessionError::NoSession,
            W::WrongKey => SessionError::WrongKey,
            W::ConnectionExpired => SessionError::Expired,
            W::UnderLoad => SessionError::UnderLoad,
            W::IncorrectPacketLength
            | W::UnexpectedPacket
            | W::WrongPacketType
            | W::InvalidPacket
            | W::LockFailed => SessionError::Malformed,
        }
    }
}

/// What a session asks the device to do with its output buffer.
#[derive(Debug)]
pub enum SessionOutput<'a> {
    /// Nothing to send (a keepalive arrived, a packet was queued, …).
    Done,
    /// Send these bytes to the peer's endpoint.
    ToNetwork(&'a [u8]),
    /// A decrypted IP packet for the TUN device (its inner source is not yet checked).
    ToTunnel(&'a [u8]),
    /// The message was refused: dropped, and counted under this reason.
    Failed(SessionError),
}

impl<'a> From<TunnResult<'a>> for SessionOutput<'a> {
    fn from(r: TunnResult<'a>) -> Self {
        match r {
            TunnResult::Done => SessionOutput::Done,
            TunnResult::Err(e) => SessionOutput::Failed(e.into()),
            TunnResult::WriteToNetwork(b) => SessionOutput::ToNetwork(b),
            TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => {
                SessionOutput::ToTunnel(b)
            }
        }
    }
}

/// One peer's Noise session: handshakes, transport keys, timers.
///
/// Output buffers must hold the input plus 32 bytes and at least 148 bytes.
pub trait PeerSession: Send {
    /// Encrypts an IP packet for the peer, or queues it and starts a handshake.
    fn encapsulate<'a>(&mut self, packet: &[u8], out: &'a mut [u8]) -> SessionOutput<'a>;
    /// Handles a message from the peer, received from `from`.
    fn decapsulate<'a>(
        &mut self,
        from: Option<IpAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> SessionOutput<'a>;
    /// After a handshake completed: the next packet queued while it ran.
    fn next_queued<'a>(&mut self, out: &'a mut [u8]) -> SessionOutput<'a>;
    /// Call every 100–250 ms: retransmits, rekeys, keepalives, expiry.
    fn update_timers<'a>(&mut self, out: &'a mut [u8]) -> SessionOutput<'a>;
    /// Starts a handshake now (even if one is in flight when `force`).
    fn initiate_handshake<'a>(&mut self, out: &'a mut [u8], force: bool) -> SessionOutput<'a>;
    /// How long ago the current session's handshake completed.
    fn since_last_handshake(&self) -> Option<Duration>;
}

/// `PeerSession` on boringtun's `Tunn`.
pub struct NoiseSession {
    tunn: Tunn,
}

impl NoiseSession {
    /// A session with `peer`, using `slot` (≤ `MAX_SLOT`) as the upper 24 bits
    /// of its indexes. `limiter` checks handshake MACs inside the session; the
    /// device's `HandshakeGuard` does the actual rate limiting.
    pub fn new(
        private: &PrivateKey,
        peer: PublicKey,
        psk: Option<&PresharedKey>,
        keepalive: Option<u16>,
        slot: u32,
        limiter: Arc<RateLimiter>,
    ) -> Result<NoiseSession, SessionError> {
        if slot > MAX_SLOT {
            return Err(SessionError::SlotOutOfRange(slot));
        }
        Ok(NoiseSession {
            tunn: Tunn::new(
                private.secret().clone(),
                peer.to_x25519(),
                psk.map(|k| k.bytes()),
                keepalive.filter(|k| *k > 0),
                slot,
                Some(limiter),
            ),
        })
    }
}

impl PeerSession for NoiseSession {
    #[inline]
    fn encapsulate<'a>(&mut self, packet: &[u8], out: &'a mut [u8]) -> SessionOutput<'a> {
        if out.len() < packet.len() + 32 || out.len() < 148 {
            return SessionOutput::Failed(SessionError::BufferTooSmall);
        }
        self.tunn.encapsulate(packet, out).into()
    }

    #[inline]
    fn decapsulate<'a>(
        &mut self,
        from: Option<IpAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> SessionOutput<'a> {
        if datagram.is_empty() {
            return SessionOutput::Failed(SessionError::Malformed);
        }
        if out.len() < datagram.len() {
            return SessionOutput::Failed(SessionError::BufferTooSmall);
        }
        self.tunn.decapsulate(from, datagram, out).into()
    }

    fn next_queued<'a>(&mut self, out: &'a mut [u8]) -> SessionOutput<'a> {
        // boringtun's convention: an empty datagram asks for the queue.
        self.tunn.decapsulate(None, &[], out).into()
    }

    fn update_timers<'a>(&mut self, out: &'a mut [u8]) -> SessionOutput<'a> {
        self.tunn.update_timers(out).into()
    }

    fn initiate_handshake<'a>(&mut self, out: &'a mut [u8], force: bool) -> SessionOutput<'a> {
        self.tunn.format_handshake_initiation(out, force).into()
    }

    fn since_last_handshake(&self) -> Option<Duration> {
        self.tunn.time_since_last_handshake()
    }
}

/// What the guard says about an incoming handshake message.
#[derive(Debug)]
pub enum Admission<'a> {
    /// MACs are valid and we are not under load, or the cookie (mac2) is valid.
    Admit,
    /// Under load and no valid cookie: send this cookie reply back instead.
    SendCookie(&'a [u8]),
    /// Refused without an answer: a bad mac1, or not a handshake.
    Reject(SessionError),
}

/// Device-wide checks on handshake messages before any per-peer work: mac1
/// (proves the sender knows our public key), a handshake budget per second
/// beyond which senders must prove their address with a cookie, and the
/// anonymous decryption of an initiation's static key.
pub struct HandshakeGuard {
    limiter: RateLimiter,
    /// Checks MACs inside sessions without limiting again.
    session_limiter: Arc<RateLimiter>,
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
}

impl HandshakeGuard {
    /// `per_second` handshake messages are admitted freely each second.
    pub fn new(private: &PrivateKey, per_second: u64) -> HandshakeGuard {
        let public = x25519::PublicKey::from(private.secret());
        HandshakeGuard {
            limiter: RateLimiter::new(&public, per_second),
            session_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            private: private.secret().clone(),
            public,
        }
    }

    /// The MAC checker to give every `NoiseSession` of this device.
    pub fn session_limiter(&self) -> Arc<RateLimiter> {
        self.session_limiter.clone()
    }

    /// Checks a handshake message (initiation or response) from `from`.
    pub fn admit<'a>(&self, from: IpAddr, datagram: &[u8], cookie: &'a mut [u8]) -> Admission<'a> {
        match self.limiter.verify_packet(Some(from), datagram, cookie) {
            Ok(_) => Admission::Admit,
            Err(TunnResult::WriteToNetwork(reply)) => Admission::SendCookie(reply),
            Err(TunnResult::Err(e)) => Admission::Reject(e.into()),
            Err(_) => Admission::Reject(SessionError::Malformed),
        }
    }

    /// Starts a new budget period; call once a second.
    pub fn reset_budget(&self) {
        self.limiter.reset_count();
    }

    /// The static public key of whoever sent this initiation (one DH), if it
    /// decrypts with our key.
    pub fn initiator(&self, datagram: &[u8]) -> Result<PublicKey, SessionError> {
        match Tunn::parse_incoming_packet(datagram)? {
            Packet::HandshakeInit(init) => {
                let half = parse_handshake_anon(&self.private, &self.public, &init)?;
                Ok(PublicKey::from_bytes(half.peer_static_public))
            }
            _ => Err(SessionError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::WireMessage;

    fn pair() -> (PrivateKey, PrivateKey) {
        (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        )
    }

    #[test]
    fn two_sessions_handshake_and_carry_data() {
        let (ka, kb) = pair();
        let ga = HandshakeGuard::new(&ka, 100);
        let gb = HandshakeGuard::new(&kb, 100);
        let mut a =
            NoiseSession::new(&ka, kb.public_key(), None, None, 7, ga.session_limiter()).unwrap();
        let mut b =
            NoiseSession::new(&kb, ka.public_key(), None, None, 9, gb.session_limiter()).unwrap();
        let from: IpAddr = "198.18.0.1".parse().unwrap();
        let mut buf_a = vec![0u8; 2048];
        let mut buf_b = vec![0u8; 2048];
        let mut cookie = [0u8; 64];

        // A packet with no session yet starts a handshake and is queued.
        let mut packet = vec![0u8; 40];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&40u16.to_be_bytes());
        let init = match a.encapsulate(&packet, &mut buf_a) {
            SessionOutput::ToNetwork(m) => m.to_vec(),
            other => panic!("expected an initiation, got {other:?}"),
        };
        assert!(matches!(
            WireMessage::classify(&init),
            Ok(WireMessage::HandshakeInitiation { sender }) if sender >> 8 == 7
        ));
        assert!(matches!(
            gb.admit(from, &init, &mut cookie),
            Admission::Admit
        ));
        assert_eq!(gb.initiator(&init).unwrap(), ka.public_key());
        // Someone else's guard cannot read who it is from.
        assert!(ga.initiator(&init).is_err());

        let response = match b.decapsulate(Some(from), &init, &mut buf_b) {
            SessionOutput::ToNetwork(m) => m.to_vec(),
            other => panic!("expected a response, got {other:?}"),
        };
        assert!(matches!(
            WireMessage::classify(&response),
            Ok(WireMessage::HandshakeResponse { receiver, .. }) if receiver >> 8 == 7
        ));
        let keepalive = match a.decapsulate(Some(from), &response, &mut buf_a) {
            SessionOutput::ToNetwork(m) => m.to_vec(),
            other => panic!("expected a keepalive, got {other:?}"),
        };
        assert!(matches!(
            b.decapsulate(Some(from), &keepalive, &mut buf_b),
            SessionOutput::Done
        ));
        // The queued packet comes out now, addressed to b's slot.
        let data = match a.next_queued(&mut buf_a) {
            SessionOutput::ToNetwork(m) => m.to_vec(),
            other => panic!("expected queued data, got {other:?}"),
        };
        assert!(matches!(
            WireMessage::classify(&data),
            Ok(WireMessage::Data { receiver, .. }) if receiver >> 8 == 9
        ));
        match b.decapsulate(Some(from), &data, &mut buf_b) {
            SessionOutput::ToTunnel(p) => assert_eq!(p, &packet[..]),
            other => panic!("expected the packet, got {other:?}"),
        }
        // A replay is refused.
        assert!(matches!(
            b.decapsulate(Some(from), &data, &mut buf_b),
            SessionOutput::Failed(SessionError::Replay)
        ));
        // A flipped bit fails authentication.
        let mut forged = data.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        forged[8] = forged[8].wrapping_add(1);
        assert!(matches!(
            b.decapsulate(Some(from), &forged, &mut buf_b),
            SessionOutput::Failed(SessionError::Authentication)
        ));
        assert!(a.since_last_handshake().is_some());
        assert!(b.since_last_handshake().is_some());
    }

    #[test]
    fn the_guard_asks_for_cookies_under_load() {
        let (ka, kb) = pair();
        let ga = HandshakeGuard::new(&ka, 2);
        let gb = HandshakeGuard::new(&kb, 2);
        let mut a =
            NoiseSession::new(&ka, kb.public_key(), None, None, 1, ga.session_limiter()).unwrap();
        let from: IpAddr = "198.18.0.1".parse().unwrap();
        let mut out = vec![0u8; 256];
        let mut cookie = [0u8; 64];
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            let init = match a.initiate_handshake(&mut out, true) {
                SessionOutput::ToNetwork(m) => m.to_vec(),
                other => panic!("{other:?}"),
            };
            verdicts.push(match gb.admit(from, &init, &mut cookie) {
                Admission::Admit => "admit",
                Admission::SendCookie(c) => {
                    assert!(matches!(
                        WireMessage::classify(c),
                        Ok(WireMessage::CookieReply { .. })
                    ));
                    "cookie"
                }
                Admission::Reject(e) => panic!("{e}"),
            });
        }
        assert_eq!(verdicts, ["admit", "admit", "cookie", "cookie"]);
        // A message whose mac1 was made for another key is refused outright.
        let (kc, _) = pair();
        let gc = HandshakeGuard::new(&kc, 100);
        let init = match a.initiate_handshake(&mut out, true) {
            SessionOutput::ToNetwork(m) => m.to_vec(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            gc.admit(from, &init, &mut cookie),
            Admission::Reject(SessionError::Authentication)
        ));
    }

    #[test]
    fn slots_must_fit_in_24_bits() {
        let (ka, kb) = pair();
        let g = HandshakeGuard::new(&ka, 1);
        assert!(matches!(
            NoiseSession::new(
                &ka,
                kb.public_key(),
                None,
                None,
                1 << 24,
                g.session_limiter()
            ),
            Err(SessionError::SlotOutOfRange(_))
        ));
    }
}
