//! The device's peers, found three ways: by static key (handshake
//! initiations), by slot (the upper 24 bits of a message's receiver index) and
//! by inner address (allowed IPs).

use std::collections::HashMap;
use std::sync::Arc;

use crate::allowed_ips::AllowedIps;
use crate::keys::PublicKey;

use super::peer::Peer;

#[derive(Default)]
pub(crate) struct PeerTable {
    pub by_key: HashMap<PublicKey, Arc<Peer>>,
    pub by_slot: HashMap<u32, Arc<Peer>>,
    pub allowed: AllowedIps<u32>,
}

impl PeerTable {
    /// The peer whose session a message with receiver index `index` belongs to.
    #[inline]
    pub fn by_index(&self, index: u32) -> Option<&Arc<Peer>> {
        self.by_slot.get(&(index >> 8))
    }

    /// The peer the inner destination `dst` routes to.
    #[inline]
    pub fn route(&self, dst: std::net::IpAddr) -> Option<&Arc<Peer>> {
        self.allowed
            .lookup(dst)
            .and_then(|slot| self.by_slot.get(&slot))
    }
}
