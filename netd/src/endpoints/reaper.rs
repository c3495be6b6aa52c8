//! Deleting detached containers' veth pairs in the background, in batches.
//!
//! The kernel makes whoever deletes a network device wait for an RCU barrier
//! once the device is unregistered (10–25 ms on the test machine, more than
//! everything else a detach does). The daemon answers a detach as soon as
//! the container is cut off — published ports withdrawn, the host end down
//! (so the container has no carrier), the endpoint marked `detaching` — and
//! hands the pair to the reaper. The reaper deletes every queued pair with
//! one request (`ip link delete group REAP_GROUP`: one barrier for all of
//! them), then forgets the endpoints and releases their addresses. Until
//! then the addresses, name and interface stay reserved, and an attach that
//! collides with a pending one waits for it instead of failing.
//!
//! If netd dies first, the endpoints it marked are `detaching` with a dead
//! owner, which the next reconciliation finishes like any interrupted detach.
//! Library users (the CNI plugin in standalone mode) have no reaper: their
//! detach deletes the pair before it returns.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use plumb::Netlink;

use super::Endpoints;
use crate::state::Endpoint;

/// The link group a detached container's host end is moved to until the
/// reaper deletes it. Links in it belong to netd alone.
pub const REAP_GROUP: u32 = 0x7765_6674; // "weft"

/// The daemon's link reaper. Dropping it ends its thread once the queue
/// is empty.
pub struct Reaper {
    queue: mpsc::UnboundedSender<Endpoint>,
    /// Ids handed over and not yet forgotten.
    pending: Arc<watch::Sender<BTreeSet<String>>>,
}

impl Reaper {
    /// Starts the reaper on a thread of its own with its own netlink
    /// connection: the kernel holds the deleting thread (and whatever else
    /// would share its socket) for the whole barrier, which must not stall
    /// attaches and detaches meanwhile.
    pub fn start(endpoints: Endpoints) -> std::io::Result<Reaper> {
        let (queue, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(watch::channel(BTreeSet::new()).0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let done = pending.clone();
        std::thread::Builder::new()
            .name("netd-reaper".into())
            .spawn(move || runtime.block_on(run(endpoints, done, rx)))?;
        Ok(Reaper { queue, pending })
    }

    /// Queues `ep` (already cut off and marked `detaching`).
    pub(super) fn hand_over(&self, ep: Endpoint) {
        self.pending.send_modify(|p| {
            p.insert(ep.id.clone());
        });
        if let Err(mpsc::error::SendError(ep)) = self.queue.send(ep) {
            // The task is gone (the runtime is shutting down): the endpoint
            // stays `detaching` for the next reconciliation.
            self.pending.send_modify(|p| {
                p.remove(&ep.id);
            });
        }
    }

    pub(super) fn is_pending(&self, id: &str) -> bool {
        self.pending.borrow().contains(id)
    }

    /// What is pending now, as one consistent set.
    pub(super) fn pending_now(&self) -> BTreeSet<String> {
        self.pending.borrow().clone()
    }

    pub(super) fn any_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    /// Waits until everything pending now has been reaped.
    pub async fn reaped(&self) {
        let now = self.pending.borrow().clone();
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|p| now.iter().all(|id| !p.contains(id))).await;
    }
}

/// Marks `ids` reaped.
fn done(pending: &watch::Sender<BTreeSet<String>>, ids: &[String]) {
    pending.send_modify(|p| {
        for id in ids {
            p.remove(id);
        }
    });
}

async fn run(
    endpoints: Endpoints,
    pending: Arc<watch::Sender<BTreeSet<String>>>,
    mut queue: mpsc::UnboundedReceiver<Endpoint>,
) {
    let host = endpoints.host.netns().clone();
    let mut netlink: Option<Netlink> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        let nl = match &netlink {
            Some(nl) => nl.clone(),
            None => match Netlink::open(&host).await {
                Ok(nl) => netlink.insert(nl).clone(),
                Err(e) => {
                    // Left `detaching`: reconciliation finishes them.
                    tracing::error!("reaper: open netlink in {}: {e}", host.label());
                    done(
                        &pending,
                        &batch.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
                    );
                    continue;
                }
            },
        };
        reap(&endpoints, &pending, &nl, batch).await;
    }
}

async fn reap(
    endpoints: &Endpoints,
    pending: &watch::Sender<BTreeSet<String>>,
    nl: &Netlink,
    batch: Vec<Endpoint>,
) {
    endpoints.pauses.at("reap").await;
    let started = std::time::Instant::now();
    let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    let mut gone = Vec::with_capacity(batch.len());
    match nl.delete_link_group(REAP_GROUP).await {
        Ok(()) => gone.extend(batch),
        Err(e) => {
            tracing::warn!("delete link group {REAP_GROUP}: {e}; deleting one by one");
            for ep in batch {
                match endpoints.delete_host_link(nl, &ep).await {
                    Ok(()) => gone.push(ep),
                    // Left `detaching`: reconciliation retries.
                    Err(e) => {
                        endpoints.host.metrics().error("detach");
                        tracing::error!(id = %ep.id, "{e}");
                    }
                }
            }
        }
    }
    if let Err(e) = endpoints.forget(&gone) {
        endpoints.host.metrics().error("detach");
        tracing::error!("forget detached containers: {e}; reconciliation retries");
    }
    endpoints.restore_shared_routes(&gone).await;
    endpoints.release_bridge_addresses(&gone).await;
    done(pending, &ids);
    tracing::debug!(
        links = gone.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "reaped"
    );
}
