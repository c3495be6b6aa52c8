//! The whole cluster at one revision, read in one listing of `/weft/v1/`.
//! A start reads it once: the config, this host's record, the join's picture
//! of who holds what, and the watcher's first view all come from it, so a
//! host that starts with a thousand others asks the store one question
//! instead of four (in a storm every read waits behind the writes).

use super::admin::{config_of, holdings};
use super::records::{ClusterConfig, HostRecord, ROOT};
use super::{store_error, ClusterError, HostId};
use crate::store::{KeyValue, Listing, Operation, Revision, Store};

/// Every key under `/weft/v1/` at one revision.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(super) listing: Listing,
}

impl Snapshot {
    /// Lists the cluster.
    pub async fn read<S: Store>(store: &S) -> Result<Snapshot, ClusterError> {
        let listing = store
            .list(ROOT)
            .await
            .map_err(store_error(format!("list the cluster at {ROOT}")))?;
        Ok(Snapshot { listing })
    }

    /// The store's revision when it was read.
    pub fn revision(&self) -> Revision {
        self.listing.revision
    }

    /// The cluster's config (an error when there is none or it is unreadable).
    pub fn config(&self) -> Result<ClusterConfig, ClusterError> {
        config_of(&self.listing)
    }

    /// The keys under `prefix` (a part of `/weft/v1/`), at the same
    /// revision: a listing another follower can start from.
    pub fn under(&self, prefix: &str) -> Listing {
        Listing {
            revision: self.listing.revision,
            entries: self
                .listing
                .entries
                .iter()
                .filter(|kv| kv.key.starts_with(prefix))
                .cloned()
                .collect(),
        }
    }

    /// Adds writes made at `revision` since the listing (this host's own,
    /// which its watch from the listing's revision replays: the same values
    /// at the same revision, so nothing changes twice).
    pub(super) fn add_writes(&mut self, writes: Vec<Operation>, revision: Revision) {
        let entries = &mut self.listing.entries;
        for write in writes {
            match write {
                Operation::Put { key, value, lease } => {
                    match entries.binary_search_by(|kv| kv.key.as_str().cmp(&key)) {
                        Ok(i) => {
                            let kv = &mut entries[i];
                            kv.value = value;
                            kv.mod_revision = revision;
                            kv.lease = lease;
                        }
                        Err(i) => entries.insert(
                            i,
                            KeyValue {
                                key,
                                value,
                                create_revision: revision,
                                mod_revision: revision,
                                lease,
                            },
                        ),
                    }
                }
                Operation::Delete(key) => {
                    if let Ok(i) = entries.binary_search_by(|kv| kv.key.as_str().cmp(&key)) {
                        entries.remove(i);
                    }
                }
            }
        }
    }

    /// `id`'s record, if it has a readable one.
    pub fn record(&self, id: &HostId) -> Option<HostRecord> {
        holdings(&self.listing, id)
            .record
            .and_then(|(_, record)| record)
    }
}
