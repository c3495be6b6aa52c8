//! The state journal: one JSON line per transaction, holding only what the
//! transaction changed (endpoints set or removed, addresses reserved or
//! released, a pool's round-robin position). Every record sets keys to
//! values, so replaying a record twice changes nothing — which is what makes
//! compaction safe without an fsync between its two steps (see `Store`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Endpoint, State};
use crate::ipam::{Pool, Reservations};

/// What one transaction changed.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Change {
    /// Container id → its endpoint now, or null when it was removed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, Option<Arc<Endpoint>>>,
    /// Subnet → what changed in its pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolChange>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PoolChange {
    /// The pool's round-robin position after the transaction.
    pub last: Option<IpAddr>,
    /// Address → its holder now, or null when it was released.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reserved: BTreeMap<IpAddr, Option<Arc<str>>>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.pools.is_empty()
    }
}

/// What turns `before` into `after`, where `after` is `before` changed by
/// one transaction: only what the transaction touched is looked at, so a
/// record costs the same with 1 or 1,000 containers. The destructuring is
/// exhaustive on purpose: a field added to the state does not compile until
/// it is journaled.
pub(super) fn diff(before: &State, after: &State) -> Change {
    let State {
        version: _,
        endpoints,
        ipam: Reservations { pools },
    } = after;
    let mut change = Change::default();
    for id in endpoints.touched() {
        let (old, new) = (before.endpoints.get(id), endpoints.get(id));
        let same = match (old, new) {
            (Some(o), Some(n)) => Arc::ptr_eq(o, n) || o == n,
            (None, None) => true,
            _ => false,
        };
        if !same {
            change.endpoints.insert(id.clone(), new.cloned());
        }
    }
    let empty = Pool::default();
    for (subnet, pool) in pools {
        let old = before.ipam.pools.get(subnet).unwrap_or(&empty);
        let mut pc = PoolChange {
            last: pool.last,
            reserved: BTreeMap::new(),
        };
        for addr in pool.touched() {
            let (was, now) = (old.holder(addr), pool.holder(addr));
            if was != now {
                pc.reserved.insert(*addr, now.cloned());
            }
        }
        if !pc.reserved.is_empty() || old.last != pool.last {
            change.pools.insert(subnet.clone(), pc);
        }
    }
    // Pools are never removed by netd; one that vanished is emptied.
    for (subnet, old) in &before.ipam.pools {
        if !pools.contains_key(subnet) {
            change.pools.insert(
                subnet.clone(),
                PoolChange {
                    last: None,
                    reserved: old.iter().map(|(a, _)| (*a, None)).collect(),
                },
            );
        }
    }
    change
}

/// Replays one record.
pub(super) fn apply(state: &mut State, change: &Change) {
    for (id, ep) in &change.endpoints {
        match ep {
            Some(ep) => {
                state.endpoints.insert(id.clone(), ep.clone());
            }
            None => {
                state.endpoints.remove(id);
            }
        }
    }
    for (subnet, pc) in &change.pools {
        let pool = state.ipam.pools.entry(subnet.clone()).or_default();
        pool.last = pc.last;
        for (addr, owner) in &pc.reserved {
            match owner {
                Some(owner) => pool.reserve(*addr, owner.clone()),
                None => {
                    pool.release(addr);
                }
            }
        }
    }
}

/// How far a journal's text could be read.
pub(super) enum Tail {
    /// Every complete line parsed: the records and the bytes they span.
    Clean(Vec<Change>, usize),
    /// The records before a torn end (a writer killed mid-write, or a power
    /// loss), and the bytes they span: the rest is to be cut off.
    Torn(Vec<Change>, usize),
    /// A line in the middle does not parse: not a torn write.
    Corrupt {
        offset: usize,
        source: serde_json::Error,
    },
}

