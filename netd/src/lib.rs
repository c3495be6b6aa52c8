//! netd: weft's host network model. Network config, IPAM with a persistent
//! store, container endpoints (attach/detach), published ports,
//! reconciliation of the kernel against the state, the daemon with its API
//! on a unix socket, and the admin CLI that talks to it.
//!
//! The library entry point is [`Network`]: the core ([`host::Host`]) and its
//! parts ([`endpoints::Endpoints`], [`ports::Ports`]). The daemon
//! ([`daemon::Daemon`]) adds the overlay, the link reaper and the `[::1]`
//! relay. docs/architecture.md draws the parts.

pub mod action;
pub mod api;
pub(crate) mod atomic_file;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod endpoints;
pub mod error;
pub mod host;
pub mod ipam;
pub mod metrics;
pub mod names;
pub mod network;
pub mod overlap;
pub mod overlay;
pub mod ports;
pub mod quarantine;
pub mod recover;
pub mod state;

pub use action::Action;
pub use config::{Config, ConfigArgs, FirewallKind};
pub use endpoints::{
    AssignedAddresses, AttachRequest, AttachResult, CheckExpected, ContainerRoute, DetachReport,
    GcReport, Ipv4Range, ReconcileReport,
};
pub use error::{Error, ErrorKind, Result};
pub use network::Network;
pub use ports::{PortMapping, PublishedPort};
pub use state::{Endpoint, Phase, Store};
