//! A token bucket per source address, so one container flooding the server
//! is cut off instead of crowding out its neighbours and the upstreams.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Queries one source may send: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    /// Far above what a program resolving names sends (a busy web server
    /// asks a few hundred times a second), low enough that a runaway client
    /// cannot take the server's whole CPU share. A benchmark driving one
    /// client harder raises it.
    fn default() -> RateLimit {
        RateLimit {
            per_second: 5_000,
            burst: 10_000,
        }
    }
}

/// Sources remembered at most; sources are addresses of the network's
/// subnets, so this is reached only by a huge IPv6 sweep.
const MAX_SOURCES: usize = 16_384;

#[derive(Debug)]
pub(crate) struct SourceLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl SourceLimiter {
    pub(crate) fn new(limit: RateLimit) -> SourceLimiter {
        SourceLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a query from `source` at `now`; false when none is left.
    pub(crate) fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = f64::from(self.limit.per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            // Forget sources whose bucket has refilled: they are as new.
            buckets.retain(|_, b| {
                now.saturating_duration_since(b.refilled).as_secs_f64() * rate + b.tokens < burst
            });
            if buckets.len() >= MAX_SOURCES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let limiter = SourceLimiter::new(RateLimit {
            per_second: 10,
            burst: 5,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let t0 = Instant::now();
        let granted = (0..20).filter(|_| limiter.allow(a, t0)).count();
        assert_eq!(granted, 5);
        assert!(limiter.allow(b, t0), "another source has its own bucket");
        // 10 per second: after 0.3 s three more.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..20).filter(|_| limiter.allow(a, t1)).count(), 3);
        // Refilling stops at the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| limiter.allow(a, t2)).count(), 5);
    }
}
