//! netd: weft's host network model. Network config, IPAM with a persistent
//! store, container endpoints (attach/detach), reconciliation of the kernel
//! against the state, the daemon with its API on a unix socket, and the admin
//! CLI that talks to it.
//!
//! The library entry point is [`Network`]; see its docs for the calls a CNI
//! plugin makes in standalone mode.

pub mod api;
mod attach;
pub mod cli;
pub mod config;
pub mod daemon;
mod detach;
pub mod endpoint;
pub mod error;
pub mod gc;
pub mod ipam;
mod localhost_proxy;
pub mod metrics;
pub mod names;
pub mod network;
pub mod overlay;
pub mod publish;
pub mod reaper;
pub mod reconcile;
pub mod recover;
pub mod state;

pub use config::{Config, ConfigArgs, FirewallKind};
pub use endpoint::{AssignedAddresses, AttachRequest, AttachResult, DetachReport, Ipv4Range};
pub use error::{Error, Result};
pub use gc::GcReport;
pub use network::{Action, Network};
pub use reconcile::ReconcileReport;
pub use state::{Endpoint, Phase, Store};
