//! Running a plan: each action in order, stopping at the first failure and
//! saying which one failed and how many were applied before it. Interfaces
//! are wired by `wire::wire`, exactly as `plumb HOST GUEST …` wires them, and
//! then marked as this topology's.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::action::{Action, Place};
use super::plan::Plan;
use super::{Error, Interface, Result, Topology, NAMESPACE_MARK_PREFIX};
use crate::link::{LinkChange, LinkOptions};
use crate::netns::Netns;
use crate::wire::{self, Record, WireSpec, ALIAS_PREFIX};
use crate::Netlink;

/// What `plumb apply` did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The topology's name.
    pub topology: String,
    /// True when nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// Every planned action, in order.
    pub actions: Vec<ActionReport>,
    /// How many actions were carried out.
    pub applied: usize,
    /// The failure that stopped the run, if any.
    pub error: Option<String>,
}

/// One action of a run: what it is, and whether it was carried out.
#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    /// The action in words, as the dry run prints it.
    pub description: String,
    /// True once it was carried out.
    pub done: bool,
    /// The action itself (its fields flattened into the JSON).
    #[serde(flatten)]
    pub action: Action,
}

impl Outcome {
    /// The report of `plan` before any action ran: nothing done, no error.
    pub fn new(plan: &Plan, dry_run: bool) -> Outcome {
        Outcome {
            topology: plan.topology.clone(),
            dry_run,
            actions: plan
                .actions
                .iter()
                .map(|a| ActionReport {
                    description: a.to_string(),
                    done: false,
                    action: a.clone(),
                })
                .collect(),
            applied: 0,
            error: None,
        }
    }
}

/// Carries out `plan` from namespace `host`; `done` is told of each action
/// as it completes. Returns how many were applied.
pub async fn apply(
    host: &Netlink,
    topology: &Topology,
    plan: &Plan,
    mut done: impl FnMut(&Action),
) -> Result<usize> {
    let mut run = Run {
        host,
        topology,
        guests: HashMap::new(),
    };
    let total = plan.actions.len();
    for (i, action) in plan.actions.iter().enumerate() {
        if let Err(source) = run.action(action).await {
            return Err(Error::Action {
                topology: topology.name.clone(),
                number: i + 1,
                total,
                done: i,
                action: action.to_string(),
                source: Box::new(source),
            });
        }
        done(action);
    }
    Ok(total)
}

struct Run<'a> {
    host: &'a Netlink,
    topology: &'a Topology,
    /// Connections into guest namespaces, opened on first use.
    guests: HashMap<String, Netlink>,
}

