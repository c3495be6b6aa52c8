//! A small cache of upstream answers, keyed by question, kept no longer
//! than the answer's TTL says (RFC 1035; RFC 2308 for negative answers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// The longest an answer is kept, whatever its TTL: an upstream that
/// changes its mind is heard within the hour.
const MAX_CACHE_TTL: u32 = 3600;

/// An upstream answer, as stored and as handed out (TTLs counted down).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpstreamAnswer {
    pub(crate) response_code: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
}

impl UpstreamAnswer {
    pub(crate) fn from_message(message: Message) -> UpstreamAnswer {
        UpstreamAnswer {
            response_code: message.metadata.response_code,
            answers: message.answers,
            authorities: message.authorities,
            additionals: message.additionals,
        }
    }

    /// How long it may be cached: the smallest TTL of the answer, or for
    /// NXDOMAIN and NODATA the SOA's negative TTL; None when not at all.
    fn cache_ttl(&self) -> Option<u32> {
        let ttl = match self.response_code {
            ResponseCode::NoError if !self.answers.is_empty() => {
                self.answers.iter().map(|r| r.ttl).min()
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                self.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
            }
            // SERVFAIL, REFUSED, …: the next query asks again.
            _ => None,
        }?;
        (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
    }

    fn aged(&self, by: u32) -> UpstreamAnswer {
        let age = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(by);
                    r
                })
                .collect()
        };
        UpstreamAnswer {
            response_code: self.response_code,
            answers: age(&self.answers),
            authorities: age(&self.authorities),
            additionals: age(&self.additionals),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QuestionKey {
    name: Name,
    kind: RecordType,
    class: DNSClass,
}

impl QuestionKey {
    fn of(query: &Query) -> QuestionKey {
        QuestionKey {
            name: query.name().to_lowercase(),
            kind: query.query_type(),
            class: query.query_class(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    answer: UpstreamAnswer,
    stored: Instant,
    expires: Instant,
}

/// At most `capacity` answers; when full, the expired go first, then the
/// one closest to expiring (a scan, fine at a few thousand entries).
#[derive(Debug)]
pub(crate) struct AnswerCache {
    capacity: usize,
    entries: HashMap<QuestionKey, Entry>,
}

impl AnswerCache {
    pub(crate) fn new(capacity: usize) -> AnswerCache {
        AnswerCache {
            capacity,
            entries: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, query: &Query, now: Instant) -> Option<UpstreamAnswer> {
        let key = QuestionKey::of(query);
        let entry = self.entries.get(&key)?;
        if entry.expires <= now {
            self.entries.remove(&key);
            return None;
        }
        let age = now.saturating_duration_since(entry.stored).as_secs();
        Some(entry.answer.aged(u32::try_from(age).unwrap_or(u32::MAX)))
    }

    pub(crate) fn insert(&mut self, query: &Query, answer: &UpstreamAnswer, now: Instant) {
        let Some(ttl) = answer.cache_ttl() else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        let key = QuestionKey::of(query);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(soonest) = soonest {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                answer: answer.clone(),
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
