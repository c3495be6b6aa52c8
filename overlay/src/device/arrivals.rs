//! Accounting for what arrives at the device's UDP socket: every datagram is
//! counted once, and once more under exactly one outcome, so that
//! `datagrams == delivered + control + drops.total()` holds at any snapshot
//! taken between two receive batches.
//!
//! The rx thread tallies a batch in plain integers ([`ArrivalTally`]) and
//! adds the tally to the shared atomics once per batch, so the per-datagram
//! path touches no shared cache line for this.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::peer::{DropCounters, DropCounts, DropReason};

/// What became of one datagram that arrived at the UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// A data message whose inner packet went on to the TUN device.
    Delivered,
    /// A message the session consumed without an inner packet: a handshake
    /// initiation or response, a cookie reply, a keepalive.
    Control,
    /// Dropped, for this reason (also counted on the peer or the device).
    Dropped(DropReason),
}

/// One receive batch's outcomes, before they are added to the shared counters.
#[derive(Debug, Default)]
pub(crate) struct ArrivalTally {
    datagrams: u64,
    delivered: u64,
    control: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl ArrivalTally {
    #[inline]
    pub(crate) fn count(&mut self, arrival: Arrival) {
        self.datagrams += 1;
        match arrival {
            Arrival::Delivered => self.delivered += 1,
            Arrival::Control => self.control += 1,
            Arrival::Dropped(reason) => self.drops[reason as usize] += 1,
        }
    }

    /// Adds the tally to `counters` and starts a new one.
    pub(crate) fn flush(&mut self, counters: &ArrivalCounters) {
        if self.datagrams == 0 {
            return;
        }
        // The outcomes first, the total last: a reader that loads the total
        // first (as `snapshot` does) never sees more datagrams than outcomes.
        counters
            .delivered
            .fetch_add(self.delivered, Ordering::Relaxed);
        counters.control.fetch_add(self.control, Ordering::Relaxed);
        for (reason, n) in DropReason::ALL.iter().zip(self.drops) {
            if n > 0 {
                counters.drops.add(*reason, n);
            }
        }
        counters
            .datagrams
            .fetch_add(self.datagrams, Ordering::Release);
        *self = ArrivalTally::default();
    }
}

/// The device's arrival counters, shared with the rx thread.
#[derive(Debug, Default)]
pub(crate) struct ArrivalCounters {
    datagrams: AtomicU64,
    delivered: AtomicU64,
    control: AtomicU64,
    drops: DropCounters,
}

impl ArrivalCounters {
    pub(crate) fn snapshot(&self) -> ArrivalCounts {
        let datagrams = self.datagrams.load(Ordering::Acquire);
        ArrivalCounts {
            datagrams,
            delivered: self.delivered.load(Ordering::Relaxed),
            control: self.control.load(Ordering::Relaxed),
            drops: self.drops.snapshot(),
        }
    }
}

/// What became of the datagrams that arrived at the device's UDP socket,
/// since it was created. Each datagram of a UDP GRO message counts alone;
/// a zero-length datagram counts as one, dropped as
/// [`DropReason::Empty`].
///
/// `drops` holds only drops of arriving datagrams, whether the device's
/// (unknown index, malformed, …) or a peer's (authentication, replay,
/// disallowed source, …): the same drops are also in [`DeviceStats::drops`]
/// or the peer's [`PeerStats::drops`](super::PeerStats), beside drops of
/// outgoing packets. Failures after delivery (the TUN device refusing a
/// write, a reply that cannot be sent) are not arrivals' outcomes and are
/// counted only there.
///
/// [`DeviceStats::drops`]: super::DeviceStats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ArrivalCounts {
    /// Datagrams received.
    pub datagrams: u64,
    /// Data messages whose inner packet went on to the TUN device.
    pub delivered: u64,
    /// Handshake messages, cookie replies and keepalives the sessions took.
    pub control: u64,
    /// Arriving datagrams dropped, by reason.
    pub drops: DropCounts,
}

impl ArrivalCounts {
    /// Datagrams with a counted outcome: equal to `datagrams` when every
    /// arrival is accounted for (any snapshot may count a batch's outcomes
    /// before its datagrams, never the other way round).
    pub fn accounted(&self) -> u64 {
        self.delivered + self.control + self.drops.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_up_once_flushed() {
        let counters = ArrivalCounters::default();
        let mut tally = ArrivalTally::default();
        tally.count(Arrival::Delivered);
        tally.count(Arrival::Delivered);
        tally.count(Arrival::Control);
        tally.count(Arrival::Dropped(DropReason::Empty));
        tally.count(Arrival::Dropped(DropReason::Malformed));
        assert_eq!(counters.snapshot(), ArrivalCounts::default());
        tally.flush(&counters);
        let s = counters.snapshot();
        assert_eq!((s.datagrams, s.delivered, s.control), (5, 2, 1));
        assert_eq!(s.drops.get(DropReason::Empty), 1);
        assert_eq!(s.drops.get(DropReason::Malformed), 1);
        assert_eq!(s.accounted(), s.datagrams);
        // Flushed once: a second flush adds nothing.
        tally.flush(&counters);
        assert_eq!(counters.snapshot(), s);
    }
}