impl Run<'_> {
    async fn guest(&mut self, name: &str) -> crate::Result<Netlink> {
        if let Some(nl) = self.guests.get(name) {
            return Ok(nl.clone());
        }
        let nl = Netlink::open(&Netns::named(name)?).await?;
        self.guests.insert(name.to_string(), nl.clone());
        Ok(nl)
    }

    async fn at(&mut self, place: &Place) -> crate::Result<Netlink> {
        match &place.guest {
            Some(g) => self.guest(g).await,
            None => Ok(self.host.clone()),
        }
    }

    fn mark(&self, fields: &[(&str, &str)]) -> String {
        let record = Record::new(fields);
        self.topology.marked(&record).render()
    }

    async fn action(&mut self, action: &Action) -> crate::Result<()> {
        match action {
            Action::RemoveInterface { guest, interface } => {
                let ns = Netns::named(guest)?;
                wire::unwire(self.host, &ns, Some(interface)).await?;
            }
            Action::RemoveNamespace { name } => {
                self.guests.remove(name);
                Netns::delete(name)?;
            }
            Action::RemoveRoute { guest, route } => {
                self.guest(guest).await?.delete_route(route).await?;
            }
            Action::RemoveAddress { place, address } => {
                let nl = self.at(place).await?;
                nl.delete_address(&place.link, *address).await?;
            }
            Action::RemoveBridge { name } => self.host.delete_link(name).await?,
            Action::CreateBridge { name, mtu } => {
                let alias = self.mark(&[]);
                self.host
                    .add_bridge(
                        name,
                        &LinkOptions {
                            up: true,
                            alias: Some(alias),
                            ..Default::default()
                        },
                    )
                    .await?;
                if let Some(mtu) = mtu {
                    self.set_mtu(name, *mtu).await?;
                }
            }
            Action::MarkBridge { name } => {
                let change = LinkChange {
                    alias: Some(self.mark(&[])),
                    ..Default::default()
                };
                self.host.set_link(name, &change).await?;
            }
            Action::SetBridgeMtu { name, mtu } => self.set_mtu(name, *mtu).await?,
            Action::BringUp { place } => {
                let nl = self.at(place).await?;
                nl.set_up(&place.link).await?;
            }
            Action::AddAddress { place, address } => {
                let nl = self.at(place).await?;
                // Present already (kept through a removal in its subnet): done.
                match nl.add_address(&place.link, *address, true).await {
                    Err(e) if e.is_already_exists() => {}
                    other => other?,
                }
            }
            Action::CreateNamespace { name } => {
                let ns = Netns::create(name)?;
                let nl = Netlink::open(&ns).await?;
                let mark = self.mark(&[("made", "netns")]);
                let mark = mark.replacen(ALIAS_PREFIX, NAMESPACE_MARK_PREFIX, 1);
                let change = LinkChange {
                    up: Some(true),
                    alias: Some(mark),
                    ..Default::default()
                };
                if let Err(e) = nl.set_link("lo", &change).await {
                    drop(nl);
                    let _ = Netns::delete(name);
                    return Err(e);
                }
                self.guests.insert(name.clone(), nl);
            }
            Action::Wire {
                guest,
                interface,
                replaces,
                ..
            } => {
                let ns = Netns::named(guest)?;
                if replaces.is_some() {
                    wire::unwire(self.host, &ns, Some(&interface.name)).await?;
                }
                wire::wire(self.host, &wire_spec(&ns, interface)).await?;
                self.mark_interface(guest, &interface.name).await?;
                // A bridge's MTU follows its ports' down unless it was set as a
                // change: set the file's MTU again now that this port is in.
                let file_mtu = self.topology.bridge(&interface.host).and_then(|b| b.mtu);
                if let Some(mtu) = file_mtu {
                    if self.host.require_link(&interface.host).await?.mtu != mtu {
                        self.set_mtu(&interface.host, mtu).await?;
                    }
                }
            }
            Action::MarkInterface { guest, interface } => {
                self.mark_interface(guest, interface).await?;
            }
            Action::AddRoute { guest, route } => {
                self.guest(guest).await?.replace_route(route).await?;
            }
        }
        Ok(())
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> crate::Result<()> {
        let change = LinkChange {
            mtu: Some(mtu),
            ..Default::default()
        };
        self.host.set_link(name, &change).await
    }

    /// Adds this topology's mark to the record plumb wiring left on the link.
    async fn mark_interface(&mut self, guest: &str, interface: &str) -> crate::Result<()> {
        let nl = self.guest(guest).await?;
        let link = nl.require_link(interface).await?;
        let record = link
            .alias
            .as_deref()
            .and_then(Record::parse)
            .unwrap_or_default();
        let change = LinkChange {
            alias: Some(self.topology.marked(&record).render()),
            ..Default::default()
        };
        nl.set_link(interface, &change).await
    }
}

/// The wiring `plumb HOST GUEST ADDR[@GW]… MAC@VLAN` would do for `iface`.
fn wire_spec(guest: &Netns, iface: &Interface) -> WireSpec {
    let gateways: Vec<IpAddr> = [
        iface.gateway.map(IpAddr::V4),
        iface.gateway6.map(IpAddr::V6),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Each gateway goes with the first address whose subnet holds it.
    let mut addresses: Vec<(IpNetwork, Option<IpAddr>)> =
        iface.addresses.iter().map(|a| (*a, None)).collect();
    for gw in gateways {
        if let Some(slot) = addresses.iter_mut().find(|(a, _)| a.contains(gw)) {
            slot.1 = Some(gw);
        }
    }
    WireSpec {
        host_if: iface.host.clone(),
        guest: guest.clone(),
        guest_if: iface.name.clone(),
        host_side_name: None,
        addresses,
        mac: iface.mac,
        vlan: iface.vlan.map(u32::from),
        macvlan_mode: iface.mode.unwrap_or_default(),
        mtu: iface.mtu,
    }
}
