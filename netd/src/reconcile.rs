//! Reconciliation: make the kernel match the state, and the state match
//! itself. Runs at start, on `netd reconcile`, on SIGHUP, and whenever the
//! periodic quick check finds something amiss.
//!
//! - host: bridge, gateway addresses, forwarding (`Network::ensure_host`);
//! - endpoints half-attached or half-detached by a process that died: rolled back;
//! - attached endpoints whose namespace is gone: removed, addresses released;
//! - attached endpoints with missing or altered links: re-plumbed as recorded;
//! - host links carrying netd's alias but no endpoint: deleted;
//! - reservations without an endpoint: released.
//!
//! Endpoints in flight in a live process (this one included) are left alone.

use std::collections::{BTreeSet, HashSet};

use plumb::{Netlink, Netns};
use serde::{Deserialize, Serialize};

use crate::endpoint::ALIAS_PREFIX;
use crate::error::{Error, KernelContext, Result};
use crate::network::{Action, Network};
use crate::state::{Endpoint, OwnerProcess, Phase};

/// What one reconciliation did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub actions: Vec<Action>,
    /// Problems it could not fix, one sentence each.
    pub errors: Vec<String>,
}

/// How an attached endpoint looks in the kernel.
enum Health {
    Ok,
    /// Its namespace no longer exists (or the path now holds another one).
    ContainerGone,
    Broken(String),
}

