//! plumb: kernel network plumbing for containers, with no policy and no state
//! of its own. Links, addresses, routes, namespaces and sysctls over netlink,
//! generic packet-filter access (`firewall`: nfnetlink set elements, nft
//! scripts, iptables-restore; which tables and rules is the caller's policy),
//! and the pipework-style wiring (`wire`) and declarative topologies
//! (`topology`, with the `topology` feature) the `plumb` CLI offers. The CLI
//! itself is the `plumb` binary (src/bin/plumb/, the `cli` feature, on by
//! default); a crate that only needs the library depends on plumb with
//! `default-features = false` and compiles none of clap, toml or
//! tracing-subscriber.
//!
//! Everything operates on a [`Netlink`] connection bound to one namespace:
//!
//! ```no_run
//! # async fn demo() -> plumb::Result<()> {
//! let ns = plumb::Netns::named("c1")?;
//! let nl = plumb::Netlink::open(&ns).await?;
//! nl.add_bridge("br0", &plumb::LinkOptions { up: true, ..Default::default() }).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod addr;
pub mod arp;
pub mod dhcp;
pub mod error;
pub mod firewall;
pub mod handle;
pub mod link;
pub mod mac;
pub mod netns;
pub mod route;
pub mod sysctl;
#[cfg(feature = "topology")]
pub mod topology;
pub mod wire;

pub use addr::{parse_cidr, Address};
pub use error::{Error, Result, BRIDGE_MAX_PORTS};
pub use handle::Netlink;
pub use link::{validate_ifname, Link, LinkChange, LinkOptions, MacvlanMode, VxlanSpec};
pub use mac::MacAddr;
pub use netns::Netns;
pub use route::Route;
