//! The state journal: one JSON line per transaction, holding only what the
//! transaction changed (endpoints set or removed, addresses reserved or
//! released, a pool's round-robin position). Every record sets keys to
//! values, so replaying a record twice changes nothing — which is what makes
//! compaction safe without an fsync between its two steps (see `Store`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::format::{crc, parse_crc};
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

/// One journal line as read.
#[derive(Debug)]
pub(super) enum Record {
    /// Format 1: no sequence number, no checksum.
    Legacy(Change),
    Checked(u64, Change),
}

impl Record {
    pub fn change(&self) -> &Change {
        match self {
            Record::Legacy(change) | Record::Checked(_, change) => change,
        }
    }

    pub fn seq(&self) -> Option<u64> {
        match self {
            Record::Legacy(_) => None,
            Record::Checked(seq, _) => Some(*seq),
        }
    }
}

/// The journal line of transaction `seq`, newline included.
pub(super) fn encode_record(seq: u64, change: &Change) -> Vec<u8> {
    let json = serde_json::to_vec(change).expect("records serialize");
    let seq_text = seq.to_string();
    let sum = crc(&[seq_text.as_bytes(), b" ", &json]);
    let mut line = format!("{seq_text} {sum:08x} ").into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// Parses one journal line (without its newline). Err says what is wrong.
pub(super) fn decode_record(line: &[u8]) -> Result<Record, String> {
    if line.first() == Some(&b'{') {
        return serde_json::from_slice(line)
            .map(Record::Legacy)
            .map_err(|e| format!("a format-1 record does not parse ({e})"));
    }
    let mut fields = line.splitn(3, |&b| b == b' ');
    let (Some(seq_text), Some(sum_text), Some(json)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err("a record is not `<seq> <crc> <json>`".into());
    };
    let seq: u64 = std::str::from_utf8(seq_text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("a record's sequence number is not a number")?;
    let sum = std::str::from_utf8(sum_text)
        .ok()
        .and_then(parse_crc)
        .ok_or_else(|| format!("record {seq}'s checksum is not 8 lower-case hex digits"))?;
    let actual = crc(&[seq_text, b" ", json]);
    if actual != sum {
        return Err(format!(
            "record {seq} fails its checksum (stored {sum:08x}, computed {actual:08x})"
        ));
    }
    let change = serde_json::from_slice(json)
        .map_err(|e| format!("record {seq} passes its checksum but does not parse ({e})"))?;
    Ok(Record::Checked(seq, change))
}

/// How far a journal's text could be read.
#[derive(Debug)]
pub(super) enum Tail {
    /// Every line is whole and checks out: the records and the bytes they span.
    Clean(Vec<Record>, usize),
    /// The records before a last line that is cut short or does not check
    /// out, and the bytes they span. Whether that line is a crashed writer's
    /// uncommitted record or the remains of a cut through committed ones is
    /// for the caller to tell, from the head (see `format::Head`).
    Torn(Vec<Record>, usize),
    /// A line before the last one is wrong, or the sequence has a hole: not
    /// what any crash leaves. The records before it are kept for
    /// `netd recover`, which takes them as hints only.
    Damaged {
        records: Vec<Record>,
        offset: usize,
        problem: String,
    },
}

/// Parses journal text from a line boundary. `prev` is the sequence number
/// of the record just before `text` in the same file, if one was read.
pub(super) fn parse(text: &[u8], mut prev: Option<u64>) -> Tail {
    let mut records = Vec::new();
    let mut used = 0;
    let mut legacy = false;
    while used < text.len() {
        let rest = &text[used..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Tail::Torn(records, used);
        };
        let last = used + end + 1 == text.len();
        let record = match decode_record(&rest[..end]) {
            Ok(record) => record,
            // The last line cut short, or zeros a power loss left.
            Err(_) if last => return Tail::Torn(records, used),
            Err(problem) => {
                return Tail::Damaged {
                    records,
                    offset: used,
                    problem,
                }
            }
        };
        let problem = match (record.seq(), prev) {
            (None, _) if prev.is_some() => Some("a format-1 record follows a format-2 one".into()),
            (Some(_), _) if legacy => Some("a format-2 record follows a format-1 one".into()),
            (Some(seq), Some(before)) if seq != before + 1 => {
                Some(format!("record {seq} follows record {before}"))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Tail::Damaged {
                records,
                offset: used,
                problem,
            };
        }
        legacy |= record.seq().is_none();
        prev = record.seq().or(prev);
        records.push(record);
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
            routes: vec![],
            bridge_addresses: vec![],
            dns_names: vec![],
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
        let line = encode_record(1, &change);
        let Tail::Clean(records, used) = parse(&line, None) else {
            panic!("a whole line did not parse");
        };
        assert_eq!(used, line.len());
        let mut replayed = before.clone();
        apply(&mut replayed, records[0].change());
        assert_eq!(replayed, after);
        apply(&mut replayed, records[0].change());
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
    fn every_flipped_bit_of_a_record_shows() {
        let line = encode_record(42, &Change::default());
        let body = &line[..line.len() - 1];
        assert!(matches!(decode_record(body), Ok(Record::Checked(42, _))));
        for i in 0..body.len() {
            for bit in 0..8 {
                let mut bad = body.to_vec();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_record(&bad).is_err(),
                    "a flip at byte {i} went unseen"
                );
            }
        }
    }

    #[test]
    fn a_torn_end_is_told_from_a_damaged_middle_and_a_hole() {
        let change = |id: &str| Change {
            endpoints: [(id.to_string(), None)].into(),
            pools: BTreeMap::new(),
        };
        let one = encode_record(1, &change("a"));
        let two = encode_record(2, &change("b"));
        let three = encode_record(3, &change("c"));
        let torn = [one.as_slice(), &two[..9]].concat();
        assert!(matches!(parse(&torn, None), Tail::Torn(r, n) if r.len() == 1 && n == one.len()));
        let zeros = [one.as_slice(), b"\0\0\0\n"].concat();
        assert!(matches!(parse(&zeros, None), Tail::Torn(r, n) if r.len() == 1 && n == one.len()));
        let garbage = [one.as_slice(), b"garbage\n", &two].concat();
        assert!(
            matches!(parse(&garbage, None), Tail::Damaged { offset, .. } if offset == one.len())
        );
        let hole = [one.as_slice(), &three].concat();
        assert!(
            matches!(parse(&hole, None), Tail::Damaged { offset, ref problem, .. } if offset == one.len() && problem.contains("record 3 follows record 1"))
        );
        assert!(matches!(parse(&two, Some(1)), Tail::Clean(r, _) if r.len() == 1));
        assert!(matches!(
            parse(&three, Some(1)),
            Tail::Damaged { offset: 0, .. }
        ));
        let legacy = [serde_json::to_vec(&change("a")).unwrap().as_slice(), b"\n"].concat();
        assert!(matches!(parse(&legacy, None), Tail::Clean(r, _) if r[0].seq().is_none()));
        assert!(matches!(
            parse(&[one.as_slice(), &legacy].concat(), None),
            Tail::Damaged { .. }
        ));
    }
}
