//! Reclaiming dead hosts' expired reservations: the candidates come from
//! the view a host already holds from its watch, so a sweep with nothing to
//! do costs the store nothing; a candidate's keys are read again and removed
//! in one transaction that compares what was read.

use super::admin::{holdings, removal};
use super::records::{host_key, subnet_key, unix_seconds, HostRecord, ALIVE};
use super::view::{HostView, PeerView};
use super::{store_error, ClusterError, Member};
use crate::store::{Compare, Listing, Store, StoreError};

impl<S: Store> Member<S> {
    /// Reclaims the reservations of hosts that `view` shows dead and past
    /// their reservation's end. The view (the watcher's) finds the
    /// candidates, so a sweep costs the store nothing when there are none;
    /// each candidate's keys are read again and removed in one transaction
    /// that compares what was read and that the host is still not alive, so
    /// two hosts sweeping at once do not clash and a host that came back is
    /// left alone.
    pub async fn reclaim_expired(&self, view: &PeerView) -> Result<Vec<HostRecord>, ClusterError> {
        let now = unix_seconds(self.clock.now());
        let mut reclaimed = Vec::new();
        let candidates = view
            .hosts
            .values()
            .filter(|h| h.id != self.id && !h.alive && h.reserved_until < now);
        for candidate in candidates {
            let doing = format!("reclaim host {}'s reservation", candidate.id);
            let listing = self
                .read_holdings(candidate)
                .await
                .map_err(store_error(doing.clone()))?;
            let held = holdings(&listing, &candidate.id);
            let Some((_, Some(record))) = &held.record else {
                continue;
            };
            if held.alive.is_some() || record.reserved_until >= now {
                continue;
            }
            let record = record.clone();
            let mut txn = removal(&held);
            txn.compares
                .push(Compare::Absent(format!("{ALIVE}{}", record.id)));
            let outcome = self.store.txn(txn).await.map_err(store_error(doing))?;
            if outcome.succeeded {
                tracing::info!(host = %record.id, name = %record.name, "reclaimed an expired reservation");
                reclaimed.push(record);
            }
        }
        Ok(reclaimed)
    }

    /// A host's record, liveness key and the subnet keys its view names,
    /// read one by one (not the whole cluster).
    async fn read_holdings(&self, host: &HostView) -> Result<Listing, StoreError> {
        let mut keys = vec![host_key(&host.id), format!("{ALIVE}{}", host.id)];
        keys.extend(host.subnets.iter().map(|s| subnet_key(*s)));
        let mut listing = Listing {
            revision: 0,
            entries: Vec::new(),
        };
        for key in keys {
            let part = self.store.list(&key).await?;
            listing.revision = listing.revision.max(part.revision);
            listing
                .entries
                .extend(part.entries.into_iter().filter(|kv| kv.key == key));
        }
        Ok(listing)
    }
}
