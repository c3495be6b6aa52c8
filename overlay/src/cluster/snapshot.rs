//! The whole cluster at one revision, read in one listing of `/weft/v1/`.
//! A start reads it once: the config, this host's record, the join's picture
//! of who holds what, and the watcher's first view all come from it, so a
//! host that starts with a thousand others asks the store one question
//! instead of four (in a storm every read waits behind the writes).

use super::admin::{config_of, holdings};
use super::records::{ClusterConfig, HostRecord, ROOT};
use super::{store_error, ClusterError, HostId};
use crate::store::{Listing, Revision, Store};

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

    /// `id`'s record, if it has a readable one.
    pub fn record(&self, id: &HostId) -> Option<HostRecord> {
        holdings(&self.listing, id)
            .record
            .and_then(|(_, record)| record)
    }
}
