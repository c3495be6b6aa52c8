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
/// The value of [`MADE_BY_KEY`] on what `plumb apply` made.
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
    /// The bridges, in file order.
    pub bridges: Vec<Bridge>,
    /// The guests, in file order.
    pub guests: Vec<Guest>,
}

/// A bridge in the namespace plumb runs in (the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bridge {
    /// The bridge's name.
    pub name: String,
    /// Addresses the bridge itself holds (the guests' gateway, typically).
    pub addresses: Vec<IpNetwork>,
    /// Its MTU; the kernel's default when None.
    pub mtu: Option<u32>,
}

/// A guest: a named namespace in /run/netns, created when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guest {
    /// The namespace's name in /run/netns.
    pub name: String,
    /// Its interfaces, in file order.
    pub interfaces: Vec<Interface>,
    /// Its static routes, besides the default routes its gateways make.
    pub routes: Vec<GuestRoute>,
}

/// One interface of a guest, wired as `plumb HOST GUEST …` would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// The interface's name in the guest.
    pub name: String,
    /// A bridge (the guest gets a veth) or any other host link (a macvlan).
    pub host: String,
    /// Its addresses with their prefix lengths.
    pub addresses: Vec<IpNetwork>,
    /// The IPv4 default gateway over this interface.
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 default gateway over this interface.
    pub gateway6: Option<Ipv6Addr>,
    /// Its MAC; the kernel picks one when None.
    pub mac: Option<MacAddr>,
    /// A VLAN of the host link to put a macvlan on.
    pub vlan: Option<u16>,
    /// The macvlan mode; bridge when None.
    pub mode: Option<MacvlanMode>,
    /// Its MTU; the host link's when None.
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
    /// The next hop.
    pub via: Option<IpAddr>,
    /// The guest's interface it leaves by.
    pub dev: Option<String>,
    /// Its priority (lower wins).
    pub metric: Option<u32>,
}

impl GuestRoute {
    /// The route as plumb adds it (a /0 destination becomes the default route).
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

    /// The guest of this name, if the file has one.
    pub fn guest(&self, name: &str) -> Option<&Guest> {
        self.guests.iter().find(|g| g.name == name)
    }

    /// The bridge of this name, if the file has one.
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
    /// Who made a link with this alias.
    pub fn of_alias(alias: Option<&str>) -> Maker {
        let Some(record) = alias.and_then(Record::parse) else {
            return Maker::Other;
        };
        match (record.get(MADE_BY_KEY), record.get(TOPOLOGY_KEY)) {
            (Some(MADE_BY_APPLY), Some(name)) => Maker::Topology(name.to_string()),
            _ => Maker::PlumbWire,
        }
    }

    /// True when made by `plumb apply` for the topology `name`.
    pub fn is_topology(&self, name: &str) -> bool {
        matches!(self, Maker::Topology(n) if n == name)
    }
}

/// Errors of reading, planning and applying a topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("read topology {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },

    /// The TOML itself is malformed or has an unknown key; toml's message
    /// names the line and the key.
    #[error("topology {path}: {message}")]
    Syntax {
        /// The file's path.
        path: String,
        /// toml's message, with the line and the key.
        message: String,
    },

    /// The file is well-formed but says impossible things.
    #[error("topology {path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid {
        /// The file's path.
        path: String,
        /// Every problem found, one sentence each, with its line.
        problems: Vec<String>,
    },

    /// The file conflicts with what the kernel holds; nothing was changed.
    #[error("topology {topology} cannot be applied, nothing was changed:\n  - {}", .problems.join("\n  - "))]
    Conflicts {
        /// The topology's name.
        topology: String,
        /// Each conflict, one sentence each.
        problems: Vec<String>,
    },

    /// Reading the kernel's state failed; nothing was changed.
    #[error("observe the kernel for topology {topology}: {source}")]
    Observe {
        /// The topology's name.
        topology: String,
        /// What plumb said.
        #[source]
        source: Box<crate::Error>,
    },

    /// An action failed; the ones before it were applied, none after it.
    #[error("topology {topology}: action {number} of {total} failed ({action}); {done} applied before it")]
    Action {
        /// The topology's name.
        topology: String,
        /// The failed action's position, from 1.
        number: usize,
        /// Actions in the plan.
        total: usize,
        /// Actions carried out before it.
        done: usize,
        /// The failed action in words.
        action: String,
        /// What plumb said.
        #[source]
        source: Box<crate::Error>,
    },
}

/// A result with the topology [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
