//! The typed peer view built from the raw keys, with bad data filtered out,
//! and the difference between two views (what a caller applies).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::records::{
    parse_subnet_key, ClusterConfig, HostRecord, ALIVE, CONFIG_KEY, HOSTS, SUBNETS,
};
use super::HostId;
use crate::store::{KeyValue, Revision};
use crate::PublicKey;

/// One host as its peers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// The host's id.
    pub id: HostId,
    /// Its name.
    pub name: String,
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Its key epoch.
    pub key_epoch: u64,
    /// The endpoint it advertises (peers set it only when this value changes).
    pub endpoint: Option<SocketAddr>,
    /// Its subnets, IPv4 first.
    pub subnets: Vec<IpNetwork>,
    /// Whether its liveness key is present.
    pub alive: bool,
    /// The mod revision of its record: a rewrite (a join after a restart,
    /// a reservation refresh, a new key) changes it.
    pub record_revision: Revision,
    /// The mod revision of its liveness key: a new lease (a start, or the
    /// store back after the lease ended) changes it; keep-alives do not.
    pub alive_revision: Option<Revision>,
    /// When its reservation ends unless refreshed (Unix seconds): a dead
    /// host past it is reclaimed.
    pub reserved_until: u64,
}

/// Every valid host of the cluster at one revision. It serializes so a host
/// can keep its last view on disk and start from it while the store is down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The store revision the view reflects.
    pub revision: Revision,
    /// The cluster config in force (the first valid one seen; later changes are refused).
    pub config: Option<ClusterConfig>,
    /// The hosts, by id (this host included: callers skip their own id).
    pub hosts: BTreeMap<HostId, HostView>,
}

/// A field of a host that changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostField {
    /// The name.
    Name,
    /// The public key or its epoch.
    PublicKey,
    /// The advertised endpoint.
    Endpoint,
    /// The subnets.
    Subnets,
    /// Alive or dead.
    Liveness,
}

/// A host that changed, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostChange {
    /// The host as it is now.
    pub host: HostView,
    /// What changed.
    pub fields: Vec<HostField>,
}

/// What changed between two views.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewDiff {
    /// New hosts.
    pub added: Vec<HostView>,
    /// Hosts with changed fields.
    pub changed: Vec<HostChange>,
    /// Hosts that are gone (left, forgotten, reclaimed), as they were.
    pub removed: Vec<HostView>,
}

impl ViewDiff {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// What turns `old` into `new`.
    pub fn between(old: &PeerView, new: &PeerView) -> ViewDiff {
        let mut diff = ViewDiff::default();
        for (id, host) in &new.hosts {
            let Some(before) = old.hosts.get(id) else {
                diff.added.push(host.clone());
                continue;
            };
            let mut fields = Vec::new();
            if before.name != host.name {
                fields.push(HostField::Name);
            }
            if before.public_key != host.public_key || before.key_epoch != host.key_epoch {
                fields.push(HostField::PublicKey);
            }
            if before.endpoint != host.endpoint {
                fields.push(HostField::Endpoint);
            }
            if before.subnets != host.subnets {
                fields.push(HostField::Subnets);
            }
            if before.alive != host.alive {
                fields.push(HostField::Liveness);
            }
            if !fields.is_empty() {
                diff.changed.push(HostChange {
                    host: host.clone(),
                    fields,
                });
            }
        }
        diff.removed = old
            .hosts
            .iter()
            .filter(|(id, _)| !new.hosts.contains_key(*id))
            .map(|(_, h)| h.clone())
            .collect();
        diff
    }
}

/// Why a key was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BadDataReason {
    /// The value is not the JSON record the key calls for.
    NotJson,
    /// The public key does not parse.
    BadKey,
    /// The endpoint is not `ip:port`.
    BadEndpoint,
    /// A subnet is held by another host (or overlaps another host's).
    OverlappingSubnet,
    /// A subnet is not a host subnet of the cluster's range, or no reservation names it.
    SubnetNotReserved,
    /// The key's name is malformed (a host id or subnet that does not parse, an id that differs from the record's).
    BadKeyName,
    /// The config differs from the one the cluster runs with.
    ConfigChanged,
}

