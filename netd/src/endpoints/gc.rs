//! Garbage collection for a caller that owns some of the endpoints (CNI's GC):
//! everything the caller owns that is not in its list of attachments still in
//! use goes — endpoints with their links and published ports, host links
//! carrying netd's alias with no endpoint, and reservations with no endpoint.
//! Endpoints the caller does not own (other CNI networks, `netd attach`) are
//! never touched.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::request::ALIAS_PREFIX;
use super::Endpoints;
use crate::error::{KernelContext, Result};
use crate::state::{OwnerProcess, Phase};

/// What one garbage collection removed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Endpoints (by id) detached.
    pub detached: Vec<String>,
    /// Host links deleted that no endpoint owned.
    pub links: Vec<String>,
    /// Reservation owners whose addresses were released.
    pub released: Vec<String>,
    /// One sentence per failure; collection carried on past each.
    pub errors: Vec<String>,
}

impl Endpoints {
    /// Removes every endpoint, alias-marked host link and reservation whose
    /// id `owned` claims and `keep` does not hold. Endpoints being attached or
    /// detached by a live process are left alone.
    pub async fn gc(
        &self,
        owned: &(dyn Fn(&str) -> bool + Sync),
        keep: &BTreeSet<String>,
    ) -> Result<GcReport> {
        let _op = self.host.shared_op().await;
        let mut report = GcReport::default();
        let stale = |id: &str| owned(id) && !keep.contains(id);
        // Links first: an attach records its endpoint before creating links,
        // so a link seen here without an endpoint in the later read is stale.
        let nl = self.host.netlink().await?;
        let links = nl.links().await.ctx(|| "gc: list host links")?;
        let me = OwnerProcess::current();
        let claimed = self
            .host
            .store()
            .update(|s| -> Result<Vec<crate::state::Endpoint>> {
                let mut claimed = Vec::new();
                let ids: Vec<String> = s.endpoints.keys().filter(|id| stale(id)).cloned().collect();
                for id in ids {
                    let mut ep = s.endpoint_mut(&id).expect("listed above");
                    match ep.phase {
                        Phase::Attaching { .. } if self.in_flight.attach_is_live(&id, ep.phase) => {
                            continue
                        }
                        Phase::Detaching { owner } if owner.is_alive() && owner != me => continue,
                        _ => {}
                    }
                    ep.phase = Phase::Detaching { owner: me };
                    claimed.push(ep.clone());
                }
                Ok(claimed)
            })?;
        for ep in claimed {
            match self.remove_endpoint(&ep, None).await {
                Ok(_) => report.detached.push(ep.id.clone()),
                Err(e) => report.errors.push(format!("gc: detach {}: {e}", ep.id)),
            }
        }
        let state = self.host.store().read()?;
        for link in links {
            let Some(id) = link
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
            else {
                continue;
            };
            if !stale(id) || state.endpoints.contains_key(id) || !link.is_kind("veth") {
                continue;
            }
            match nl.delete_link(&link.name).await {
                Ok(()) => report.links.push(link.name.clone()),
                Err(e) if e.is_not_found() => {}
                Err(e) => report
                    .errors
                    .push(format!("gc: delete link {}: {e}", link.name)),
            }
        }
        report.released = self.host.store().update(|s| -> Result<Vec<String>> {
            let owners: Vec<String> = s
                .ipam
                .owners()
                .into_iter()
                .filter(|o| stale(o) && !s.endpoints.contains_key(o))
                .collect();
            for owner in &owners {
                s.ipam.release_owner(owner);
            }
            Ok(owners)
        })?;
        if !report.detached.is_empty() || !report.links.is_empty() || !report.released.is_empty() {
            tracing::info!(detached = ?report.detached, links = ?report.links, released = ?report.released, "gc");
        }
        Ok(report)
    }
}
