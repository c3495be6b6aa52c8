//! A peer's handshake attempts: initiations sent that no handshake answered
//! yet, and why the last attempt failed. A dead or unreachable peer shows here
//! (`netd peers`) rather than only in the log.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::session::SessionError;

/// Why a handshake attempt with a peer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum HandshakeFailure {
    /// An initiation got no response within WireGuard's 5 s rekey timeout
    /// (the peer is down, unreachable, or does not know our key).
    NoResponse,
    /// The peer's answer was refused (bad MAC, wrong key, stale timestamp).
    Refused(#[serde(serialize_with = "display")] SessionError),
    /// A handshake was due but the peer's endpoint is not known.
    NoEndpoint,
    /// No handshake succeeded for 90 s: the session gave up until the next packet.
    GaveUp,
}

fn display<S: serde::Serializer>(e: &SessionError, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(e)
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::NoResponse => f.write_str("no response to the initiation"),
            HandshakeFailure::Refused(e) => write!(f, "answer refused: {e}"),
            HandshakeFailure::NoEndpoint => f.write_str("no endpoint known"),
            HandshakeFailure::GaveUp => f.write_str("gave up after 90 s without a handshake"),
        }
    }
}

/// What a peer's handshakes look like now (part of `PeerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeAttempts {
    /// Initiations sent since the last completed handshake (0: none pending).
    pub unanswered: u64,
    /// Initiations sent in all.
    pub initiations: u64,
    /// The last failure and when it happened; kept after a later success.
    pub last_failure: Option<(HandshakeFailure, SystemTime)>,
}

/// The per-peer tally. Touched only by handshake messages and timers, never
/// by data packets: a mutex costs nothing here.
#[derive(Debug, Default)]
pub(crate) struct HandshakeTally(Mutex<HandshakeAttempts>);

impl HandshakeTally {
    fn with(&self, f: impl FnOnce(&mut HandshakeAttempts)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A message went to the peer: an initiation counts as an attempt; one
    /// sent while the previous is unanswered means that one got no response.
    pub(crate) fn sent(&self, wire: &[u8]) {
        if wire.first() != Some(&1) {
            return;
        }
        self.with(|a| {
            if a.unanswered > 0 {
                a.last_failure = Some((HandshakeFailure::NoResponse, SystemTime::now()));
            }
            a.unanswered += 1;
            a.initiations += 1;
        })
    }

    /// A handshake completed (either side initiated): nothing is pending.
    pub(crate) fn completed(&self) {
        self.with(|a| a.unanswered = 0)
    }

    pub(crate) fn failed(&self, why: HandshakeFailure) {
        self.with(|a| a.last_failure = Some((why, SystemTime::now())))
    }

    pub(crate) fn snapshot(&self) -> HandshakeAttempts {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_initiations_count_until_a_handshake_completes() {
        let t = HandshakeTally::default();
        t.sent(&[4, 0, 0, 0]);
        assert_eq!(t.snapshot(), HandshakeAttempts::default());
        t.sent(&[1, 0, 0, 0]);
        assert_eq!(t.snapshot().unanswered, 1);
        assert!(t.snapshot().last_failure.is_none());
        t.sent(&[1, 0, 0, 0]);
        let s = t.snapshot();
        assert_eq!((s.unanswered, s.initiations), (2, 2));
        assert_eq!(s.last_failure.unwrap().0, HandshakeFailure::NoResponse);
        t.completed();
        let s = t.snapshot();
        assert_eq!((s.unanswered, s.initiations), (0, 2));
        assert!(s.last_failure.is_some(), "the last failure stays visible");
        t.failed(HandshakeFailure::Refused(SessionError::WrongKey));
        assert_eq!(
            t.snapshot().last_failure.unwrap().0.to_string(),
            "answer refused: handshake from a different static key than this peer's"
        );
    }
}
