//! The answers the network's own names give: A/AAAA for a container's names
//! and aliases, bare or under the search domain, PTR for its addresses;
//! NXDOMAIN for what is unknown inside the domain or the network's subnets.
//! Whatever is none of ours goes to the forwarder.

use std::net::IpAddr;

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnetwork::IpNetwork;

use super::error::NamesError;
use super::table::{NameAddresses, NameTable};

/// How long clients may keep an answer. Short, because containers come and
/// go: a detached container's address is soon another's, and a stale answer
/// would send traffic to the wrong container. Five seconds still spares the
/// server a query per connection in a busy client.
pub const LOCAL_TTL: u32 = 5;

/// The default search domain under which every name also resolves.
pub const DEFAULT_SEARCH_DOMAIN: &str = "weft.internal";

/// What the network's names say about a query.
#[derive(Debug, PartialEq)]
pub enum LocalAnswer {
    /// NOERROR with these records; none is NODATA (the name exists, the type not).
    Records(Vec<Record>),
    NxDomain,
    /// Not a name of this network: forward it.
    NotOurs,
}

/// The names a network answers for: its search domain and its subnets
/// (reverse lookups inside them are answered here, found or not).
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lowercase labels of the search domain, e.g. ["weft", "internal"].
    domain: Vec<String>,
    domain_name: Name,
    subnets: Vec<IpNetwork>,
}

impl Zone {
    pub fn new(search_domain: &str, subnets: Vec<IpNetwork>) -> Result<Zone, NamesError> {
        let invalid = |reason: &str| NamesError::InvalidDomain {
            domain: search_domain.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = search_domain.strip_suffix('.').unwrap_or(search_domain);
        if trimmed.is_empty() || trimmed.len() > 62 {
            return Err(invalid("must be 1 to 62 bytes"));
        }
        let domain: Vec<String> = trimmed.split('.').map(|l| l.to_ascii_lowercase()).collect();
        let label_ok = |l: &String| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !domain.iter().all(label_ok) {
            return Err(invalid(
                "labels must be letters, digits, '-' or '_', separated by single dots",
            ));
        }
        if domain.last().is_some_and(|l| l == "arpa") {
            return Err(invalid("a domain under .arpa would hide reverse lookups"));
        }
        let domain_name = Name::from_ascii(format!("{}.", domain.join(".")))
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(Zone {
            domain,
            domain_name,
            subnets,
        })
    }

    /// The search domain, fully qualified ("weft.internal.").
    pub fn domain(&self) -> &Name {
        &self.domain_name
    }

    pub fn subnets(&self) -> &[IpNetwork] {
        &self.subnets
    }

    /// True when `address` is inside one of the network's subnets.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.subnets.iter().any(|s| s.contains(address))
    }

    /// Answers `query` (class IN) from `table`, or says it is not ours.
    pub fn answer(&self, table: &NameTable, query: &Query) -> LocalAnswer {
        let qname = query.name();
        if let Some(answer) = self.answer_reverse(table, query) {
            return answer;
        }
        let count = qname.iter().len();
        let in_domain = count >= self.domain.len()
            && qname
                .iter()
                .skip(count - self.domain.len())
                .zip(&self.domain)
                .all(|(label, domain)| label.eq_ignore_ascii_case(domain.as_bytes()));
        let relative = if in_domain {
            count - self.domain.len()
        } else {
            count
        };
        if in_domain && relative == 0 {
            return LocalAnswer::Records(Vec::new());
        }
        // The name as the table keys it, built on the stack: a lookup per
        // query allocates nothing. None when no key can match: a label
        // holding a dot (it would pass for two labels) or a byte outside
        // ASCII (keys are letters, digits, '-' and '_').
        let mut buf = KeyBuf::new();
        let key = qname
            .iter()
            .take(relative)
            .try_for_each(|label| buf.push_label(label))
            .map(|()| buf.as_str());
        let found = key.and_then(|k| table.addresses_of(k));
        match found {
            Some(found) => LocalAnswer::Records(address_records(qname, query, found)),
            None if !in_domain => LocalAnswer::NotOurs,
            None if key.is_some_and(|k| table.has_names_under(k)) => {
                LocalAnswer::Records(Vec::new())
            }
            None => LocalAnswer::NxDomain,
        }
    }

    /// PTR for the network's addresses; None when `query` is no full
    /// reverse name (in-addr.arpa or ip6.arpa) of one address.
    fn answer_reverse(&self, table: &NameTable, query: &Query) -> Option<LocalAnswer> {
        let net = query.name().parse_arpa_name().ok()?;
        if net.prefix_len() != net.max_prefix_len() {
            return None;
        }
        let address = net.addr();
        let Some(name) = table.name_of(address) else {
            return Some(if self.contains(address) {
                LocalAnswer::NxDomain
            } else {
                LocalAnswer::NotOurs
            });
        };
        if !matches!(query.query_type(), RecordType::PTR | RecordType::ANY) {
            return Some(LocalAnswer::Records(Vec::new()));
        }
        // The qualified name, so that the answer is the same on every host
        // and a client's search list is not needed to use it.
        let target = Name::from_ascii(&name)
            .and_then(|n| n.append_domain(&self.domain_name))
            .ok()?;
        let record = Record::from_rdata(query.name().clone(), LOCAL_TTL, RData::PTR(PTR(target)));
        Some(LocalAnswer::Records(vec![record]))
    }
}

/// A lowercase name of up to 255 bytes, built label by label.
struct KeyBuf {
    bytes: [u8; 255],
    len: usize,
}

impl KeyBuf {
    fn new() -> KeyBuf {
        KeyBuf {
            bytes: [0; 255],
            len: 0,
        }
    }

    /// Appends `label`, lowercased; None when it cannot be part of a key.
    fn push_label(&mut self, label: &[u8]) -> Option<()> {
        let dot = usize::from(self.len > 0);
        let end = self.len + dot + label.len();
        if end > self.bytes.len() || !label.iter().all(|b| b.is_ascii() && *b != b'.') {
            return None;
        }
        if dot == 1 {
            self.bytes[self.len] = b'.';
        }
        for (to, from) in self.bytes[self.len + dot..end].iter_mut().zip(label) {
            *to = from.to_ascii_lowercase();
        }
        self.len = end;
        Some(())
    }

    fn as_str(&self) -> &str {
        // Only ASCII was pushed.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

fn address_records(qname: &Name, query: &Query, found: NameAddresses) -> Vec<Record> {
    let ttl = LOCAL_TTL;
    let v4 = found
        .ipv4
        .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::A(A(ip))));
    let v6 = found
        .ipv6
        .map(|ip| Record::from_rdata(qname.clone(), ttl, RData::AAAA(AAAA(ip))));
    match query.query_type() {
        RecordType::A => v4.into_iter().collect(),
        RecordType::AAAA => v6.into_iter().collect(),
        RecordType::ANY => v4.into_iter().chain(v6).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
