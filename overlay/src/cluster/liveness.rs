//! Liveness, apart from the reservation: a short lease kept alive at a third
//! of its TTL with `alive/<id>` attached. A lease that ended (the host was cut
//! off longer than the TTL) is granted anew and the key put again; the
//! reservation is never touched by any of this. The same task refreshes the
//! reservation and, from the peer view it is given, reclaims dead hosts'
//! expired ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::records::alive_key;
use super::view::PeerView;
use super::watcher::random_u64;
use super::{store_error, ClusterError, Member};
use crate::store::{Operation, Store, StoreError, Txn};

/// Counters of the liveness task.
#[derive(Debug, Default)]
pub struct LivenessCounters {
    /// Keep-alives that failed (store unreachable, lease gone).
    pub keep_alive_failures: AtomicU64,
    /// Leases granted again after the previous one ended.
    pub lease_regrants: AtomicU64,
    /// Reservations of dead hosts this host reclaimed.
    pub reclaimed: AtomicU64,
}

/// The running liveness task; it stops (without revoking, as a crash would) when dropped.
pub struct LivenessTask {
    handle: JoinHandle<()>,
    counters: Arc<LivenessCounters>,
}

impl LivenessTask {
    /// The task's counters.
    pub fn counters(&self) -> &LivenessCounters {
        &self.counters
    }

    /// Stops keeping the lease alive; it then ends after its TTL. (To end it
    /// at once, [`Member::leave`] revokes it.)
    pub fn stop(self) {
        self.handle.abort();
    }
}

impl Drop for LivenessTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl<S: Store> Member<S> {
    /// Grants a liveness lease and puts `alive/<id>` on it: the host shows alive.
    pub async fn go_alive(&self, name: &str) -> Result<(), ClusterError> {
        let doing = format!("announce host {} alive", self.id);
        let lease = self
            .store
            .grant_lease(self.timing.liveness_ttl)
            .await
            .map_err(store_error(doing.clone()))?;
        self.store
            .txn(Txn {
                compares: vec![],
                on_success: vec![Operation::Put {
                    key: alive_key(&self.id),
                    value: name.as_bytes().to_vec(),
                    lease: Some(lease.id),
                }],
                on_failure: vec![],
            })
            .await
            .map_err(store_error(doing))?;
        if let Some(old) = self.lease.lock().await.replace(lease.id) {
            // A lease from an earlier life; it may be gone already.
            let _ = self.store.revoke_lease(old).await;
        }
        Ok(())
    }

    /// The liveness lease now held (None before [`Member::go_alive`] or
    /// after [`Member::leave`]); it changes when an ended lease is granted
    /// anew, so keys tied to it must be put again.
    pub async fn liveness_lease(&self) -> Option<crate::store::LeaseId> {
        *self.lease.lock().await
    }

    /// Keeps this host alive until the task is dropped or stopped: renews the
    /// lease, grants a new one when it ended, refreshes the reservation and
    /// reclaims expired ones (candidates from `view`, the watcher's) on their
    /// periods. Failures are counted and logged, never fatal. Call
    /// [`Member::go_alive`] first.
    pub fn spawn_liveness(
        self: &Arc<Self>,
        name: String,
        view: watch::Receiver<Arc<PeerView>>,
    ) -> LivenessTask {
        let counters = Arc::new(LivenessCounters::default());
        let member = self.clone();
        let task_counters = counters.clone();
        let handle =
            tokio::spawn(async move { member.keep_alive_loop(name, view, task_counters).await });
        LivenessTask { handle, counters }
    }

    async fn keep_alive_loop(
        &self,
        name: String,
        view: watch::Receiver<Arc<PeerView>>,
        counters: Arc<LivenessCounters>,
    ) {
        let period = self.timing.keep_alive_period();
        let mut next_refresh = Instant::now() + self.timing.reservation_refresh;
        // Hosts sweep at random points of the period: the first to find an
        // expired reservation takes it, the others see it gone in their view.
        let reclaim_every = self.timing.reclaim_every;
        let mut next_reclaim = Instant::now() + reclaim_every.mul_f64(0.5 + spread());
        loop {
            tokio::time::sleep(period).await;
            let lease = *self.lease.lock().await;
            let kept = match lease {
                Some(lease) => self.store.keep_alive(lease).await.map(|_| ()),
                None => Err(StoreError::LeaseNotFound { lease: 0 }),
            };
            match kept {
                Ok(()) => {}
                Err(StoreError::LeaseNotFound { .. }) => {
                    counters.keep_alive_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(host = %self.id, "liveness lease ended; granting a new one");
                    match self.go_alive(&name).await {
                        Ok(()) => {
                            counters.lease_regrants.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(host = %self.id, "{e}"),
                    }
                    continue;
                }
                Err(e) => {
                    counters.keep_alive_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(host = %self.id, "keep-alive failed: {e}");
                    continue;
                }
            }
            let now = Instant::now();
            if now >= next_refresh {
                match self.refresh_reservation().await {
                    Ok(_) => next_refresh = now + self.timing.reservation_refresh,
                    Err(e) => tracing::warn!(host = %self.id, "{e}"),
                }
            }
            if now >= next_reclaim {
                next_reclaim = now + reclaim_every.mul_f64(0.5 + spread());
                let current = view.borrow().clone();
                match self.reclaim_expired(&current).await {
                    Ok(hosts) => {
                        counters
                            .reclaimed
                            .fetch_add(hosts.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(host = %self.id, "{e}"),
                }
            }
        }
    }
}

/// A random fraction in [0, 1).
fn spread() -> f64 {
    (random_u64() % 1000) as f64 / 1000.0
}