impl BadDataReason {
    /// A short stable name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BadDataReason::NotJson => "not_json",
            BadDataReason::BadKey => "bad_key",
            BadDataReason::BadEndpoint => "bad_endpoint",
            BadDataReason::OverlappingSubnet => "overlapping_subnet",
            BadDataReason::SubnetNotReserved => "subnet_not_reserved",
            BadDataReason::BadKeyName => "bad_key_name",
            BadDataReason::ConfigChanged => "config_changed",
        }
    }
}

/// A key the view ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The key.
    pub key: String,
    /// Its revision (a rejection is counted once per revision of the key).
    pub mod_revision: Revision,
    /// Why.
    pub reason: BadDataReason,
    /// The details.
    pub detail: String,
}

/// Host records as parsed at their revision: a watcher rebuilds the view at
/// every change of any host, and parsing every record again each time was
/// most of a start storm's cost (50 hosts: thousands of parses per host).
#[derive(Default)]
pub struct RecordCache {
    parsed: HashMap<String, (Revision, Result<HostRecord, String>)>,
}

impl RecordCache {
    /// The record in `kv`, parsed once per revision of its key.
    fn record(&mut self, kv: &KeyValue) -> Result<HostRecord, String> {
        match self.parsed.get(&kv.key) {
            Some((revision, parsed)) if *revision == kv.mod_revision => parsed.clone(),
            _ => {
                let parsed = serde_json::from_slice(&kv.value).map_err(|e| e.to_string());
                self.parsed
                    .insert(kv.key.clone(), (kv.mod_revision, parsed.clone()));
                parsed
            }
        }
    }

    /// Forgets records whose keys are gone.
    fn keep_only(&mut self, keys: &BTreeMap<String, KeyValue>) {
        self.parsed.retain(|key, _| keys.contains_key(key));
    }
}

