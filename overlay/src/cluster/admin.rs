//! The cluster as a whole rather than this host: the config written once and
//! read back, one host's records in a listing, and `forget` (an admin removing
//! a host that is gone).

use super::records::{
    alive_key, host_key, parse_subnet_key, ClusterConfig, HostRecord, CONFIG_KEY, ROOT,
};
use super::{store_error, ClusterError, HostId};
use crate::store::{Compare, KeyValue, Listing, Operation, Store, Txn};

/// How many lost races a write survives before it reports contention.
pub(super) const MAX_ATTEMPTS: u32 = 64;

/// Writes the cluster config unless one exists. `Ok(true)`: written;
/// `Ok(false)`: the same config was there; a different one is an error naming both.
pub async fn init<S: Store>(store: &S, config: &ClusterConfig) -> Result<bool, ClusterError> {
    config.validate()?;
    let wanted = serde_json::to_vec(config).expect("a config serializes");
    let outcome = store
        .txn(Txn {
            compares: vec![Compare::Absent(CONFIG_KEY.into())],
            on_success: vec![Operation::put(CONFIG_KEY, wanted.clone())],
            on_failure: vec![],
        })
        .await
        .map_err(store_error(format!(
            "write the cluster config at {CONFIG_KEY}"
        )))?;
    if outcome.succeeded {
        return Ok(true);
    }
    let existing = read_config(store).await?;
    if &existing == config {
        Ok(false)
    } else {
        Err(ClusterError::ConfigMismatch {
            existing: serde_json::to_string(&existing).expect("a config serializes"),
            wanted: String::from_utf8_lossy(&wanted).into_owned(),
        })
    }
}

/// The cluster config in the store.
pub async fn read_config<S: Store>(store: &S) -> Result<ClusterConfig, ClusterError> {
    let listing = store.list(CONFIG_KEY).await.map_err(store_error(format!(
        "read the cluster config at {CONFIG_KEY}"
    )))?;
    config_of(&listing)
}

pub(super) fn config_of(listing: &Listing) -> Result<ClusterConfig, ClusterError> {
    let entry = listing
        .entries
        .iter()
        .find(|e| e.key == CONFIG_KEY)
        .ok_or(ClusterError::NoConfig { key: CONFIG_KEY })?;
    let config: ClusterConfig =
        serde_json::from_slice(&entry.value).map_err(|e| ClusterError::ConfigUnreadable {
            key: CONFIG_KEY.into(),
            reason: e.to_string(),
        })?;
    config
        .validate()
        .map_err(|e| ClusterError::ConfigUnreadable {
            key: CONFIG_KEY.into(),
            reason: e.to_string(),
        })?;
    Ok(config)
}

/// The records of one host in a listing.
pub(super) struct Holdings<'a> {
    pub record: Option<(&'a KeyValue, Option<HostRecord>)>,
    /// Subnet keys whose value names the host.
    pub subnets: Vec<&'a KeyValue>,
    pub alive: Option<&'a KeyValue>,
}

pub(super) fn holdings<'a>(listing: &'a Listing, id: &HostId) -> Holdings<'a> {
    let host = host_key(id);
    let alive = alive_key(id);
    let mut held = Holdings {
        record: None,
        subnets: Vec::new(),
        alive: None,
    };
    for entry in &listing.entries {
        if entry.key == host {
            held.record = Some((entry, serde_json::from_slice(&entry.value).ok()));
        } else if entry.key == alive {
            held.alive = Some(entry);
        } else if parse_subnet_key(&entry.key).is_some() && entry.value == id.as_str().as_bytes() {
            held.subnets.push(entry);
        }
    }
    held
}

/// One transaction removing everything `held` names, provided none of it changed since.
pub(super) fn removal(held: &Holdings<'_>) -> Txn {
    let mut txn = Txn::default();
    let entries = held
        .record
        .iter()
        .map(|(kv, _)| *kv)
        .chain(held.subnets.iter().copied())
        .chain(held.alive);
    for kv in entries {
        txn.compares
            .push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
        txn.on_success.push(Operation::Delete(kv.key.clone()));
    }
    txn
}

/// Removes a host that is gone (an admin's `forget`): its record, subnets
/// and liveness, in one transaction. Refused while it is alive unless `force`.
pub async fn forget<S: Store>(
    store: &S,
    host: &str,
    force: bool,
) -> Result<HostRecord, ClusterError> {
    let id: HostId = host
        .parse()
        .map_err(|_| ClusterError::UnknownHost { host: host.into() })?;
    for _ in 0..MAX_ATTEMPTS {
        let listing = store
            .list(ROOT)
            .await
            .map_err(store_error(format!("list the cluster to forget {id}")))?;
        let held = holdings(&listing, &id);
        let Some((_, record)) = &held.record else {
            return Err(ClusterError::UnknownHost { host: host.into() });
        };
        let record = record.clone().ok_or_else(|| ClusterError::UnknownHost {
            host: format!("{host} (its record is unreadable)"),
        })?;
        if held.alive.is_some() && !force {
            return Err(ClusterError::HostAlive {
                host: id,
                name: record.name,
            });
        }
        let outcome = store
            .txn(removal(&held))
            .await
            .map_err(store_error(format!("forget host {id}")))?;
        if outcome.succeeded {
            return Ok(record);
        }
    }
    Err(ClusterError::Contention {
        doing: format!("forget host {id}"),
        attempts: MAX_ATTEMPTS,
    })
}
