//! This host's membership: the reservation taken or found, the key published, the reservation given back. Every write is a
//! transaction that compares what it read, so racing hosts never both win.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::admin::{config_of, holdings, removal, MAX_ATTEMPTS};
use super::records::{
    host_key, parse_subnet_key, subnet_key, unix_seconds, ClusterConfig, HostRecord, ROOT,
};
use super::{store_error, ClusterError, HostId, Snapshot};
use crate::store::{Compare, LeaseId, Listing, Operation, Revision, Store, Txn};
use crate::PublicKey;

/// The wall clock reservations are measured on (a trait so tests can move it).
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The cluster's timings. Defaults: a 10 s liveness lease renewed every
/// 3.3 s, a 24 h reservation refreshed hourly, dead hosts checked each minute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The liveness lease's TTL (below 5 s only for tests: etcd may stretch it).
    pub liveness_ttl: Duration,
    /// How often the lease is renewed; a third of the TTL when `None`.
    pub keep_alive_every: Option<Duration>,
    /// How long a dead host keeps its subnets.
    pub reservation_expiry: Duration,
    /// How often a live host pushes its reservation's end forward.
    pub reservation_refresh: Duration,
    /// How often a live host looks for expired reservations to reclaim.
    pub reclaim_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            liveness_ttl: Duration::from_secs(10),
            keep_alive_every: None,
            reservation_expiry: Duration::from_secs(24 * 3600),
            reservation_refresh: Duration::from_secs(3600),
            reclaim_every: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// The keep-alive period in force.
    pub fn keep_alive_period(&self) -> Duration {
        self.keep_alive_every.unwrap_or(self.liveness_ttl / 3)
    }
}

/// What this host advertises to its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAdvert {
    /// The host's name, for people.
    pub name: String,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its overlay endpoint, when it advertises one (configured or detected).
    pub endpoint: Option<SocketAddr>,
}

/// This host's membership.
pub struct Member<S> {
    pub(super) store: Arc<S>,
    pub(super) id: HostId,
    pub(super) timing: Timing,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) lease: tokio::sync::Mutex<Option<LeaseId>>,
    pub(super) config: std::sync::Mutex<Option<ClusterConfig>>,
}

impl<S: Store> Member<S> {
    /// A member `id` of the cluster in `store`; nothing is written until [`Member::join`].
    pub fn new(store: Arc<S>, id: HostId, timing: Timing, clock: Arc<dyn Clock>) -> Member<S> {
        Member {
            store,
            id,
            timing,
            clock,
            lease: tokio::sync::Mutex::new(None),
            config: std::sync::Mutex::new(None),
        }
    }