/// Builds the view from the raw keys under `/weft/v1/`. `pinned` is the config
/// the cluster runs with (None: take the stored one); `cache` holds the
/// records parsed for earlier views. Returns what it ignored.
pub fn build(
    keys: &BTreeMap<String, KeyValue>,
    pinned: Option<&ClusterConfig>,
    revision: Revision,
    cache: &mut RecordCache,
) -> (PeerView, Vec<Rejection>) {
    cache.keep_only(keys);
    let mut rejections = Vec::new();
    let mut reject = |kv: &KeyValue, reason, detail: String| {
        rejections.push(Rejection {
            key: kv.key.clone(),
            mod_revision: kv.mod_revision,
            reason,
            detail,
        })
    };
    let mut config = pinned.cloned();
    if let Some(kv) = keys.get(CONFIG_KEY) {
        match serde_json::from_slice::<ClusterConfig>(&kv.value) {
            Err(e) => reject(kv, BadDataReason::NotJson, e.to_string()),
            Ok(stored) => match &config {
                Some(pinned) if *pinned != stored => reject(
                    kv,
                    BadDataReason::ConfigChanged,
                    format!("running with {pinned:?}, the store now says {stored:?}"),
                ),
                Some(_) => {}
                None => match stored.validate() {
                    Ok(()) => config = Some(stored),
                    Err(e) => reject(kv, BadDataReason::NotJson, e.to_string()),
                },
            },
        }
    }
    let mut holders: HashMap<IpNetwork, &str> = HashMap::new();
    for (key, kv) in keys
        .range(SUBNETS.to_string()..)
        .take_while(|(k, _)| k.starts_with(SUBNETS))
    {
        match parse_subnet_key(key) {
            Some(subnet) => {
                holders.insert(subnet, std::str::from_utf8(&kv.value).unwrap_or(""));
            }
            None => reject(
                kv,
                BadDataReason::BadKeyName,
                "not a subnet key (<address>-<length>)".into(),
            ),
        }
    }
    let mut hosts: BTreeMap<HostId, HostView> = BTreeMap::new();
    let mut taken = Taken::default();
    for (key, kv) in keys
        .range(HOSTS.to_string()..)
        .take_while(|(k, _)| k.starts_with(HOSTS))
    {
        let record = match cache.record(kv) {
            Ok(r) => r,
            Err(e) => {
                reject(kv, BadDataReason::NotJson, e);
                continue;
            }
        };
        if key.strip_prefix(HOSTS) != Some(record.id.as_str()) {
            reject(
                kv,
                BadDataReason::BadKeyName,
                format!("the record names host {}", record.id),
            );
            continue;
        }
        let public_key: PublicKey = match record.public_key.parse() {
            Ok(k) => k,
            Err(e) => {
                reject(
                    kv,
                    BadDataReason::BadKey,
                    format!("{}: {e}", record.public_key),
                );
                continue;
            }
        };
        let endpoint = match record.endpoint.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                reject(
                    kv,
                    BadDataReason::BadEndpoint,
                    format!("{:?}: {e}", record.endpoint),
                );
                continue;
            }
        };
        let subnets = record.subnets();
        let problem = subnets.iter().find_map(|subnet| {
            let in_range = config.as_ref().is_some_and(|c| match subnet {
                IpNetwork::V4(s) => c.holds_ipv4(*s),
                IpNetwork::V6(s) => c.holds_ipv6(*s),
            });
            if let Some(other) = taken.overlapping(*subnet) {
                return Some((
                    BadDataReason::OverlappingSubnet,
                    format!("{subnet} overlaps host {other}'s"),
                ));
            }
            match holders.get(subnet) {
                Some(holder) if *holder == record.id.as_str() && in_range => None,
                Some(holder) if *holder != record.id.as_str() => Some((
                    BadDataReason::OverlappingSubnet,
                    format!("{subnet} is reserved by host {holder}"),
                )),
                _ => Some((
                    BadDataReason::SubnetNotReserved,
                    format!("{subnet} is not a reserved subnet of the cluster range"),
                )),
            }
        });
        if let Some((reason, detail)) = problem {
            reject(kv, reason, detail);
            continue;
        }
        for subnet in &subnets {
            taken.insert(*subnet, &record.id);
        }
        let alive_kv = keys.get(&format!("{ALIVE}{}", record.id));
        hosts.insert(
            record.id.clone(),
            HostView {
                id: record.id,
                name: record.name,
                public_key,
                key_epoch: record.key_epoch,
                endpoint,
                subnets,
                alive: alive_kv.is_some(),
                record_revision: kv.mod_revision,
                alive_revision: alive_kv.map(|a| a.mod_revision),
                reserved_until: record.reserved_until,
            },
        );
    }
    (
        PeerView {
            revision,
            config,
            hosts,
        },
        rejections,
    )
}

/// The subnets accepted so far, as disjoint address intervals ordered by
/// their first address: an overlap check is one lookup, not a scan, so
/// building the view of a large cluster stays O(n log n).
#[derive(Default)]
struct Taken {
    /// (family, first address) → (last address, holder).
    intervals: BTreeMap<(u8, u128), (u128, HostId)>,
}

impl Taken {
    fn insert(&mut self, subnet: IpNetwork, holder: &HostId) {
        let (family, first, last) = interval(subnet);
        self.intervals
            .insert((family, first), (last, holder.clone()));
    }

    /// The holder of an accepted subnet that overlaps `subnet`. The
    /// intervals are disjoint, so if any overlaps it, the one starting last
    /// at or before `subnet`'s last address does.
    fn overlapping(&self, subnet: IpNetwork) -> Option<&HostId> {
        let (family, first, last) = interval(subnet);
        let (_, (end, holder)) = self
            .intervals
            .range((family, 0)..=(family, last))
            .next_back()?;
        (*end >= first).then_some(holder)
    }
}

