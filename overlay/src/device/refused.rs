//! Initiators refused for an unknown key, remembered for a few seconds. In a
//! cluster two hosts learn of each other from the store at slightly
//! different moments: the first one's initiation can reach the other before
//! it has the peer, and WireGuard tries again only after its 5 s rekey
//! timeout. When such a key is added as a peer, the device handshakes with
//! it at once instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::keys::PublicKey;

/// How long a refused initiator is remembered.
const MEMORY: Duration = Duration::from_secs(10);
/// How many are remembered at most (the oldest goes first): anyone who knows
/// the device's public key can make initiations under keys of their own.
const CAPACITY: usize = 256;

/// The recently refused initiators and where they wrote from.
#[derive(Debug, Default)]
pub(crate) struct RefusedInitiators {
    seen: HashMap<PublicKey, (Instant, SocketAddr)>,
}

impl RefusedInitiators {
    /// Remembers an initiation from `key` at `from`, refused now.
    pub(crate) fn remember(&mut self, key: PublicKey, from: SocketAddr) {
        let now = Instant::now();
        if self.seen.len() >= CAPACITY && !self.seen.contains_key(&key) {
            self.seen
                .retain(|_, (at, _)| now.duration_since(*at) < MEMORY);
            if self.seen.len() >= CAPACITY {
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| *k)
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        self.seen.insert(key, (now, from));
    }

    /// Where `key` last tried from, if it was refused recently; forgets it.
    pub(crate) fn take(&mut self, key: &PublicKey) -> Option<SocketAddr> {
        let (at, from) = self.seen.remove(key)?;
        (at.elapsed() < MEMORY).then_some(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    #[test]
    fn a_refused_key_is_taken_once_and_the_memory_stays_bounded() {
        let mut refused = RefusedInitiators::default();
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        refused.remember(key(1), from);
        assert_eq!(refused.take(&key(1)), Some(from));
        assert_eq!(refused.take(&key(1)), None, "taken once");
        for n in 0..=255u8 {
            refused.remember(key(n), from);
        }
        refused.remember(PublicKey::from_bytes([7; 32]), from);
        assert!(refused.seen.len() <= CAPACITY);
        assert_eq!(refused.take(&key(200)), Some(from));
    }
}