    /// This host's id.
    pub fn id(&self) -> &HostId {
        &self.id
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The config joined with (after [`Member::join`]).
    pub fn config(&self) -> Option<ClusterConfig> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reserved_until(&self) -> u64 {
        unix_seconds(
            self.clock.now() + self.timing.reservation_expiry + self.timing.reservation_refresh,
        )
    }

    /// Finds this host's reservation and keeps it, or takes free subnets
    /// (create-if-absent, the next candidate on a lost race); then publishes
    /// `advert`. A changed key bumps the key epoch.
    pub async fn join(&self, advert: &HostAdvert) -> Result<HostRecord, ClusterError> {
        self.join_keeping(advert, None).await
    }

    /// [`Member::join`] for a host that ran before with `kept`'s subnets
    /// (its saved reservation): when its record is gone (forgotten or
    /// reclaimed while it was away) it takes those subnets back if they are
    /// free. With `kept.strict` (the host is serving containers on them
    /// already) it never takes others: a subnet another host holds now is
    /// [`ClusterError::ReservationLost`].
    pub async fn join_keeping(
        &self,
        advert: &HostAdvert,
        kept: Option<&KeptSubnets>,
    ) -> Result<HostRecord, ClusterError> {
        Ok(self.join_listed(None, advert, kept).await?.0)
    }

    /// [`Member::join_keeping`] whose first attempt works from `snapshot`
    /// (read by the caller, who needed the config and this host's record
    /// before joining); a lost race lists again. The join's writes are
    /// added to `snapshot`, so a watcher started from it shows this host at
    /// once (its watch, from the snapshot's revision, replays them too).
    pub async fn join_from(
        &self,
        snapshot: &mut Snapshot,
        advert: &HostAdvert,
        kept: Option<&KeptSubnets>,
    ) -> Result<HostRecord, ClusterError> {
        let (record, writes, revision) = self
            .join_listed(Some(&snapshot.listing), advert, kept)
            .await?;
        snapshot.add_writes(writes, revision);
        Ok(record)
    }

    /// The record, the writes of the transaction that joined, and its revision.
    async fn join_listed(
        &self,
        mut first: Option<&Listing>,
        advert: &HostAdvert,
        kept: Option<&KeptSubnets>,
    ) -> Result<(HostRecord, Vec<Operation>, Revision), ClusterError> {
        let doing = format!("join host {} to the cluster", self.id);
        for _ in 0..MAX_ATTEMPTS {
            let fresh;
            let listing = match first.take() {
                Some(listing) => listing,
                None => {
                    fresh = self
                        .store
                        .list(ROOT)
                        .await
                        .map_err(store_error(doing.clone()))?;
                    &fresh
                }
            };
            let config = config_of(listing)?;
            let held = holdings(listing, &self.id);
            let mut txn = Txn::default();
            let existing = match &held.record {
                Some((kv, Some(record))) => {
                    self.check_honours(&config, record)?;
                    txn.compares
                        .push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                    Some(record.clone())
                }
                Some((kv, None)) => {
                    // Our own record unreadable: replace it, keeping no subnet we cannot name.
                    txn.compares
                        .push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                    None
                }
                None => {
                    txn.compares.push(Compare::Absent(host_key(&self.id)));
                    None
                }
            };
            let used = used_subnets(listing);
            let mine: HashSet<IpNetwork> = held
                .subnets
                .iter()
                .filter_map(|kv| parse_subnet_key(&kv.key))
                .collect();
            let pick = |current: Option<IpNetwork>,
                        kept_subnet: Option<IpNetwork>,
                        capacity: u64,
                        nth: &dyn Fn(u64) -> IpNetwork,
                        family,
                        range: String| {
                let current = current.or(kept_subnet);
                let picked = match current {
                    Some(s) if mine.contains(&s) => Ok((s, false)),
                    Some(s) if !used.contains(&s) => Ok((s, true)),
                    _ => free_subnet(&used, capacity, nth).map(|s| (s, true)).ok_or(
                        ClusterError::RangeFull {
                            family,
                            range,
                            capacity,
                        },
                    ),
                }?;
                match kept_subnet {
                    Some(wanted) if kept.is_some_and(|k| k.strict) && picked.0 != wanted => {
                        Err(ClusterError::ReservationLost {
                            host: self.id.clone(),
                            subnet: wanted.to_string(),
                            holder: holder_of(listing, wanted),
                        })
                    }
                    _ => Ok(picked),
                }
            };
            let (v4, new_v4) = pick(
                existing.as_ref().map(|r| IpNetwork::V4(r.ipv4_subnet)),
                kept.map(|k| IpNetwork::V4(k.ipv4)),
                config.ipv4_capacity(),
                &|i| IpNetwork::V4(config.ipv4_subnet(i)),
                "IPv4",
                config.ipv4_range.to_string(),
            )?;
            let v6 = match config.ipv6_range {
                None => None,
                Some(range) => Some(pick(
                    existing
                        .as_ref()
                        .and_then(|r| r.ipv6_subnet)
                        .map(IpNetwork::V6),
                    kept.and_then(|k| k.ipv6).map(IpNetwork::V6),
                    config.ipv6_capacity(),
                    &|i| IpNetwork::V6(config.ipv6_subnet(i).expect("IPv6 configured")),
                    "IPv6",
                    range.to_string(),
                )?),
            };
            let claimed: Vec<IpNetwork> = std::iter::once((v4, new_v4))
                .chain(v6)
                .filter(|(_, new)| *new)
                .map(|(s, _)| s)
                .collect();
            for subnet in &claimed {
                let key = subnet_key(*subnet);
                txn.compares.push(Compare::Absent(key.clone()));
                txn.on_success.push(Operation::put(key, self.id.as_str()));
            }
            // Subnets we hold but no longer name (a lost record): give them back.
            let named: HashSet<IpNetwork> = std::iter::once(v4).chain(v6.map(|(s, _)| s)).collect();
            for kv in &held.subnets {
                if parse_subnet_key(&kv.key).is_some_and(|s| !named.contains(&s)) {
                    txn.compares
                        .push(Compare::ModRevision(kv.key.clone(), kv.mod_revision));
                    txn.on_success.push(Operation::Delete(kv.key.clone()));
                }
            }
            let public_key = advert.public_key.to_base64();
            let key_epoch = match &existing {
                Some(r) if r.public_key == public_key => r.key_epoch,
                Some(r) => r.key_epoch + 1,
                None => 1,
            };
            let record = HostRecord {
                id: self.id.clone(),
                name: advert.name.clone(),
                public_key,
                key_epoch,
                endpoint: advert.endpoint.map(|e| e.to_string()),
                ipv4_subnet: match v4 {
                    IpNetwork::V4(s) => s,
                    IpNetwork::V6(_) => unreachable!("an IPv4 pick"),
                },
                ipv6_subnet: v6.map(|(s, _)| match s {
                    IpNetwork::V6(s) => s,
                    IpNetwork::V4(_) => unreachable!("an IPv6 pick"),
                }),
                reserved_until: self.reserved_until(),
            };
            txn.on_success
                .push(Operation::put(host_key(&self.id), record.to_json()));
            let writes = txn.on_success.clone();
            let outcome = self
                .store
                .txn(txn)
                .await
                .map_err(store_error(doing.clone()))?;
            if outcome.succeeded {
                tracing::info!(host = %self.id, subnets = ?record.subnets(), "joined the cluster");
                *self.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(config);
                return Ok((record, writes, outcome.revision));
            }
            tracing::debug!(host = %self.id, "join lost a race; trying again");
        }
        Err(ClusterError::Contention {
            doing,
            attempts: MAX_ATTEMPTS,
        })
    }

    fn check_honours(
        &self,
        config: &ClusterConfig,
        record: &HostRecord,
    ) -> Result<(), ClusterError> {
        let refuse = |reason: String| {
            Err(ClusterError::CannotHonour {
                host: self.id.clone(),
                reason,
            })
        };
        if !config.holds_ipv4(record.ipv4_subnet) {
            return refuse(format!(
                "its reserved subnet {} is not a /{} of the cluster range {}",
                record.ipv4_subnet, config.ipv4_subnet_len, config.ipv4_range
            ));
        }
        match (record.ipv6_subnet, config.ipv6_range) {
            (Some(s), _) if !config.holds_ipv6(s) => refuse(format!(
                "its reserved IPv6 subnet {s} is not a subnet of the cluster's IPv6 range {:?}",
                config.ipv6_range.map(|r| r.to_string())
            )),
            _ => Ok(()),
        }
    }

    /// Rewrites this host's record with `change` applied, comparing its
    /// mod_revision so a concurrent writer (an admin's forget) is not overwritten.
    pub(super) async fn update_record(
        &self,
        doing: &str,
        change: impl Fn(&mut HostRecord),
    ) -> Result<(HostRecord, Revision), ClusterError> {
        for _ in 0..MAX_ATTEMPTS {
            let listing = self
                .store
                .list(&host_key(&self.id))
                .await
                .map_err(store_error(doing))?;
            let Some(kv) = listing.entries.iter().find(|e| e.key == host_key(&self.id)) else {
                return Err(ClusterError::NotJoined);
            };
            let mut record: HostRecord =
                serde_json::from_slice(&kv.value).map_err(|_| ClusterError::NotJoined)?;
            change(&mut record);
            let outcome = self
                .store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)],
                    on_success: vec![Operation::put(kv.key.clone(), record.to_json())],
                    on_failure: vec![],
                })
                .await
                .map_err(store_error(doing))?;
            if outcome.succeeded {
                return Ok((record, outcome.revision));
            }
        }
        Err(ClusterError::Contention {
            doing: doing.into(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Publishes a new public key with the key epoch + 1 (key rotation).
    pub async fn publish_key(&self, key: &PublicKey) -> Result<HostRecord, ClusterError> {
        let text = key.to_base64();
        let (record, _) = self
            .update_record(&format!("publish host {}'s new key", self.id), |r| {
                if r.public_key != text {
                    r.public_key = text.clone();
                    r.key_epoch += 1;
                }
            })
            .await?;
        Ok(record)
    }

    /// Pushes this host's reservation end forward (done while it lives).
    pub async fn refresh_reservation(&self) -> Result<HostRecord, ClusterError> {
        let until = self.reserved_until();
        let (record, _) = self
            .update_record(&format!("refresh host {}'s reservation", self.id), |r| {
                r.reserved_until = until
            })
            .await?;
        Ok(record)
    }

    /// Gives the reservation back at once: record, subnets and liveness key in
    /// one transaction, then the lease revoked. Stop the liveness task first.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let doing = format!("leave the cluster (host {})", self.id);
        let mut done = false;
        for _ in 0..MAX_ATTEMPTS {
            let listing = self
                .store
                .list(ROOT)
                .await
                .map_err(store_error(doing.clone()))?;
            let held = holdings(&listing, &self.id);
            if held.record.is_none() && held.subnets.is_empty() && held.alive.is_none() {
                done = true;
                break;
            }
            if self
                .store
                .txn(removal(&held))
                .await
                .map_err(store_error(doing.clone()))?
                .succeeded
            {
                done = true;
                break;
            }
        }
        if !done {
            return Err(ClusterError::Contention {
                doing,
                attempts: MAX_ATTEMPTS,
            });
        }
        if let Some(lease) = self.lease.lock().await.take() {
            match self.store.revoke_lease(lease).await {
                Ok(()) | Err(crate::store::StoreError::LeaseNotFound { .. }) => {}
                Err(e) => return Err(store_error(doing)(e)),
            }
        }
        tracing::info!(host = %self.id, "left the cluster");
        Ok(())
    }
}

/// The subnets a host ran with before, for [`Member::join_keeping`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptSubnets {
    /// Its IPv4 subnet.
    pub ipv4: Ipv4Network,
    /// Its IPv6 subnet, if the cluster has an IPv6 range.
    pub ipv6: Option<Ipv6Network>,
    /// Refuse any other subnet (containers are using these already).
    pub strict: bool,
}

/// The id a subnet's key names, or "unknown".
fn holder_of(listing: &Listing, subnet: IpNetwork) -> String {
    let key = subnet_key(subnet);
    listing
        .entries
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Every subnet some key reserves (whoever holds it, readable value or not).
fn used_subnets(listing: &Listing) -> HashSet<IpNetwork> {
    listing
        .entries
        .iter()
        .filter_map(|e| parse_subnet_key(&e.key))
        .collect()
}

/// A free subnet, starting from a random index so hosts joining together
/// rarely race for the same one.
fn free_subnet(
    used: &HashSet<IpNetwork>,
    capacity: u64,
    nth: &dyn Fn(u64) -> IpNetwork,
) -> Option<IpNetwork> {
    let ipv4 = nth(0).is_ipv4();
    if used.iter().filter(|s| s.is_ipv4() == ipv4).count() as u64 >= capacity {
        return None;
    }
    let start = super::watcher::random_u64() % capacity;
    (0..capacity)
        .map(|i| nth((start + i) % capacity))
        .find(|s| !used.contains(s))
}