fn interval(subnet: IpNetwork) -> (u8, u128, u128) {
    match subnet {
        IpNetwork::V4(s) => (
            4,
            u32::from(s.network()) as u128,
            u32::from(s.broadcast()) as u128,
        ),
        IpNetwork::V6(s) => {
            let first = u128::from(s.network());
            let host_bits = 128 - u32::from(s.prefix());
            let last = first | u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
            (6, first, last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn put(keys: &mut BTreeMap<String, KeyValue>, key: String, value: Vec<u8>, revision: Revision) {
        keys.insert(
            key.clone(),
            KeyValue {
                key,
                value,
                create_revision: revision,
                mod_revision: revision,
                lease: None,
            },
        );
    }

    #[test]
    fn cached_records_are_read_again_when_their_key_changes_and_forgotten_when_it_goes() {
        use super::super::checks::example_config;
        use super::super::records::{host_key, subnet_key};
        let config = example_config();
        let id: HostId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let key = crate::PrivateKey::generate().unwrap().public_key();
        let record = |name: &str| HostRecord {
            id: id.clone(),
            name: name.into(),
            public_key: key.to_base64(),
            key_epoch: 1,
            endpoint: Some("198.18.0.1:51820".into()),
            ipv4_subnet: "10.99.3.0/24".parse().unwrap(),
            ipv6_subnet: None,
            reserved_until: 0,
        };
        let mut keys = BTreeMap::new();
        let mut cache = RecordCache::default();
        put(
            &mut keys,
            subnet_key(net("10.99.3.0/24")),
            id.as_str().into(),
            2,
        );
        put(&mut keys, host_key(&id), record("a").to_json(), 2);
        let (view, _) = build(&keys, Some(&config), 2, &mut cache);
        assert_eq!(view.hosts[&id].name, "a");
        put(&mut keys, host_key(&id), record("b").to_json(), 3);
        let (view, _) = build(&keys, Some(&config), 3, &mut cache);
        assert_eq!(view.hosts[&id].name, "b", "a new revision is parsed again");
        put(&mut keys, host_key(&id), b"not json".to_vec(), 4);
        for revision in [4, 5] {
            let (view, rejected) = build(&keys, Some(&config), revision, &mut cache);
            assert!(view.hosts.is_empty());
            assert_eq!(rejected.len(), 1, "rejected at each build, parsed once");
            assert_eq!(rejected[0].reason, BadDataReason::NotJson);
        }
        keys.remove(&host_key(&id));
        build(&keys, Some(&config), 6, &mut cache);
        assert!(cache.parsed.is_empty(), "a gone key is forgotten");
    }

    #[test]
    fn an_overlap_is_found_whatever_the_lengths_and_families_stay_apart() {
        let (x, y): (HostId, HostId) = (
            "0123456789abcdef0123456789abcdef".parse().unwrap(),
            "fedcba9876543210fedcba9876543210".parse().unwrap(),
        );
        let mut taken = Taken::default();
        taken.insert(net("10.0.1.0/24"), &x);
        taken.insert(net("10.0.4.0/24"), &y);
        taken.insert(net("fd00:0:0:1::/64"), &x);
        assert_eq!(taken.overlapping(net("10.0.1.0/24")), Some(&x));
        assert_eq!(
            taken.overlapping(net("10.0.0.0/23")),
            Some(&x),
            "a wider one"
        );
        assert_eq!(
            taken.overlapping(net("10.0.1.128/25")),
            Some(&x),
            "a narrower one"
        );
        assert_eq!(
            taken.overlapping(net("10.0.0.0/16")),
            Some(&y),
            "the last one below its end"
        );
        assert_eq!(taken.overlapping(net("10.0.2.0/24")), None);
        assert_eq!(taken.overlapping(net("10.0.5.0/24")), None);
        assert_eq!(taken.overlapping(net("0.0.0.0/0")), Some(&y));
        assert_eq!(taken.overlapping(net("fd00::/48")), Some(&x));
        assert_eq!(taken.overlapping(net("fd00:0:0:2::/64")), None);
        assert_eq!(taken.overlapping(net("::/0")), Some(&x));
        // 10.0.1.0 as an IPv6 address is another address altogether.
        assert_eq!(taken.overlapping(net("::a00:100/120")), None);
    }
}
