//! The device's static key and its change in place (key rotation), and a
//! handshake started on demand (a peer whose key changed).

use std::sync::Arc;

use super::{send_one, Device, DeviceError, Shared};
use crate::keys::{PrivateKey, PublicKey};
use crate::session::{HandshakeGuard, SessionOutput};

/// The device's static key pair and the guard that checks handshakes against it.
pub(crate) struct DeviceKeys {
    pub private_key: PrivateKey,
    pub public_key: PublicKey,
    pub guard: HandshakeGuard,
}

impl DeviceKeys {
    pub(super) fn new(private_key: PrivateKey, handshakes_per_second: u64) -> DeviceKeys {
        DeviceKeys {
            guard: HandshakeGuard::new(&private_key, handshakes_per_second),
            public_key: private_key.public_key(),
            private_key,
        }
    }
}

impl Shared {
    /// The current keys (a cheap clone of the pointer).
    pub(crate) fn keys(&self) -> Arc<DeviceKeys> {
        self.keys.read().expect("device keys lock poisoned").clone()
    }
}

impl Device {
    /// Replaces the device's static private key in place (key rotation),
    /// while traffic flows and without touching the TUN link or the socket.
    ///
    /// Every peer's session is dropped (one with a persistent keepalive gets
    /// a new one under the new key at once, the others when next needed):
    /// packets in flight under the old sessions are refused, and the next
    /// packet to or from a peer starts a handshake under the new key. Peers
    /// keep their slot, endpoint (configured or learnt), allowed IPs and
    /// counters. Initiations made with the old key no longer decrypt: they
    /// are dropped as from an unknown key. Refused when the new public key is
    /// a peer's (the device would talk to itself); nothing changes then.
    pub fn set_private_key(&self, private_key: PrivateKey) -> Result<(), DeviceError> {
        let s = &self.shared;
        let keys = Arc::new(DeviceKeys::new(private_key, s.handshakes_per_second));
        // The table's write lock keeps the data path out while keys and
        // sessions change together: no packet sees a session of the old key
        // beside the new guard.
        let table = s.peers.write().expect("peer table lock poisoned");
        if table.by_key.contains_key(&keys.public_key) {
            return Err(DeviceError::OwnKey {
                name: s.name.clone(),
                peer: keys.public_key,
            });
        }
        // Made first, so that nothing has changed when one fails.
        let mut sessions = Vec::with_capacity(table.by_key.len());
        for peer in table.by_key.values() {
            let fresh = peer
                .state
                .lock()
                .expect("peer state lock poisoned")
                .fresh(&keys);
            let fresh = fresh.map_err(|source| DeviceError::Session {
                name: s.name.clone(),
                peer: peer.config.lock().expect("peer config lock").public_key,
                source,
            })?;
            sessions.push((peer.clone(), fresh));
        }
        for (peer, session) in sessions {
            peer.state
                .lock()
                .expect("peer state lock poisoned")
                .replace_session(session);
        }
        let old = std::mem::replace(
            &mut *s.keys.write().expect("device keys lock poisoned"),
            keys.clone(),
        );
        drop(table);
        tracing::info!(
            device = %s.name,
            old_public_key = %old.public_key,
            public_key = %keys.public_key,
            "private key replaced; every peer handshakes again"
        );
        Ok(())
    }

    /// Sends a handshake initiation to a peer now, rather than at its next
    /// packet: used when a peer's key changed, so the session under the new
    /// key is up before traffic waits on it (a side whose own initiation was
    /// refused retries only after WireGuard's 5 s rekey timeout). Returns
    /// false, having sent nothing, when the peer's endpoint is not known yet
    /// or a handshake with it is already in flight.
    pub fn initiate_handshake(&self, key: &PublicKey) -> Result<bool, DeviceError> {
        let s = &self.shared;
        let table = s.peers.read().expect("peer table lock poisoned");
        let Some(peer) = table.by_key.get(key) else {
            return Err(DeviceError::UnknownPeer {
                name: s.name.clone(),
                peer: *key,
            });
        };
        let mut state = peer.state.lock().expect("peer state lock poisoned");
        let Some(to) = state.endpoint else {
            return Ok(false);
        };
        let mut out = [0u8; 256];
        let session = state
            .session(|| s.keys())
            .map_err(|source| DeviceError::Session {
                name: s.name.clone(),
                peer: *key,
                source,
            })?;
        match session.initiate_handshake(&mut out, false) {
            SessionOutput::ToNetwork(message) => {
                peer.counters.handshakes.sent(message);
                send_one(s, message, to, &peer.counters.drops);
                Ok(true)
            }
            // A handshake already in flight: it goes on.
            _ => Ok(false),
        }
    }
}