impl Network {
    /// Runs a full reconciliation. Errors about single endpoints are
    /// collected in the report; only a broken host setup fails the call.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let _op = self.ops.write().await;
        // Looked at before `ensure_host`, which rebuilds the base rules.
        let intact = self.firewall_intact().await;
        let mut report = ReconcileReport {
            actions: self
                .ensure_host()
                .await
                .inspect_err(|_| self.metrics.error("reconcile"))?,
            errors: Vec::new(),
        };
        match (intact, self.sync_firewall().await) {
            (_, Err(e)) | (Err(e), _) => report.errors.push(e.to_string()),
            (Ok(false), Ok(())) => report.actions.push(Action::new(
                "firewall_reapplied",
                "re-applied the NAT rules and published ports (someone removed them)",
            )),
            (Ok(true), Ok(())) => {}
        }
        let state = self.store.read()?;
        self.sync_relays(&state);
        for ep in state.endpoints.values() {
            match self.reconcile_endpoint(ep).await {
                Ok(Some(action)) => report.actions.push(action),
                Ok(None) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        match self.remove_stale().await {
            Ok(actions) => report.actions.extend(actions),
            Err(e) => report.errors.push(e.to_string()),
        }
        let (actions, errors) = self.reconcile_overlay().await;
        report.actions.extend(actions);
        report.errors.extend(errors);
        for action in &report.actions {
            tracing::info!(kind = %action.kind, "reconcile: {}", action.detail);
        }
        for error in &report.errors {
            tracing::error!("reconcile: {error}");
            self.metrics.error("reconcile");
        }
        self.metrics.reconciled(&report.actions);
        Ok(report)
    }

    async fn reconcile_endpoint(&self, ep: &Endpoint) -> Result<Option<Action>> {
        match ep.phase {
            Phase::Attaching { owner } if owner.is_alive() => Ok(None),
            // A detach of this very process that the reaper no longer holds
            // (its deletion failed) is finished here; any other live owner's
            // is its own business.
            Phase::Detaching { owner }
                if owner.is_alive()
                    && (owner != OwnerProcess::current() || self.is_reaping(&ep.id)) =>
            {
                Ok(None)
            }
            Phase::Attaching { .. } => {
                self.remove_endpoint(ep).await?;
                Ok(Some(Action::new(
                    "rolled_back",
                    format!(
                        "rolled back the interrupted attach of container {} (released {})",
                        ep.name,
                        list(&ep.ips)
                    ),
                )))
            }
            Phase::Detaching { .. } => {
                self.remove_endpoint(ep).await?;
                Ok(Some(Action::new(
                    "detach_finished",
                    format!("finished the interrupted detach of container {}", ep.name),
                )))
            }
            Phase::Attached => match self.health(ep).await? {
                Health::Ok => Ok(None),
                Health::ContainerGone => {
                    // Claimed first, so that a detach by another process (a
                    // CNI plugin in standalone mode) and this one do not cross.
                    if !self.claim(ep, |owner| Phase::Detaching { owner })? {
                        return Ok(None);
                    }
                    self.remove_endpoint(ep).await?;
                    Ok(Some(Action::new(
                        "container_gone",
                        format!(
                            "removed container {}: its namespace {} is gone (released {})",
                            ep.name,
                            ep.netns.display(),
                            list(&ep.ips)
                        ),
                    )))
                }
                Health::Broken(why) => {
                    if !self.claim(ep, |owner| Phase::Attaching { owner })? {
                        return Ok(None);
                    }
                    let repaired = self.repair(ep).await;
                    // Attached again either way: a failed repair is retried
                    // by the next reconciliation.
                    self.store.update(|s| -> Result<()> {
                        if let Some(mut e) = s.endpoint_mut(&ep.id) {
                            e.phase = Phase::Attached;
                        }
                        Ok(())
                    })?;
                    repaired?;
                    Ok(Some(Action::new(
                        "repaired",
                        format!("re-plumbed container {}: {why}", ep.name),
                    )))
                }
            },
        }
    }

    /// CNI's CHECK: Ok when container `key` is attached and its links,
    /// addresses and routes are all in place; otherwise an error saying what
    /// is wrong. Changes nothing.
    pub async fn check(&self, key: &str) -> Result<()> {
        let state = self.store.read()?;
        let Some(ep) = state.find(key) else {
            return Err(Error::Invalid(format!("container {key} is not attached")));
        };
        if ep.phase != Phase::Attached {
            return Err(Error::Conflict(format!(
                "container {} is being attached or detached right now",
                ep.name
            )));
        }
        match self.health(ep).await? {
            Health::Ok => {
                // The container's links being right is half of it: its NAT and
                // published ports live in the host's firewall.
                if self.firewall_intact().await? {
                    Ok(())
                } else {
                    Err(Error::Conflict(format!(
                        "container {}: the firewall rules of bridge {} (NAT, published ports) are gone — someone flushed them; `netd reconcile` restores them",
                        ep.name, self.config.bridge
                    )))
                }
            }
            Health::ContainerGone => Err(Error::Invalid(format!(
                "container {}: its namespace {} is gone",
                ep.name,
                ep.netns.display()
            ))),
            Health::Broken(why) => Err(Error::Conflict(format!(
                "container {}: {why} — `netd reconcile` repairs it",
                ep.name
            ))),
        }
    }

    /// Marks an endpoint that is still `attached` as being changed by this
    /// process; false when someone else changed it since it was read.
    fn claim(&self, ep: &Endpoint, phase: impl FnOnce(OwnerProcess) -> Phase) -> Result<bool> {
        self.store.update(|s| -> Result<bool> {
            match s.endpoint_mut(&ep.id) {
                Some(mut e) if e.phase == Phase::Attached => {
                    e.phase = phase(OwnerProcess::current());
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// Opens the endpoint's namespace if it is still the one it was attached in.
    fn container_netns(&self, ep: &Endpoint) -> Result<Option<Netns>> {
        match Netns::path(&ep.netns) {
            Ok(ns) if ns.inode() == ep.netns_inode => Ok(Some(ns)),
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::kernel(
                format!("check container {}: open its namespace", ep.name),
                e,
            )),
        }
    }

    async fn health(&self, ep: &Endpoint) -> Result<Health> {
        let nl = self.netlink().await?;
        let Some(netns) = self.container_netns(ep)? else {
            return Ok(Health::ContainerGone);
        };
        let ctx = |what: &str| format!("check container {}: {what}", ep.name);
        let bridge = nl
            .link(&self.config.bridge)
            .await
            .ctx(|| ctx("list links"))?;
        let Some(host) = nl.link(&ep.host_ifname).await.ctx(|| ctx("list links"))? else {
            return Ok(Health::Broken(format!(
                "host link {} is missing",
                ep.host_ifname
            )));
        };
        if bridge.map(|b| b.index) != host.controller {
            return Ok(Health::Broken(format!(
                "{} is not a port of {}",
                ep.host_ifname, self.config.bridge
            )));
        }
        if !host.up {
            return Ok(Health::Broken(format!("{} is down", ep.host_ifname)));
        }
        let cnl = Netlink::open(&netns)
            .await
            .ctx(|| ctx(&format!("open netlink in {}", netns.label())))?;
        let Some(link) = cnl.link(&ep.ifname).await.ctx(|| ctx("list links"))? else {
            return Ok(Health::Broken(format!(
                "{} is missing in the container",
                ep.ifname
            )));
        };
        if !link.up {
            return Ok(Health::Broken(format!(
                "{} is down in the container",
                ep.ifname
            )));
        }
        let addrs = cnl
            .addresses(Some(link.index))
            .await
            .ctx(|| ctx("list addresses"))?;
        for ip in &ep.ips {
            if !addrs.iter().any(|a| a.network == *ip) {
                return Ok(Health::Broken(format!("address {ip} is missing")));
            }
        }
        for gw in &ep.gateways {
            let routes = cnl
                .routes(gw.is_ipv6(), false)
                .await
                .ctx(|| ctx("list routes"))?;
            if !routes
                .iter()
                .any(|r| r.destination.is_none() && r.gateway == Some(*gw))
            {
                return Ok(Health::Broken(format!(
                    "the default route via {gw} is missing"
                )));
            }
        }
        Ok(Health::Ok)
    }

    /// Deletes whatever is left of the endpoint's links and builds them again
    /// with the recorded names, addresses and MAC.
    async fn repair(&self, ep: &Endpoint) -> Result<()> {
        let nl = self.netlink().await?;
        let Some(netns) = self.container_netns(ep)? else {
            return Ok(());
        };
        match nl.delete_link(&ep.host_ifname).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::kernel(format!("repair container {}", ep.name), e)),
        }
        let cnl = Netlink::open(&netns)
            .await
            .ctx(|| format!("repair container {}: open its namespace", ep.name))?;
        // Only a veth of ours is removed: it cannot be without its host end
        // unless it was moved or renamed, and then it is not ours any more.
        if let Some(link) = cnl.link(&ep.ifname).await.ctx(|| "list links")? {
            if link.is_kind("veth") && link.mac == ep.mac {
                let _ = cnl.delete_link(&ep.ifname).await;
            }
        }
        self.plumb(ep, &cnl).await?;
        Ok(())
    }

    /// Host links with netd's alias but no endpoint, and reservations without
    /// an endpoint. The links are listed before the state is read: an attach
    /// records its endpoint before it creates its link, so a link seen here
    /// without an endpoint is truly stale.
    async fn remove_stale(&self) -> Result<Vec<Action>> {
        let nl = self.netlink().await?;
        let mut actions = Vec::new();
        let links = nl.links().await.ctx(|| "reconcile: list host links")?;
        let state = self.store.read()?;
        let known: BTreeSet<&str> = state.endpoints.keys().map(String::as_str).collect();
        for link in links {
            let Some(id) = link
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
            else {
                continue;
            };
            if known.contains(id) || !link.is_kind("veth") {
                continue;
            }
            match nl.delete_link(&link.name).await {
                Ok(()) => actions.push(Action::new(
                    "stale_link_removed",
                    format!(
                        "deleted {} left by container {id}, which netd no longer knows",
                        link.name
                    ),
                )),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::kernel("reconcile: delete a stale link", e)),
            }
        }
        let released = self.store.update(|s| -> Result<Vec<String>> {
            let stale: Vec<String> = s
                .ipam
                .owners()
                .into_iter()
                .filter(|o| !s.endpoints.contains_key(o))
                .collect();
            for owner in &stale {
                s.ipam.release_owner(owner);
            }
            Ok(stale)
        })?;
        for owner in released {
            actions.push(Action::new(
                "stale_reservation_released",
                format!("released the addresses of {owner}, which has no endpoint"),
            ));
        }
        Ok(actions)
    }

    /// A cheap look at the host side only (one link dump, one address dump,
    /// one firewall check): why a full reconciliation is needed, if it is.
    ///
    /// The look runs beside attaches and detaches, so what it sees can be
    /// torn (the links listed before an attach finished, the state read after
    /// it). Anything amiss is looked at again with those held off before it
    /// counts: under a stream of attaches the torn view alone had netd
    /// reconciling everything every two seconds, holding every attach up.
    pub async fn needs_reconcile(&self) -> Result<Option<&'static str>> {
        if self.quick_check().await?.is_none() {
            return Ok(None);
        }
        let _op = self.ops.write().await;
        self.quick_check().await
    }

    async fn quick_check(&self) -> Result<Option<&'static str>> {
        let nl = self.netlink().await?;
        let links = nl.links().await.ctx(|| "quick check: list host links")?;
        let Some(bridge) = links.iter().find(|l| l.name == self.config.bridge) else {
            return Ok(Some("bridge missing"));
        };
        if !bridge.up {
            return Ok(Some("bridge down"));
        }
        let addrs = nl
            .addresses(Some(bridge.index))
            .await
            .ctx(|| "quick check: list bridge addresses")?;
        if self
            .gateway_networks()
            .iter()
            .any(|gw| !addrs.iter().any(|a| a.network == *gw))
        {
            return Ok(Some("gateway address missing"));
        }
        if !self.firewall_intact().await? {
            return Ok(Some("firewall rules missing"));
        }
        if let Some(reason) = self.overlay_needs_reconcile().await? {
            return Ok(Some(reason));
        }
        let plugged: HashSet<&str> = links
            .iter()
            .filter(|l| l.up && l.controller == Some(bridge.index))
            .map(|l| l.name.as_str())
            .collect();
        // Taken before the state is read: the reaper forgets an endpoint
        // before it stops being pending, so an endpoint still `detaching` in
        // the state read below was pending in this set if it is being reaped.
        let reaping = self.reaping_now();
        self.store
            .read_with(|state| {
                for ep in state.endpoints.values() {
                    match ep.phase {
                        Phase::Attached => {
                            if !plugged.contains(ep.host_ifname.as_str()) {
                                return Some("endpoint link missing or detached");
                            }
                        }
                        Phase::Attaching { owner } => {
                            if !owner.is_alive() {
                                return Some("an attach was interrupted");
                            }
                        }
                        Phase::Detaching { owner } => {
                            let dropped =
                                owner == OwnerProcess::current() && !reaping.contains(&ep.id);
                            if !owner.is_alive() || dropped {
                                return Some("a detach was interrupted");
                            }
                        }
                    }
                }
                None
            })
            .map_err(Into::into)
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
