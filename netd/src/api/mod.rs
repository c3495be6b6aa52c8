//! netd's API: HTTP/1.1 with JSON bodies on a unix socket (mode 0600).
//!
//! | method and path                   | body            | answer            |
//! |-----------------------------------|-----------------|-------------------|
//! | GET    /v1/status                 |                 | [`Status`]        |
//! | GET    /v1/containers             |                 | endpoints         |
//! | POST   /v1/containers             | AttachRequest   | AttachResult      |
//! | GET    /v1/containers/{id|name}   |                 | AttachResult      |
//! | GET    /v1/containers/{id}/check  |                 | {"ok": true}      |
//! | POST   /v1/containers/{id}/check  | CheckExpected   | {"ok": true}      |
//! | DELETE /v1/containers/{id|name}   |                 | DetachReport      |
//! | POST   /v1/containers/{id}/ports  | PortsRequest    | published ports   |
//! | DELETE /v1/containers/{id}/ports  | PortsRequest    | withdrawn ports   |
//! | POST   /v1/reconcile              |                 | ReconcileReport   |
//! | GET    /v1/peers                  |                 | [`PeerReport`]s   |
//! | GET    /v1/names                  |                 | [`NameRow`]s      |
//!
//! Errors come back with a 4xx/5xx status and `{"error": "sentence",
//! "kind": "not_found"}`; the kind is one of [`ErrorKind`]'s, and the client
//! turns the answer back into an [`crate::Error`] of that kind.
//!
//! The server is the daemon's (`daemon/server.rs`).

pub mod client;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::config::FirewallKind;
use crate::error::ErrorKind;
use crate::ipam::Usage;
pub use crate::names::NameRow;
pub use crate::overlay::{OverlayStatus, PeerReport};

/// What `netd status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub bridge: String,
    pub subnets: Vec<IpNetwork>,
    pub gateways: Vec<IpAddr>,
    pub containers: usize,
    pub ipam: Vec<Usage>,
    pub firewall: FirewallKind,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The WireGuard overlay; None when it is off.
    #[serde(default)]
    pub overlay: Option<OverlayStatus>,
    /// The DNS server on the gateways; None when names are off.
    #[serde(default)]
    pub dns: Option<DnsStatus>,
}

/// What containers put in their resolv.conf to use the names netd serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// The gateway addresses, where the server listens (port 53).
    pub nameservers: Vec<IpAddr>,
    /// The search domain every name also answers under.
    pub search: String,
}

/// The body of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// Absent from a netd older than the kinds: the client then takes the status's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, error: String) -> ErrorBody {
        ErrorBody {
            error,
            kind: Some(kind),
        }
    }
}
