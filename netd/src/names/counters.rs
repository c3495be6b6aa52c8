//! What the DNS server did with each query. Every datagram and every TCP
//! message lands in exactly one result, so the results add up to what
//! arrived; cache hits are the forwarded answers the cache gave.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a query got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a DNS header: nothing to answer to.
    Short,
    /// A response (QR set) sent to the server: never answered, so two
    /// servers can't bounce messages between them.
    Response,
    /// The source address is outside the network's subnets.
    OutsideSubnets,
    /// The source sent more than its rate allows.
    RateLimited,
    /// Too many forwarded queries in flight.
    Overloaded,
}

/// Counters of one DNS server; cheap to bump from any task.
#[derive(Debug, Default)]
pub struct DnsCounters {
    answered: AtomicU64,
    nxdomain: AtomicU64,
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    servfail: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    dropped_short: AtomicU64,
    dropped_response: AtomicU64,
    dropped_outside: AtomicU64,
    dropped_rate: AtomicU64,
    dropped_overloaded: AtomicU64,
    tcp_refused: AtomicU64,
}

/// A copy of the counters at one moment, for metrics and `netd names`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DnsCountersSnapshot {
    /// Answered from the network's names (records or NODATA).
    pub answered: u64,
    /// NXDOMAIN from the network's names.
    pub nxdomain: u64,
    /// Answered by an upstream resolver, or by the cache of its answers.
    pub forwarded: u64,
    /// Of `forwarded`: answered from the cache.
    pub cache_hits: u64,
    /// No upstream answered in time, or there is none.
    pub servfail: u64,
    /// Classes other than IN, zone transfers.
    pub refused: u64,
    /// Undecodable queries, or not exactly one question.
    pub formerr: u64,
    /// Opcodes other than QUERY.
    pub notimp: u64,
    pub dropped_short: u64,
    pub dropped_response: u64,
    pub dropped_outside_subnets: u64,
    pub dropped_rate_limited: u64,
    pub dropped_overloaded: u64,
    /// TCP connections closed at once: too many open.
    pub tcp_refused: u64,
}

impl DnsCountersSnapshot {
    /// Every query counted, whatever became of it.
    pub fn total(&self) -> u64 {
        self.answered
            + self.nxdomain
            + self.forwarded
            + self.servfail
            + self.refused
            + self.formerr
            + self.notimp
            + self.dropped()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped_short
            + self.dropped_response
            + self.dropped_outside_subnets
            + self.dropped_rate_limited
            + self.dropped_overloaded
    }

    /// Adds `other` field by field: the counters of a server that was
    /// replaced, so totals never go back.
    pub fn add(&mut self, other: &DnsCountersSnapshot) {
        self.answered += other.answered;
        self.nxdomain += other.nxdomain;
        self.forwarded += other.forwarded;
        self.cache_hits += other.cache_hits;
        self.servfail += other.servfail;
        self.refused += other.refused;
        self.formerr += other.formerr;
        self.notimp += other.notimp;
        self.dropped_short += other.dropped_short;
        self.dropped_response += other.dropped_response;
        self.dropped_outside_subnets += other.dropped_outside_subnets;
        self.dropped_rate_limited += other.dropped_rate_limited;
        self.dropped_overloaded += other.dropped_overloaded;
        self.tcp_refused += other.tcp_refused;
    }

    /// (result, count) pairs for `weft_netd_dns_queries_total{result=…}`.
    pub fn by_result(&self) -> [(&'static str, u64); 8] {
        [
            ("answered", self.answered),
            ("nxdomain", self.nxdomain),
            ("forwarded", self.forwarded),
            ("servfail", self.servfail),
            ("refused", self.refused),
            ("formerr", self.formerr),
            ("notimp", self.notimp),
            ("dropped", self.dropped()),
        ]
    }

    /// (reason, count) pairs for `weft_netd_dns_dropped_total{reason=…}`.
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("short", self.dropped_short),
            ("response", self.dropped_response),
            ("outside_subnets", self.dropped_outside_subnets),
            ("rate_limited", self.dropped_rate_limited),
            ("overloaded", self.dropped_overloaded),
        ]
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl DnsCounters {
    pub(crate) fn answered(&self) {
        bump(&self.answered)
    }
    pub(crate) fn nxdomain(&self) {
        bump(&self.nxdomain)
    }
    pub(crate) fn forwarded(&self, from_cache: bool) {
        bump(&self.forwarded);
        if from_cache {
            bump(&self.cache_hits)
        }
    }
    pub(crate) fn servfail(&self) {
        bump(&self.servfail)
    }
    pub(crate) fn refused(&self) {
        bump(&self.refused)
    }
    pub(crate) fn formerr(&self) {
        bump(&self.formerr)
    }
    pub(crate) fn notimp(&self) {
        bump(&self.notimp)
    }
    pub(crate) fn tcp_refused(&self) {
        bump(&self.tcp_refused)
    }
    pub(crate) fn dropped(&self, reason: DropReason) {
        bump(match reason {
            DropReason::Short => &self.dropped_short,
            DropReason::Response => &self.dropped_response,
            DropReason::OutsideSubnets => &self.dropped_outside,
            DropReason::RateLimited => &self.dropped_rate,
            DropReason::Overloaded => &self.dropped_overloaded,
        })
    }

    pub fn snapshot(&self) -> DnsCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsCountersSnapshot {
            answered: get(&self.answered),
            nxdomain: get(&self.nxdomain),
            forwarded: get(&self.forwarded),
            cache_hits: get(&self.cache_hits),
            servfail: get(&self.servfail),
            refused: get(&self.refused),
            formerr: get(&self.formerr),
            notimp: get(&self.notimp),
            dropped_short: get(&self.dropped_short),
            dropped_response: get(&self.dropped_response),
            dropped_outside_subnets: get(&self.dropped_outside),
            dropped_rate_limited: get(&self.dropped_rate),
            dropped_overloaded: get(&self.dropped_overloaded),
            tcp_refused: get(&self.tcp_refused),
        }
    }
}
