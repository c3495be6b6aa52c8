//! Detaching a container: every trace goes (published ports, the veth pair,
//! the record, the addresses), and a namespace that is already gone is fine.

use std::net::IpAddr;

use crate::endpoint::DetachReport;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::state::{Endpoint, OwnerProcess, Phase};

impl Network {
    /// Removes the endpoint's links, then its record and reservations.
    /// Links that are already gone count as removed.
    pub(crate) async fn remove_endpoint(&self, ep: &Endpoint) -> Result<Vec<IpAddr>> {
        let started = std::time::Instant::now();
        let step = |name: &str| {
            tracing::debug!(
                step = name,
                elapsed_us = started.elapsed().as_micros() as u64,
                "detach"
            )
        };
        if !ep.ports.is_empty() {
            let ports = ep.ports.clone();
            // A failure here is not fatal: reconciliation syncs the firewall
            // with the state, which no longer holds these ports.
            if let Err(e) =
                crate::publish::firewall_call(&self.firewall, move |fw| fw.remove_ports(&ports))
                    .await
            {
                tracing::warn!(container = %ep.name, "withdraw published ports: {e}");
            }
        }
        step("ports withdrawn");
        let nl = self.netlink().await?;
        match nl.delete_link(&ep.host_ifname).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::kernel(
                    format!(
                        "detach container {}: delete link {}",
                        ep.name, ep.host_ifname
                    ),
                    e,
                ))
            }
        }
        step("link deleted");
        let released = self.store.update(|s| -> Result<Vec<IpAddr>> {
            s.endpoints.remove(&ep.id);
            Ok(s.ipam.release_owner(&ep.id))
        })?;
        step("forgotten");
        Ok(released)
    }

    /// Detaches a container by id or name. Detaching something that is not
    /// attached succeeds with `found: false`; a namespace that is already
    /// gone is fine (its end of the veth went with it).
    pub async fn detach(&self, key: &str) -> Result<DetachReport> {
        let _op = self.ops.read().await;
        let result = self.detach_inner(key).await;
        if result.is_err() {
            self.metrics.error("detach");
        }
        result
    }

    async fn detach_inner(&self, key: &str) -> Result<DetachReport> {
        let owner = OwnerProcess::current();
        let endpoint = self.store.update(|s| -> Result<Option<Endpoint>> {
            let Some(id) = s.find(key).map(|e| e.id.clone()) else {
                return Ok(None);
            };
            let ep = s.endpoint_mut(&id).expect("found above");
            if let Phase::Attaching { owner: o } = ep.phase {
                if o.is_alive() {
                    return Err(Error::Conflict(format!(
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
        let released = self.remove_endpoint(&endpoint).await?;
        self.metrics.detached();
        tracing::info!(id = %endpoint.id, name = %endpoint.name, "detached");
        Ok(DetachReport {
            container: key.to_string(),
            found: true,
            released,
        })
    }
}
