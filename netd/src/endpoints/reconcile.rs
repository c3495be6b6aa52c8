//! Reconciliation: make the kernel match the state, and the state match
//! itself. Runs at start, on `netd reconcile`, on SIGHUP, and whenever the
//! periodic quick check finds something amiss.
//!
//! - host: bridge, gateway addresses, forwarding, NAT (`Endpoints::ensure_host`),
//!   and the bridge addresses endpoints need beside netd's own gateways;
//! - the firewall and the `[::1]` relay: every published port in the state;
//! - endpoints half-attached or half-detached by a process that died: rolled back;
//! - attached endpoints whose namespace is gone: removed, addresses released;
//! - attached endpoints with missing or altered links: re-plumbed as recorded;
//! - host links carrying netd's alias but no endpoint: deleted;
//! - reservations without an endpoint: released.
//!
//! Endpoints in flight in a live process (this one included) are left alone.
//! The overlay's part is the daemon's: it adds it to the report.

use std::collections::{BTreeSet, HashSet};

use plumb::Netlink;
use serde::{Deserialize, Serialize};

use super::check::Health;
use super::request::ALIAS_PREFIX;
use super::{Background, Endpoints};
use crate::action::Action;
use crate::error::{Error, KernelContext, Result};
use crate::metrics::Metrics;
use crate::ports::all_ports;
use crate::state::{Endpoint, OwnerProcess, Phase};

/// What one reconciliation did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub actions: Vec<Action>,
    /// Problems it could not fix, one sentence each.
    pub errors: Vec<String>,
}

impl ReconcileReport {
    /// Logs what was done and what failed, and counts both in `metrics`.
    pub fn record(&self, metrics: &Metrics) {
        for action in &self.actions {
            tracing::info!(kind = %action.kind, "reconcile: {}", action.detail);
        }
        for error in &self.errors {
            tracing::error!("reconcile: {error}");
            metrics.error("reconcile");
        }
        metrics.reconciled(&self.actions);
    }
}

impl Endpoints {
    /// Runs a full reconciliation of the host, the firewall (and `bg`'s
    /// relay) and the endpoints. Errors about single endpoints are
    /// collected in the report; only a broken host setup fails the call.
    /// The caller adds its own parts and [`ReconcileReport::record`]s it.
    pub async fn reconcile(&self, bg: Background<'_>) -> Result<ReconcileReport> {
        let _op = self.host.exclusive_op().await;
        // Looked at before `ensure_host`, which rebuilds the base rules.
        let intact = self.ports.intact().await;
        let mut report = ReconcileReport {
            actions: self
                .ensure_host()
                .await
                .inspect_err(|_| self.host.metrics().error("reconcile"))?,
            errors: Vec::new(),
        };
        match self.restore_bridge_addresses().await {
            Ok(actions) => report.actions.extend(actions),
            Err(e) => report.errors.push(e.to_string()),
        }
        match (intact, self.ports.sync().await) {
            (_, Err(e)) | (Err(e), _) => report.errors.push(e.to_string()),
            (Ok(false), Ok(())) => report.actions.push(Action::new(
                "firewall_reapplied",
                "re-applied the NAT rules and published ports (someone removed them)",
            )),
            (Ok(true), Ok(())) => {}
        }
        let state = self.host.store().read()?;
        if let Some(relay) = bg.relay {
            relay.sync(&all_ports(&state));
        }
        for ep in state.endpoints.values() {
            match self.reconcile_endpoint(ep, bg).await {
                Ok(Some(action)) => report.actions.push(action),
                Ok(None) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        match self.remove_stale().await {
            Ok(actions) => report.actions.extend(actions),
            Err(e) => report.errors.push(e.to_string()),
        }
        Ok(report)
    }

    async fn reconcile_endpoint(
        &self,
        ep: &Endpoint,
        bg: Background<'_>,
    ) -> Result<Option<Action>> {
        match ep.phase {
            Phase::Attaching { owner } if owner.is_alive() => Ok(None),
            // A detach of this very process that the reaper no longer holds
            // (its deletion failed) is finished here; any other live owner's
            // is its own business.
            Phase::Detaching { owner }
                if owner.is_alive()
                    && (owner != OwnerProcess::current() || bg.is_reaping(&ep.id)) =>
            {
                Ok(None)
            }
            Phase::Attaching { .. } => {
                self.remove_endpoint(ep, bg.relay).await?;
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
                self.remove_endpoint(ep, bg.relay).await?;
                Ok(Some(Action::new(
                    "detach_finished",
                    format!("finished the interrupted detach of container {}", ep.name),
                )))
            }
            Phase::Attached => match self.health(ep, &Default::default()).await? {
                Health::Ok => Ok(None),
                Health::ContainerGone => {
                    // Claimed first, so that a detach by another process (a
                    // CNI plugin in standalone mode) and this one do not cross.
                    if !self.claim(ep, |owner| Phase::Detaching { owner })? {
                        return Ok(None);
                    }
                    self.remove_endpoint(ep, bg.relay).await?;
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
                    self.host.store().update(|s| -> Result<()> {
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

    /// Marks an endpoint that is still `attached` as being changed by this
    /// process; false when someone else changed it since it was read.
    fn claim(&self, ep: &Endpoint, phase: impl FnOnce(OwnerProcess) -> Phase) -> Result<bool> {
        self.host.store().update(|s| -> Result<bool> {
            match s.endpoint_mut(&ep.id) {
                Some(mut e) if e.phase == Phase::Attached => {
                    e.phase = phase(OwnerProcess::current());
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// Deletes whatever is left of the endpoint's links and builds them again
    /// with the recorded names, addresses and MAC.
    async fn repair(&self, ep: &Endpoint) -> Result<()> {
        let nl = self.host.netlink().await?;
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
        let nl = self.host.netlink().await?;
        let mut actions = Vec::new();
        let links = nl.links().await.ctx(|| "reconcile: list host links")?;
        let state = self.host.store().read()?;
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
        let released = self.host.store().update(|s| -> Result<Vec<String>> {
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
    /// The overlay's routes are the daemon's to look at.
    pub async fn needs_reconcile(&self, bg: Background<'_>) -> Result<Option<&'static str>> {
        if self.quick_check(bg).await?.is_none() {
            return Ok(None);
        }
        let _op = self.host.exclusive_op().await;
        self.quick_check(bg).await
    }

    async fn quick_check(&self, bg: Background<'_>) -> Result<Option<&'static str>> {
        let nl = self.host.netlink().await?;
        let links = nl.links().await.ctx(|| "quick check: list host links")?;
        let Some(bridge) = links.iter().find(|l| l.name == self.host.config().bridge) else {
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
            .host
            .gateway_networks()
            .iter()
            .any(|gw| !addrs.iter().any(|a| a.network == *gw))
        {
            return Ok(Some("gateway address missing"));
        }
        if !self.ports.intact().await? {
            return Ok(Some("firewall rules missing"));
        }
        let bridge_nets: Vec<ipnetwork::IpNetwork> = addrs.iter().map(|a| a.network).collect();
        let plugged: HashSet<&str> = links
            .iter()
            .filter(|l| l.up && l.controller == Some(bridge.index))
            .map(|l| l.name.as_str())
            .collect();
        // Taken before the state is read: the reaper forgets an endpoint
        // before it stops being pending, so an endpoint still `detaching` in
        // the state read below was pending in this set if it is being reaped.
        let reaping = bg.reaping_now();
        self.host
            .store()
            .read_with(|state| {
                if Endpoints::bridge_addresses_missing(state, &bridge_nets) {
                    return Some("an endpoint's gateway address missing");
                }
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
