//! Declarative topologies: bridges, guest namespaces, their interfaces,
//! addresses and routes, written in a TOML file and applied idempotently
//! (`plumb apply FILE`).
//!
//! The work is done in four steps, each its own file:
//! - [`file`](mod@file) reads and checks the TOML (every problem at once, with its line);
//! - [`observe`](mod@observe) reads what the kernel holds now;
//! - [`plan`](mod@plan) compares both and yields the [`Action`]s (in [`action`]) that
//!   close the gap;
//! - [`apply`](mod@apply) runs them in order, stopping at the first failure.
//!
//! What apply makes is marked in the kernel, as the rest of plumb does: links
//! carry `by=apply topology=NAME` in their alias record, and a namespace apply
//! created carries `plumb-netns:by=apply topology=NAME` on its `lo`. So a second run, or a run after a
//! reboot, needs no state file, and `--prune` removes only what this topology
//! made.

pub mod action;
pub mod apply;
pub mod file;
pub mod observe;
pub mod plan;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::mac::MacAddr;
use crate::route::Route;
use crate::wire::Record;
use crate::MacvlanMode;

pub use action::{Action, Place, WireKind};
pub use apply::{apply, Outcome};
pub use file::{load, parse};
pub use observe::{observe, Observed};
pub use plan::{plan, Plan};

/// The record key saying which tool made an object, and its value for apply.
pub const MADE_BY_KEY: &str = "by";
pub const MADE_BY_APPLY: &str = "apply";
/// The record key naming the topology that made an object.
pub const TOPOLOGY_KEY: &str = "topology";
/// The alias of `lo` in a namespace apply created starts with this, not with
/// plumb's link prefix: it marks the namespace, not a wiring that `plumb del`
/// or `plumb ls` should see.
pub const NAMESPACE_MARK_PREFIX: &str = "plumb-netns:";

/// A whole topology file, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Scopes `--prune`: only objects marked with this name are removed. The
    /// file's `name` key, or its file name without `.toml`.
    pub name: String,
    pub bridges: Vec<Bridge>,
    pub guests: Vec<Guest>,
}

/// A bridge in the namespace plumb runs in (the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridge {
    pub name: String,
    pub addresses: Vec<IpNetwork>,
    pub mtu: Option<u32>,
}

/// A guest: a named namespace in /run/netns, created when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guest {
    pub name: String,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<GuestRoute>,
}

/// One interface of a guest, wired as `plumb HOST GUEST …` would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    /// A bridge (the guest gets a veth) or any other host link (a macvlan).
    pub host: String,
    pub addresses: Vec<IpNetwork>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub mac: Option<MacAddr>,
    pub vlan: Option<u16>,
    pub mode: Option<MacvlanMode>,
    pub mtu: Option<u32>,
}

impl Interface {
    /// The gateways as default routes over this interface.
    pub fn gateway_routes(&self) -> Vec<Route> {
        let gateways = [self.gateway.map(IpAddr::V4), self.gateway6.map(IpAddr::V6)];
        gateways
            .into_iter()
            .flatten()
            .map(|gw| Route {
                gateway: Some(gw),
                dev: Some(self.name.clone()),
                ipv6: gw.is_ipv6(),
                ..Default::default()
            })
            .collect()
    }
}

/// A `[[guest.route]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestRoute {
    /// The destination; a /0 is the default route of its family.
    pub to: IpNetwork,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub metric: Option<u32>,
}

impl GuestRoute {
    pub fn to_route(&self) -> Route {
        Route {
            destination: (self.to.prefix() != 0).then_some(self.to),
            gateway: self.via,
            dev: self.dev.clone(),
            metric: self.metric,
            ipv6: self.to.is_ipv6(),
            ..Default::default()
        }
    }
}

impl Topology {
    /// The alias record fields that mark an object as made by this topology.
    pub fn mark(&self) -> [(&'static str, String); 2] {
        [
            (MADE_BY_KEY, MADE_BY_APPLY.to_string()),
            (TOPOLOGY_KEY, self.name.clone()),
        ]
    }

    /// `record` with this topology's mark added (replacing an older mark).
    pub fn marked(&self, record: &Record) -> Record {
        let mut out = Record {
            fields: record
                .fields
                .iter()
                .filter(|(k, _)| k != MADE_BY_KEY && k != TOPOLOGY_KEY)
                .cloned()
                .collect(),
        };
        for (k, v) in self.mark() {
            out.fields.push((k.to_string(), v));
        }
        out
    }

    pub fn guest(&self, name: &str) -> Option<&Guest> {
        self.guests.iter().find(|g| g.name == name)
    }

    pub fn bridge(&self, name: &str) -> Option<&Bridge> {
        self.bridges.iter().find(|b| b.name == name)
    }
}

/// Who made an object, read from its alias record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maker {
    /// No plumb record: made by hand or by another tool. Never changed or removed.
    Other,
    /// Made by `plumb` wiring (`plumb HOST GUEST …`), not by a topology.
    PlumbWire,
    /// Made by `plumb apply` for the topology of this name.
    Topology(String),
}

impl Maker {
    pub fn of_alias(alias: Option<&str>) -> Maker {
        let Some(record) = alias.and_then(Record::parse) else {
            return Maker::Other;
        };
        match (record.get(MADE_BY_KEY), record.get(TOPOLOGY_KEY)) {
            (Some(MADE_BY_APPLY), Some(name)) => Maker::Topology(name.to_string()),
            _ => Maker::PlumbWire,
        }
    }

    pub fn is_topology(&self, name: &str) -> bool {
        matches!(self, Maker::Topology(n) if n == name)
    }
}

/// Errors of reading, planning and applying a topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read topology {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The TOML itself is malformed or has an unknown key; toml's message
    /// names the line and the key.
    #[error("topology {path}: {message}")]
    Syntax { path: String, message: String },

    /// The file is well-formed but says impossible things.
    #[error("topology {path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid { path: String, problems: Vec<String> },

    /// The file conflicts with what the kernel holds; nothing was changed.
    #[error("topology {topology} cannot be applied, nothing was changed:\n  - {}", .problems.join("\n  - "))]
    Conflicts {
        topology: String,
        problems: Vec<String>,
    },

    #[error("observe the kernel for topology {topology}: {source}")]
    Observe {
        topology: String,
        #[source]
        source: Box<crate::Error>,
    },

    /// An action failed; the ones before it were applied, none after it.
    #[error("topology {topology}: action {number} of {total} failed ({action}); {done} applied before it")]
    Action {
        topology: String,
        number: usize,
        total: usize,
        done: usize,
        action: String,
        #[source]
        source: Box<crate::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
