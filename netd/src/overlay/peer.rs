//! A peer as the overlay service applies it, whatever its source: an
//! `[[overlay.peer]]` entry or a host of the cluster store.

use std::net::SocketAddr;
use std::path::PathBuf;

use ::overlay::PublicKey;
use ipnetwork::IpNetwork;

use crate::config::overlay::StaticPeer;

/// Where a peer came from: netd.toml's list or the cluster store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerOrigin {
    Static,
    Store,
}

/// A peer as the service applies it, whatever its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayPeer {
    pub public_key: PublicKey,
    /// None: learnt from its traffic only (a cluster host advertising none).
    pub endpoint: Option<SocketAddr>,
    /// Its container subnets (IPv4, IPv6): allowed IPs and routes.
    pub subnets: Vec<IpNetwork>,
    pub preshared_key_file: Option<PathBuf>,
    pub persistent_keepalive: Option<u16>,
    pub origin: PeerOrigin,
    /// The cluster host's name and liveness (store peers only).
    pub host: Option<ClusterHostInfo>,
}

/// What the cluster says about a store peer; not applied to the device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterHostInfo {
    pub name: String,
    pub id: String,
    pub alive: bool,
    pub key_epoch: u64,
    /// The store revisions of the host's record and liveness key: both
    /// rewritten means the host started again with a new device.
    pub record_revision: i64,
    pub alive_revision: Option<i64>,
}

impl OverlayPeer {
    pub(super) fn from_static(peer: &StaticPeer) -> OverlayPeer {
        OverlayPeer {
            public_key: peer.public_key,
            endpoint: Some(peer.endpoint),
            subnets: vec![IpNetwork::V4(peer.subnet)],
            preshared_key_file: peer.preshared_key_file.clone(),
            persistent_keepalive: peer.persistent_keepalive,
            origin: PeerOrigin::Static,
            host: None,
        }
    }

    /// The same peer on the device and in the routing table (the cluster's
    /// bookkeeping, such as alive/dead, aside).
    pub(super) fn same_on_device(&self, other: &OverlayPeer) -> bool {
        self.public_key == other.public_key
            && self.endpoint == other.endpoint
            && self.subnets == other.subnets
            && self.preshared_key_file == other.preshared_key_file
            && self.persistent_keepalive == other.persistent_keepalive
    }

    pub(super) fn describe(&self) -> String {
        let subnets: Vec<String> = self.subnets.iter().map(|s| s.to_string()).collect();
        let endpoint = self
            .endpoint
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no endpoint".into());
        match &self.host {
            Some(h) => format!(
                "{} (host {}, {endpoint}, subnets {})",
                self.public_key,
                h.name,
                subnets.join(", ")
            ),
            None => format!(
                "{} ({endpoint}, subnet {})",
                self.public_key,
                subnets.join(", ")
            ),
        }
    }
}
