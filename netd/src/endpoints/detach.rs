//! Detaching a container: every trace goes (published ports, the veth pair,
//! the record, the addresses), and a namespace that is already gone is fine.

use std::net::IpAddr;

use plumb::{LinkChange, Netlink};

use super::reaper::REAP_GROUP;
use super::request::DetachReport;
use super::{Background, Endpoints};
use crate::error::{Error, Result};
use crate::ports::LocalhostRelay;
use crate::state::{Endpoint, OwnerProcess, Phase};

impl Endpoints {
    /// Removes the endpoint's links, then its record and reservations.
    /// Links that are already gone count as removed.
    /// `relay`: the daemon's `[::1]` relay, which stops relaying its ports.
    pub(super) async fn remove_endpoint(
        &self,
        ep: &Endpoint,
        relay: Option<&LocalhostRelay>,
    ) -> Result<Vec<IpAddr>> {
        let started = std::time::Instant::now();
        let step = |name: &str| {
            tracing::debug!(
                step = name,
                elapsed_us = started.elapsed().as_micros() as u64,
                "detach"
            )
        };
        self.ports.withdraw(ep, relay).await;
        step("ports withdrawn");
        self.delete_host_link(&self.host.netlink().await?, ep)
            .await?;
        step("link deleted");
        let released = self.forget(std::slice::from_ref(ep))?;
        step("forgotten");
        self.restore_shared_routes(std::slice::from_ref(ep)).await;
        self.release_bridge_addresses(std::slice::from_ref(ep))
            .await;
        Ok(released)
    }

    /// A container with a second interface on this network has its default
    /// route only on the first (one default route per gateway): when the
    /// interface holding it goes, the route is added again on the one that
    /// stays. Best effort: a namespace that is gone needs nothing.
    pub(super) async fn restore_shared_routes(&self, gone: &[Endpoint]) {
        for ep in gone {
            // Looked at in place: a detach must not copy the whole state.
            let staying: Vec<Endpoint> = match self.host.store().read_with(|s| {
                s.endpoints
                    .in_namespace(ep.netns_inode)
                    .filter(|o| o.id != ep.id && o.phase == Phase::Attached)
                    .map(|o| (**o).clone())
                    .collect()
            }) {
                Ok(staying) => staying,
                Err(_) => return,
            };
            let Some(first) = staying.first() else {
                continue;
            };
            let Ok(netns) = plumb::Netns::path(&first.netns) else {
                continue;
            };
            if netns.inode() != ep.netns_inode {
                continue;
            }
            let Ok(cnl) = Netlink::open(&netns).await else {
                continue;
            };
            for other in &staying {
                if let Err(e) = super::attach::add_default_routes(&cnl, other, None).await {
                    tracing::warn!(container = %other.name, "restore its default route: {e}");
                }
            }
        }
    }

    /// Deletes the veth pair by its host end; already gone is fine.
    pub(super) async fn delete_host_link(&self, nl: &Netlink, ep: &Endpoint) -> Result<()> {
        match nl.delete_link(&ep.host_ifname).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::kernel(
                format!(
                    "detach container {}: delete link {}",
                    ep.name, ep.host_ifname
                ),
                e,
            )),
        }
    }

    /// Drops the endpoints' records and releases their addresses, in one
    /// transaction; returns the addresses released.
    pub(super) fn forget(&self, eps: &[Endpoint]) -> Result<Vec<IpAddr>> {
        if eps.is_empty() {
            return Ok(Vec::new());
        }
        self.host.store().update(|s| -> Result<Vec<IpAddr>> {
            let mut released = Vec::new();
            for ep in eps {
                s.endpoints.remove(&ep.id);
                released.extend(s.ipam.release_owner(&ep.id));
            }
            Ok(released)
        })
    }

    /// Detaches a container by id or name. Detaching something that is not
    /// attached succeeds with `found: false`; a namespace that is already
    /// gone is fine (its end of the veth went with it). With a reaper in
    /// `bg`, it answers once the container is cut off and leaves deleting
    /// its veth pair to the reaper (see `reaper.rs`).
    pub async fn detach(&self, key: &str, bg: Background<'_>) -> Result<DetachReport> {
        let _op = self.host.shared_op().await;
        let result = self.detach_locked(key, bg).await;
        if result.is_err() {
            self.host.metrics().error("detach");
        }
        result
    }

    async fn detach_locked(&self, key: &str, bg: Background<'_>) -> Result<DetachReport> {
        let owner = OwnerProcess::current();
        let endpoint = self.host.store().update(|s| -> Result<Option<Endpoint>> {
            let Some(id) = s.find(key).map(|e| e.id.clone()) else {
                return Ok(None);
            };
            let mut ep = s.endpoint_mut(&id).expect("found above");
            if let Phase::Attaching { owner: o } = ep.phase {
                if o.is_alive() {
                    return Err(Error::Busy(format!(
                        "container {} is being attached right now (by PID {}); detach it when that finishes",
                        ep.name, o.pid
                    )));
                }
            }
            ep.phase = Phase::Detaching { owner };
            Ok(Some(ep.clone()))
        })?;
        let Some(endpoint) = endpoint else {
            return Ok(DetachReport {
                container: key.to_string(),
                found: false,
                released: Vec::new(),
            });
        };
        let released = match bg.reaper {
            Some(reaper) => {
                self.ports.withdraw(&endpoint, bg.relay).await;
                self.cut_off(&endpoint).await?;
                let released = endpoint.ips.iter().map(|ip| ip.ip()).collect();
                reaper.hand_over(endpoint.clone());
                released
            }
            None => self.remove_endpoint(&endpoint, bg.relay).await?,
        };
        self.host.metrics().detached();
        tracing::info!(id = %endpoint.id, name = %endpoint.name, "detached");
        Ok(DetachReport {
            container: key.to_string(),
            found: true,
            released,
        })
    }

    /// Takes the host end down (the container loses its carrier at once) and
    /// moves it to the reaper's link group.
    async fn cut_off(&self, ep: &Endpoint) -> Result<()> {
        let nl = self.host.netlink().await?;
        let change = LinkChange {
            up: Some(false),
            group: Some(REAP_GROUP),
            ..Default::default()
        };
        match nl.set_link(&ep.host_ifname, &change).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::kernel(
                format!("detach container {}: take {} down", ep.name, ep.host_ifname),
                e,
            )),
        }
    }
}
