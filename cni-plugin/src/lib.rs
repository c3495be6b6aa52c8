//! The weft CNI plugin: the CNI protocol (SPEC.md of containernetworking/cni,
//! spec 1.1.0, answering 0.3.0 to 1.1.0) on top of netd.
//!
//! - [`front_door`]: what the binary does when a person runs it (`--help`);
//! - [`env`](mod@env): the CNI_* variables; [`netns`]: CNI_NETNS, never the host's;
//! - [`types`]: the network config on stdin; [`subnet`]: subnets no network may use;
//! - [`version`]: versions and the result shape of each; [`result`]: the result;
//! - [`error`]: the error result, its codes, and the plugin's error kinds;
//! - [`ipam_delegate`]: exec'ing an IPAM plugin from CNI_PATH;
//! - [`commands`]: ADD, DEL, CHECK, STATUS, GC, VERSION, over a [`Backend`];
//! - [`select`]: the backend a config's `mode` picks: [`standalone`] (netd's
//!   library) or [`daemon`] (netd's API), sharing [`backend::common`], and
//!   mapping CNI to netd through [`wiring`], [`delegated`] and [`range`]. netd does every
//!   change to the kernel and every look at it; the plugin opens no netlink.

pub mod backend;
pub mod commands;
pub mod daemon;
pub mod delegated;
pub mod env;
pub mod error;
pub mod front_door;
pub mod ipam_delegate;
pub mod names;
pub mod netns;
pub mod range;
pub mod result;
pub mod select;
pub mod standalone;
pub mod subnet;
pub mod types;
pub mod version;
pub mod wiring;

pub use backend::Backend;
pub use error::{CniError, ErrorCode};
