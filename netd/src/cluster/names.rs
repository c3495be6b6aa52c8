//! Names across the cluster. Each host puts its containers' names under
//! `/weft/v1/names/<host id>` (one key per host, attached to its liveness
//! lease: a dead host's names go when its lease ends) and follows the
//! others' keys into its [`NameTable`] with `replace_host`.
//!
//! One key per host: an attach or detach is one put, and a host that dies
//! loses all its names in one delete. The key is written when the local
//! records change and again whenever the lease was granted anew.
//!
//! A name (or address) two hosts publish stays with the host that holds it;
//! among hosts applied in the same batch the older key (lower create
//! revision) wins. The other host's record is refused, logged and counted,
//! and tried again whenever a host's names change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::overlay::cluster::records::{names_key, NAMES};
use ::overlay::cluster::HostId;
use ::overlay::store::{
    KeyValue, Listing, Operation, Revision, Store, StoreError, Txn, Watch, WatchEvent,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::ClusterHost;
use crate::names::{ContainerNames, NameSource, NameTable};

/// The value of a host's names key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedNames {
    /// The publishing host's name (what `netd names` shows as the host).
    host: String,
    names: Vec<PublishedName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedName {
    container: String,
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
}

/// Counters of names across the cluster, for `netd cluster status`.
#[derive(Debug, Default)]
pub(super) struct NamesCounters {
    pub(super) puts: AtomicU64,
    pub(super) put_failures: AtomicU64,
    pub(super) relists: AtomicU64,
    /// Keys ignored: not JSON, not a host id, a host name already used.
    pub(super) bad_data: AtomicU64,
    /// Records refused: a name or address another host holds, or a bad name.
    pub(super) refused: AtomicU64,
}

/// How often the publisher looks whether the liveness lease changed.
const LEASE_CHECK: Duration = Duration::from_secs(1);

impl ClusterHost {
    /// Publishes this host's names from `table` (on each `changed` and after
    /// a lease re-grant) and follows the other hosts' into it, until `stopped`.
    pub async fn share_names(
        self: Arc<Self>,
        table: Arc<NameTable>,
        changed: Arc<Notify>,
        stopped: watch::Receiver<bool>,
    ) {
        let first = self
            .names_at_join
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let key = names_key(self.id());
        // No names key of ours at the join: an empty list need not be put
        // (a new host, or one whose last names ended with its lease).
        let stored_nothing = first
            .as_ref()
            .is_some_and(|l| l.entries.iter().all(|kv| kv.key != key));
        tokio::join!(
            self.publish_names(&table, &changed, stored_nothing, stopped.clone()),
            self.follow_names(&table, first, stopped),
        );
    }

    pub(super) fn names_status(&self) -> super::report::NamesStatus {
        let c = &self.names_counters;
        super::report::NamesStatus {
            puts: c.puts.load(Ordering::Relaxed),
            put_failures: c.put_failures.load(Ordering::Relaxed),
            relists: c.relists.load(Ordering::Relaxed),
            bad_data: c.bad_data.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    async fn publish_names(
        &self,
        table: &NameTable,
        changed: &Notify,
        stored_nothing: bool,
        mut stopped: watch::Receiver<bool>,
    ) {
        let key = names_key(self.id());
        let mut written: Option<(PublishedNames, i64)> = None;
        loop {
            let lease = self.member.liveness_lease().await;
            let value = self.local_names(table);
            if let (Some(lease), None) = (lease, &written) {
                if stored_nothing && value.names.is_empty() {
                    // No key is the same as an empty list to the others.
                    written = Some((value.clone(), lease));
                }
            }
            if let Some(lease) = lease {
                if written.as_ref() != Some(&(value.clone(), lease)) {
                    match self.put_names(&key, &value, lease).await {
                        Ok(()) => {
                            self.names_counters.puts.fetch_add(1, Ordering::Relaxed);
                            written = Some((value, lease));
                        }
                        Err(e) => {
                            self.names_counters
                                .put_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%key, "cluster names: publish: {e}; retrying");
                        }
                    }
                }
            }
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(LEASE_CHECK) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    fn local_names(&self, table: &NameTable) -> PublishedNames {
        let names = table
            .records()
            .into_iter()
            .filter(|r| r.source == NameSource::Local)
            .map(|r| PublishedName {
                container: r.container,
                name: r.name,
                aliases: r.aliases,
                ipv4: r.ipv4,
                ipv6: r.ipv6,
            })
            .collect();
        PublishedNames {
            host: self.name.clone(),
            names,
        }
    }

    async fn put_names(
        &self,
        key: &str,
        value: &PublishedNames,
        lease: i64,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(value).expect("names serialize");
        self.store
            .txn(Txn {
                compares: vec![],
                on_success: vec![Operation::Put {
                    key: key.to_string(),
                    value,
                    lease: Some(lease),
                }],
                on_failure: vec![],
            })
            .await
            .map(|_| ())
    }

    /// List at R, watch from R+1, list again after compaction or an error.
    /// `first`: the names keys of the join's listing, to start from.
    async fn follow_names(
        &self,
        table: &NameTable,
        mut first: Option<Listing>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut remote = RemoteNames::new(self.name.clone(), names_key(self.id()));
        let mut backoff = Duration::from_millis(200);
        loop {
            let error = tokio::select! {
                e = self.follow_names_once(table, first.take(), &mut remote) => e,
                _ = stopped.changed() => return,
            };
            self.names_counters.relists.fetch_add(1, Ordering::Relaxed);
            if let StoreError::Compacted { .. } = error {
                backoff = Duration::from_millis(200);
                continue;
            }
            tracing::warn!("cluster names: {error}; listing again in {backoff:?}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_names_once(
        &self,
        table: &NameTable,
        first: Option<Listing>,
        remote: &mut RemoteNames,
    ) -> StoreError {
        let listing = match first {
            Some(listing) => listing,
            None => match self.store.list(NAMES).await {
                Ok(l) => l,
                Err(e) => return e,
            },
        };
        let keys = listing
            .entries
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        remote.relisted(keys, table, &self.names_counters);
        let mut watch = match self.store.watch(NAMES, listing.revision + 1).await {
            Ok(w) => w,
            Err(e) => return e,
        };
        loop {
            let events = match watch.next().await {
                Ok(events) => events,
                Err(e) => return e,
            };
            let mut changes = BTreeMap::new();
            for event in events {
                match event {
                    WatchEvent::Put(kv) => changes.insert(kv.key.clone(), Some(kv)),
                    WatchEvent::Delete { key, .. } => changes.insert(key, None),
                };
            }
            remote.changed(changes, table, &self.names_counters);
        }
    }
}

/// One other host's names as applied.
struct Applied {
    host: String,
    records: Vec<ContainerNames>,
    /// Some records were refused: tried again after any change.
    refused: bool,
}

/// The other hosts' names keys and what was applied of each.
struct RemoteNames {
    own_name: String,
    own_key: String,
    applied: BTreeMap<String, Applied>,
    /// (key, mod revision) of bad data already counted.
    counted: HashSet<(String, Revision)>,
}

impl RemoteNames {
    fn new(own_name: String, own_key: String) -> RemoteNames {
        RemoteNames {
            own_name,
            own_key,
            applied: BTreeMap::new(),
            counted: HashSet::new(),
        }
    }

    /// A fresh listing: keys gone since the last are removed.
    fn relisted(
        &mut self,
        keys: BTreeMap<String, KeyValue>,
        table: &NameTable,
        counters: &NamesCounters,
    ) {
        let mut changes: BTreeMap<String, Option<KeyValue>> = self
            .applied
            .keys()
            .filter(|k| !keys.contains_key(*k))
            .map(|k| (k.clone(), None))
            .collect();
        changes.extend(keys.into_iter().map(|(k, kv)| (k, Some(kv))));
        self.changed(changes, table, counters);
    }

    /// Applies changed keys (None: deleted), removals first, then the rest
    /// by create revision, then retries hosts with refused records.
    fn changed(
        &mut self,
        changes: BTreeMap<String, Option<KeyValue>>,
        table: &NameTable,
        counters: &NamesCounters,
    ) {
        let mut puts: Vec<KeyValue> = Vec::new();
        for (key, kv) in changes {
            if key == self.own_key {
                continue;
            }
            if let Some(old) = self.applied.remove(&key) {
                table.replace_host(&old.host, Vec::new());
                tracing::info!(%key, host = %old.host, "cluster names: host's names removed");
            }
            if let Some(kv) = kv {
                puts.push(kv);
            }
        }
        puts.sort_by_key(|kv| (kv.create_revision, kv.key.clone()));
        for kv in puts {
            match self.parse(&kv) {
                Ok(applied) => {
                    let key = kv.key.clone();
                    self.applied.insert(key.clone(), applied);
                    self.apply(&key, table, counters);
                }
                Err(reason) => {
                    if self.counted.insert((kv.key.clone(), kv.mod_revision)) {
                        counters.bad_data.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %kv.key, "cluster names: ignored bad data: {reason}");
                    }
                }
            }
        }
        let retry: Vec<String> = self
            .applied
            .iter()
            .filter(|(_, a)| a.refused)
            .map(|(k, _)| k.clone())
            .collect();
        for key in retry {
            self.apply(&key, table, counters);
        }
    }

    fn apply(&mut self, key: &str, table: &NameTable, counters: &NamesCounters) {
        let Some(applied) = self.applied.get_mut(key) else {
            return;
        };
        let report = table.replace_host(&applied.host, applied.records.clone());
        let was_refused = applied.refused;
        applied.refused = !report.refused.is_empty();
        // A refusal already logged is not logged again on each retry.
        if !was_refused {
            for e in &report.refused {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, host = %applied.host, "cluster names: not served: {e}");
            }
        }
    }

    fn parse(&self, kv: &KeyValue) -> Result<Applied, String> {
        let id = kv.key.strip_prefix(NAMES).unwrap_or_default();
        if id.parse::<HostId>().is_err() {
            return Err("the key does not end in a host id".into());
        }
        let published: PublishedNames =
            serde_json::from_slice(&kv.value).map_err(|e| format!("not names JSON: {e}"))?;
        if published.host.is_empty() {
            return Err("no host name".into());
        }
        if published.host == self.own_name {
            return Err(format!(
                "host name {:?} is this host's own; host names must differ",
                published.host
            ));
        }
        let clash: HashMap<&str, &str> = self
            .applied
            .iter()
            .map(|(k, a)| (a.host.as_str(), k.as_str()))
            .collect();
        if let Some(other) = clash.get(published.host.as_str()) {
            return Err(format!(
                "host name {:?} is already published by {other}; host names must differ",
                published.host
            ));
        }
        let records = published
            .names
            .into_iter()
            .map(|n| ContainerNames {
                // Container ids are unique per host only.
                container: format!("{}/{}", published.host, n.container),
                name: n.name,
                aliases: n.aliases,
                ipv4: n.ipv4,
                ipv6: n.ipv6,
                host: published.host.clone(),
                source: NameSource::Cluster,
            })
            .collect();
        Ok(Applied {
            host: published.host,
            records,
            refused: false,
        })
    }
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;