/// Parses journal text from a line boundary.
pub(super) fn parse(text: &[u8]) -> Tail {
    let mut records = Vec::new();
    let mut used = 0;
    while used < text.len() {
        let rest = &text[used..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Tail::Torn(records, used);
        };
        match serde_json::from_slice::<Change>(&rest[..end]) {
            Ok(change) => records.push(change),
            // The last line cut short (or filled with zeros by a power loss).
            Err(_) if used + end + 1 == text.len() => return Tail::Torn(records, used),
            Err(source) => {
                return Tail::Corrupt {
                    offset: used,
                    source,
                }
            }
        }
        used += end + 1;
    }
    Tail::Clean(records, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Phase;

    fn endpoint(id: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            name: id.into(),
            netns: "/run/netns/x".into(),
            netns_inode: 7,
            ifname: "eth0".into(),
            host_ifname: "wv0".into(),
            mac: None,
            mtu: None,
            ips: vec!["10.66.0.2/16".parse().unwrap()],
            gateways: vec!["10.66.0.1".parse().unwrap()],
            ports: vec![],
            phase: Phase::Attached,
        }
    }

    #[test]
    fn a_diff_replayed_turns_before_into_after_and_twice_changes_nothing() {
        let subnet: ipnetwork::IpNetwork = "10.66.0.0/16".parse().unwrap();
        let mut before = State::default();
        for id in ["a", "b", "c"] {
            before.endpoints.insert(id.into(), endpoint(id).into());
            before.ipam.allocate(subnet, id, None).unwrap();
        }
        let mut after = before.clone();
        after.endpoints.remove("a");
        after.ipam.release_owner("a");
        after.endpoint_mut("b").unwrap().mtu = Some(1400);
        after.endpoints.insert("d".into(), endpoint("d").into());
        after.ipam.allocate(subnet, "d", None).unwrap();
        let change = diff(&before, &after);
        assert_eq!(change.endpoints.len(), 3, "{change:?}");
        assert!(change.endpoints["a"].is_none());
        assert_eq!(change.pools[&subnet.to_string()].reserved.len(), 2);
        let line = serde_json::to_vec(&change).unwrap();
        let Tail::Clean(records, used) = parse(&[line.as_slice(), b"\n"].concat()) else {
            panic!("a whole line did not parse");
        };
        assert_eq!(used, line.len() + 1);
        let mut replayed = before.clone();
        apply(&mut replayed, &records[0]);
        assert_eq!(replayed, after);
        apply(&mut replayed, &records[0]);
        assert_eq!(replayed, after);
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn copies_made_apart_are_compared_by_content() {
        // The state read back from the files shares nothing with the one in
        // memory: equal entries are still equal, a new holder still shows.
        let subnet: ipnetwork::IpNetwork = "10.66.0.0/16".parse().unwrap();
        let mut before = State::default();
        let mut after = State::default();
        for state in [&mut before, &mut after] {
            for id in ["a", "b"] {
                state.endpoints.insert(id.into(), endpoint(id).into());
                state.ipam.allocate(subnet, id, None).unwrap();
            }
        }
        assert!(diff(&before, &after).is_empty());
        let b = after.ipam.held_by("b")[0];
        after
            .ipam
            .pools
            .get_mut(&subnet.to_string())
            .unwrap()
            .reserve(b, "c".into());
        let change = diff(&before, &after);
        assert_eq!(
            change.pools[&subnet.to_string()].reserved,
            [(b, Some("c".into()))].into()
        );
        assert!(change.endpoints.is_empty());
    }

    #[test]
    fn a_torn_end_is_told_from_a_corrupt_middle() {
        let line = serde_json::to_string(&Change {
            endpoints: [("a".to_string(), None)].into(),
            pools: BTreeMap::new(),
        })
        .unwrap();
        let whole = format!("{line}\n");
        assert!(
            matches!(parse(format!("{whole}{}", &line[..9]).as_bytes()), Tail::Torn(r, n) if r.len() == 1 && n == whole.len())
        );
        assert!(
            matches!(parse(format!("{whole}\0\0\0\n").as_bytes()), Tail::Torn(r, n) if r.len() == 1 && n == whole.len())
        );
        assert!(matches!(
            parse(format!("{whole}garbage\n{whole}").as_bytes()),
            Tail::Corrupt { offset, .. } if offset == whole.len()
        ));
    }
}
