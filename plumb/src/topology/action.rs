//! The actions a plan is made of: each one change to the kernel, named so
//! that `plumb apply --dry-run` can print it and `--json` can report it, and
//! ordered in phases so that each finds what it needs already there.

use std::fmt;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::Interface;
use crate::route::Route;

/// A link in the host namespace or in a guest, as actions name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// None for the host namespace.
    pub guest: Option<String>,
    /// The link's name in that namespace.
    pub link: String,
}

impl Place {
    pub(super) fn host(link: &str) -> Place {
        Place {
            guest: None,
            link: link.to_string(),
        }
    }

    pub(super) fn guest(guest: &str, link: &str) -> Place {
        Place {
            guest: Some(guest.to_string()),
            link: link.to_string(),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.guest {
            Some(g) => write!(f, "{g}/{}", self.link),
            None => f.write_str(&self.link),
        }
    }
}

/// How an interface is wired: decided by its host link, as in pipework.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireKind {
    /// A veth pair: the host link is a bridge.
    Veth,
    /// A macvlan on the host link (any link that is not a bridge).
    Macvlan,
}

impl fmt::Display for WireKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireKind::Veth => "veth",
            WireKind::Macvlan => "macvlan",
        })
    }
}

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// An interface this topology made that the file no longer names.
    RemoveInterface {
        /// The guest it is in.
        guest: String,
        /// The interface's name in the guest.
        interface: String,
    },
    /// A namespace this topology created that the file no longer names.
    RemoveNamespace {
        /// The namespace's name in /run/netns.
        name: String,
    },
    /// A static route this topology added that the file no longer names.
    RemoveRoute {
        /// The guest it is in.
        guest: String,
        /// The route.
        route: Route,
    },
    /// An address on a link this topology made that the file no longer names.
    RemoveAddress {
        /// The link.
        place: Place,
        /// The address with its prefix length.
        address: IpNetwork,
    },
    /// A bridge this topology made, not in the file, with no ports left.
    RemoveBridge {
        /// The bridge's name.
        name: String,
    },
    /// A bridge the file names that does not exist.
    CreateBridge {
        /// The bridge's name.
        name: String,
        /// Its MTU; the kernel's default when None.
        mtu: Option<u32>,
    },
    /// Takes over a bridge `plumb` wiring made on demand, so that unwiring
    /// its last port no longer deletes it.
    MarkBridge {
        /// The bridge's name.
        name: String,
    },
    /// A bridge whose MTU differs from the file's.
    SetBridgeMtu {
        /// The bridge's name.
        name: String,
        /// The MTU the file asks for.
        mtu: u32,
    },
    /// A link that is down.
    BringUp {
        /// The link.
        place: Place,
    },
    /// An address the file names that the link lacks.
    AddAddress {
        /// The link.
        place: Place,
        /// The address with its prefix length.
        address: IpNetwork,
    },
    /// A guest namespace the file names that does not exist.
    CreateNamespace {
        /// The namespace's name in /run/netns.
        name: String,
    },
    /// Wires an interface; `replaces` says why an existing one is re-wired.
    Wire {
        /// The guest to wire.
        guest: String,
        /// The interface as the file describes it.
        interface: Interface,
        /// veth or macvlan, from the host link.
        wiring: WireKind,
        /// Why an existing interface of that name is replaced; None for a new one.
        replaces: Option<String>,
    },
    /// Takes over an interface `plumb` wiring made that matches the file.
    MarkInterface {
        /// The guest it is in.
        guest: String,
        /// The interface's name in the guest.
        interface: String,
    },
    /// Adds a route, or replaces one of the same destination and metric.
    AddRoute {
        /// The guest it goes in.
        guest: String,
        /// The route.
        route: Route,
    },
}

impl Action {
    /// The order of work; actions keep their relative order within a phase.
    pub(super) fn phase(&self) -> u8 {
        match self {
            Action::RemoveInterface { .. } => 0,
            Action::RemoveNamespace { .. } => 1,
            Action::RemoveRoute { .. } => 2,
            Action::RemoveAddress { .. } => 3,
            Action::RemoveBridge { .. } => 4,
            Action::CreateBridge { .. }
            | Action::MarkBridge { .. }
            | Action::SetBridgeMtu { .. } => 5,
            Action::BringUp { place } | Action::AddAddress { place, .. } => {
                if place.guest.is_none() {
                    5
                } else {
                    7
                }
            }
            Action::CreateNamespace { .. } => 6,
            Action::Wire { .. } | Action::MarkInterface { .. } => 7,
            Action::AddRoute { .. } => 8,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::RemoveInterface { guest, interface } => {
                write!(f, "remove {guest}/{interface} (not in the file)")
            }
            Action::RemoveNamespace { name } => {
                write!(f, "remove namespace {name} (not in the file)")
            }
            Action::RemoveRoute { guest, route } => {
                write!(f, "remove route {route} in {guest} (not in the file)")
            }
            Action::RemoveAddress { place, address } => {
                write!(f, "remove address {address} from {place} (not in the file)")
            }
            Action::RemoveBridge { name } => write!(f, "remove bridge {name} (not in the file)"),
            Action::CreateBridge { name, mtu } => {
                write!(f, "create bridge {name}")?;
                match mtu {
                    Some(mtu) => write!(f, " with MTU {mtu}"),
                    None => Ok(()),
                }
            }
            Action::MarkBridge { name } => {
                write!(f, "take over bridge {name} (made by plumb wiring)")
            }
            Action::SetBridgeMtu { name, mtu } => write!(f, "set MTU {mtu} on bridge {name}"),
            Action::BringUp { place } => write!(f, "bring up {place}"),
            Action::AddAddress { place, address } => write!(f, "add address {address} to {place}"),
            Action::CreateNamespace { name } => write!(f, "create namespace {name}"),
            Action::Wire {
                guest,
                interface,
                wiring,
                replaces,
            } => match replaces {
                None => write!(
                    f,
                    "wire {guest}/{} to {} ({wiring})",
                    interface.name, interface.host
                ),
                Some(why) => write!(
                    f,
                    "rewire {guest}/{} to {} ({wiring}): {why}",
                    interface.name, interface.host
                ),
            },
            Action::MarkInterface { guest, interface } => {
                write!(f, "take over {guest}/{interface} (wired by plumb)")
            }
            Action::AddRoute { guest, route } => write!(f, "add route {route} in {guest}"),
        }
    }
}
