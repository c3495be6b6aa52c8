//! The device's threads: tx (TUN → peers), rx (peers → TUN), timers.
//!
//! tx reads what the TUN device hands over — with TSO, TCP super-segments of
//! up to 64 KiB — cuts it into MTU-sized packets (`offload::segment`),
//! encrypts each straight into the send batch, where runs of equal-sized
//! datagrams to one peer become single UDP GSO messages. rx takes what one
//! recvmmsg brings (with UDP GRO, many datagrams per message), decrypts each,
//! and hands the packets to the coalescer, which writes each TCP flow's
//! consecutive packets to the TUN device as one super-packet.
//!
//! Buffers are allocated once per thread; the per-packet path takes the peer
//! table's read lock once per batch, the peer's own lock once per
//! packet, and allocates nothing.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::icmp;
use crate::offload::coalesce::PacketSink;
use crate::offload::{largest_segment, segment, Coalescer, VirtioNetHdr, VNET_HDR_LEN};
use crate::packet::{IpHeader, PacketError, WireMessage, COOKIE_REPLY_LEN, DATA_OVERHEAD};
use crate::session::{Admission, SessionError, SessionOutput};
use crate::udp::{RecvBatch, SendBatch};
use crate::wait::Wake;

use super::arrivals::{Arrival, ArrivalTally};
use super::peer::{DropCounters, DropReason, Peer};
use super::table::PeerTable;
use super::{send_one, Shared};

/// Largest UDP payload, and so the largest packet either side can carry.
const MAX_DATAGRAM: usize = 65_536;
/// How often session timers run.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// The tx thread reads another super-segment from the TUN only while the
/// send batch has this much room left; the batch holds this plus two
/// datagrams' worth, so it goes out after two or three super-segments (about
/// 140–200 KiB): measured better than sending after each one (the kernel's
/// send path dominates) or after eight (the receiver idles meanwhile).
const TX_BATCH_BYTES: usize = 4 * MAX_DATAGRAM;
/// Flows the rx coalescer merges at once.
const GRO_FLOWS: usize = 8;

/// TUN → segment → allowed IPs → session encapsulate → sendmmsg (GSO).
pub(super) fn tx_loop(shared: &Shared) {
    let mut batch = SendBatch::new(shared.batch.max(8), TX_BATCH_BYTES + 2 * MAX_DATAGRAM);
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_DATAGRAM];
    let mut scratch = vec![0u8; MAX_DATAGRAM];
    loop {
        match shared.stop.wait(shared.tun.as_raw_fd(), -1) {
            Ok(Wake::Stop) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(device = %shared.name, "tx: wait for the TUN device: {e}");
                return;
            }
        }
        let mut drained = false;
        while !drained {
            {
                let table = shared.peers.read().expect("peer table lock poisoned");
                while batch.has_room(TX_BATCH_BYTES) {
                    let n = match shared.tun.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            drained = true;
                            break;
                        }
                        Err(e) => {
                            tracing::error!(device = %shared.name, "tx: read the TUN device: {e}");
                            drained = true;
                            break;
                        }
                    };
                    if n <= VNET_HDR_LEN {
                        shared.drops.add(DropReason::Malformed, 1);
                        continue;
                    }
                    let (hdr, packet) = buf[..n].split_at_mut(VNET_HDR_LEN);
                    let hdr = VirtioNetHdr::parse(&(*hdr).try_into().expect("10 bytes"));
                    encapsulate(shared, &table, &hdr, packet, &mut scratch, &mut batch);
                }
            }
            flush(shared, &mut batch);
        }
    }
}

fn flush(shared: &Shared, batch: &mut SendBatch) {
    if !batch.is_empty() {
        let flushed = batch.flush(&shared.udp);
        if flushed.failed > 0 {
            shared
                .drops
                .add(DropReason::SendFailed, flushed.failed as u64);
        }
    }
}

/// Routes one read from the TUN device (a packet or a super-segment) to its
/// peer, then cuts and encrypts it into the batch.
#[inline]
fn encapsulate(
    shared: &Shared,
    table: &PeerTable,
    hdr: &VirtioNetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    batch: &mut SendBatch,
) {
    let header = match IpHeader::parse(packet) {
        Ok(h) => h,
        Err(_) => {
            shared.drops.add(DropReason::Malformed, 1);
            return;
        }
    };
    let Some(peer) = table.route(header.destination) else {
        shared.drops.add(DropReason::NoRoute, 1);
        return;
    };
    if largest_segment(hdr, packet) > shared.max_packet && icmp::must_answer(packet) {
        // The sender learns the MTU instead of losing the packet.
        if let Some(answer) = icmp::too_big(packet, shared.max_packet as u32, scratch) {
            if let Err(e) = shared.tun.write(&VirtioNetHdr::default(), answer) {
                tracing::debug!(device = %shared.name, "tx: write ICMP too big: {e}");
            }
        }
        peer.counters.drops.add(DropReason::TooBig, 1);
        return;
    }
    let Some(endpoint) = peer
        .state
        .lock()
        .expect("peer state lock poisoned")
        .endpoint
    else {
        peer.counters.drops.add(DropReason::NoEndpoint, 1);
        return;
    };
    let gso = shared.udp.gso();
    let (mut bytes, mut packets) = (0u64, 0u64);
    let cut = segment(hdr, packet, scratch, |inner| {
        if !batch.has_room(inner.len() + DATA_OVERHEAD) {
            flush(shared, batch);
        }
        // Locked per packet, not per super-segment: the rx thread (ACKs,
        // handshakes for this peer) waits one packet's encryption at most.
        let mut state = peer.state.lock().expect("peer state lock poisoned");
        let session = match state.session(|| shared.keys()) {
            Ok(session) => session,
            Err(e) => {
                peer.counters.drops.add(DropReason::from_session(e), 1);
                return;
            }
        };
        let len = match session.encapsulate(inner, batch.next_slot()) {
            SessionOutput::ToNetwork(wire) => {
                if wire.first() == Some(&4) {
                    bytes += inner.len() as u64;
                    packets += 1;
                } else {
                    peer.counters.handshakes.sent(wire);
                }
                wire.len()
            }
            // Queued until the handshake it started completes.
            SessionOutput::Done => return,
            SessionOutput::Failed(e) => {
                peer.counters.drops.add(DropReason::from_session(e), 1);
                return;
            }
            SessionOutput::ToTunnel(_) => {
                peer.counters.drops.add(DropReason::Malformed, 1);
                return;
            }
        };
        drop(state);
        batch.commit(len, endpoint, gso);
    });
    peer.counters.sent(bytes, packets);
    if cut.is_err() {
        peer.counters.drops.add(DropReason::Malformed, 1);
    }
}

/// recvmmsg → classify → peer → decapsulate → allowed-IPs check → TUN.
/// Every datagram's outcome is tallied, and the tally added to the device's
/// arrival counters once per batch.
pub(super) fn rx_loop(shared: &Shared) {
    let mut batch = RecvBatch::new(shared.batch, MAX_DATAGRAM);
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut cookie = [0u8; COOKIE_REPLY_LEN];
    // A TUN device without offloads (an old kernel) gets single packets only.
    let offloads = shared.tun.offloads();
    let mut gro = Coalescer::new(if offloads.tso { GRO_FLOWS } else { 0 }, offloads.uso);
    let mut sink = TunSink { shared };
    let mut tally = ArrivalTally::default();
    loop {
        match shared.stop.wait(shared.udp.as_raw_fd(), -1) {
            Ok(Wake::Stop) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(device = %shared.name, "rx: wait for the UDP socket: {e}");
                return;
            }
        }
        loop {
            let n = match batch.recv(&shared.udp) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(device = %shared.name, "rx: receive: {e}");
                    break;
                }
            };
            let table = shared.peers.read().expect("peer table lock poisoned");
            for i in 0..n {
                let Some((message, from, size)) = batch.get(i) else {
                    // A sender address that is not IPv4 or IPv6: cannot
                    // happen on a UDP socket, but counted if it does.
                    tally.count(dropped(&shared.drops, DropReason::Malformed));
                    continue;
                };
                if message.is_empty() {
                    // `chunks` yields nothing for it: a zero-length datagram
                    // is still one datagram.
                    tally.count(dropped(&shared.drops, DropReason::Empty));
                    continue;
                }
                for datagram in message.chunks(size) {
                    tally.count(receive_one(
                        shared,
                        &table,
                        datagram,
                        from,
                        &mut out,
                        &mut cookie,
                        &mut gro,
                        &mut sink,
                    ));
                }
            }
            gro.flush(&mut sink);
            tally.flush(&shared.arrivals);
        }
    }
}

/// Writes to the TUN device; failures are counted for the device.
struct TunSink<'a> {
    shared: &'a Shared,
}

impl PacketSink for TunSink<'_> {
    fn write_packet(&mut self, hdr: &VirtioNetHdr, packet: &[u8]) {
        if let Err(e) = self.shared.tun.write(hdr, packet) {
            tracing::debug!(device = %self.shared.name, "rx: write to the TUN device: {e}");
            self.shared.drops.add(DropReason::TunWriteFailed, 1);
        }
    }
}

/// Counts a drop on `counters` (the peer's or the device's) and says so.
#[inline]
fn dropped(counters: &DropCounters, reason: DropReason) -> Arrival {
    counters.add(reason, 1);
    Arrival::Dropped(reason)
}

/// Takes one datagram as far as it goes; says what became of it.
#[inline]
#[allow(clippy::too_many_arguments)]
fn receive_one(
    shared: &Shared,
    table: &PeerTable,
    datagram: &[u8],
    from: SocketAddr,
    out: &mut [u8],
    cookie: &mut [u8; COOKIE_REPLY_LEN],
    gro: &mut Coalescer,
    sink: &mut TunSink,
) -> Arrival {
    let message = match WireMessage::classify(datagram) {
        Ok(m) => m,
        Err(PacketError::Empty) => return dropped(&shared.drops, DropReason::Empty),
        Err(_) => return dropped(&shared.drops, DropReason::Malformed),
    };
    if message.is_handshake() {
        if let Some(refused) = admit(shared, datagram, from, cookie) {
            return refused;
        }
    }
    let peer = match message {
        WireMessage::HandshakeInitiation { .. } => {
            let initiator = shared.keys().guard.initiator(datagram).ok();
            match initiator.and_then(|key| table.by_key.get(&key).map(|p| (key, p))) {
                Some((_, p)) => p,
                None => {
                    if let Some(key) = initiator {
                        // A host that may become a peer any moment (see refused.rs).
                        shared
                            .refused
                            .lock()
                            .expect("refused lock poisoned")
                            .remember(key, from);
                    }
                    return dropped(&shared.drops, DropReason::UnknownKey);
                }
            }
        }
        WireMessage::HandshakeResponse { receiver, .. }
        | WireMessage::CookieReply { receiver }
        | WireMessage::Data { receiver, .. } => match table.by_index(receiver) {
            Some(p) => p,
            None => return dropped(&shared.drops, DropReason::UnknownIndex),
        },
    };
    let mut state = peer.state.lock().expect("peer state lock poisoned");
    let session = match state.session(|| shared.keys()) {
        Ok(session) => session,
        Err(e) => {
            drop(state);
            return count_failure(shared, peer, &message, e);
        }
    };
    match session.decapsulate(Some(from.ip()), datagram, out) {
        SessionOutput::ToTunnel(packet) => {
            // Authenticated data: the peer is where it came from (roaming).
            state.endpoint = Some(from);
            drop(state);
            deliver(table, peer, packet, gro, sink)
        }
        SessionOutput::ToNetwork(reply) => {
            // Our handshake response, or the keepalive that confirms theirs.
            if !matches!(message, WireMessage::CookieReply { .. }) {
                state.endpoint = Some(from);
            }
            if !matches!(message, WireMessage::CookieReply { .. }) {
                // Our response to their initiation, or the keepalive after theirs.
                peer.counters.handshakes.completed();
            }
            peer.counters.sent_message(reply);
            send_one(shared, reply, from, &peer.counters.drops);
            // Packets queued while the handshake ran can go now.
            while let Some(SessionOutput::ToNetwork(queued)) =
                state.existing_session().map(|s| s.next_queued(out))
            {
                peer.counters.sent_message(queued);
                send_one(shared, queued, from, &peer.counters.drops);
            }
            Arrival::Control
        }
        SessionOutput::Done => {
            if matches!(message, WireMessage::Data { .. }) {
                // An authenticated keepalive.
                state.endpoint = Some(from);
            }
            Arrival::Control
        }
        SessionOutput::Failed(e) => {
            drop(state);
            if matches!(message, WireMessage::HandshakeResponse { .. }) {
                peer.counters
                    .handshakes
                    .failed(super::HandshakeFailure::Refused(e));
            }
            count_failure(shared, peer, &message, e)
        }
    }
}

/// The handshake guard: mac1, then the per-second budget with cookies.
/// None when the handshake may go on; otherwise the drop it became.
fn admit(
    shared: &Shared,
    datagram: &[u8],
    from: SocketAddr,
    cookie: &mut [u8; COOKIE_REPLY_LEN],
) -> Option<Arrival> {
    match shared.keys().guard.admit(from.ip(), datagram, cookie) {
        Admission::Admit => None,
        Admission::SendCookie(reply) => {
            send_one(shared, reply, from, &shared.drops);
            Some(dropped(&shared.drops, DropReason::RateLimited))
        }
        Admission::Reject(e) => Some(dropped(
            &shared.drops,
            match e {
                SessionError::Authentication => DropReason::Authentication,
                _ => DropReason::Malformed,
            },
        )),
    }
}

fn count_failure(shared: &Shared, peer: &Peer, message: &WireMessage, e: SessionError) -> Arrival {
    let reason = match (message, e) {
        (WireMessage::HandshakeInitiation { .. } | WireMessage::HandshakeResponse { .. }, _) => {
            DropReason::HandshakeRejected
        }
        (_, e) => DropReason::from_session(e),
    };
    tracing::trace!(device = %shared.name, slot = peer.slot, "rx: {reason:?}: {e}");
    dropped(&peer.counters.drops, reason)
}

/// Passes a decrypted packet on towards the TUN device if its inner source is
/// one of the sending peer's allowed IPs.
#[inline]
fn deliver(
    table: &PeerTable,
    peer: &Peer,
    packet: &[u8],
    gro: &mut Coalescer,
    sink: &mut TunSink,
) -> Arrival {
    let header = match IpHeader::parse(packet) {
        Ok(h) => h,
        Err(_) => return dropped(&peer.counters.drops, DropReason::Malformed),
    };
    if table.allowed.lookup(header.source) != Some(peer.slot) {
        return dropped(&peer.counters.drops, DropReason::DisallowedSource);
    }
    // Trailing bytes past the IP length (none from a sane peer) stay out.
    let packet = &packet[..header.total_len];
    peer.counters.received(packet.len());
    gro.push(packet, sink);
    Arrival::Delivered
}

/// Session timers every 100 ms; the handshake budget every second.
pub(super) fn timer_loop(shared: &Shared) {
    let mut out = vec![0u8; 1024];
    let mut budget_reset = Instant::now();
    loop {
        match shared.stop.wait(-1, TIMER_TICK.as_millis() as i32) {
            Ok(Wake::Stop) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(device = %shared.name, "timers: wait: {e}");
                return;
            }
        }
        if budget_reset.elapsed() >= Duration::from_secs(1) {
            shared.keys().guard.reset_budget();
            budget_reset = Instant::now();
        }
        let table = shared.peers.read().expect("peer table lock poisoned");
        for peer in table.by_slot.values() {
            let mut state = peer.state.lock().expect("peer state lock poisoned");
            let endpoint = state.endpoint;
            // No session yet: nothing sent, nothing pending, no timer to run.
            let Some(session) = state.existing_session() else {
                continue;
            };
            match session.update_timers(&mut out) {
                SessionOutput::ToNetwork(wire) => match endpoint {
                    Some(to) => {
                        peer.counters.sent_message(wire);
                        send_one(shared, wire, to, &peer.counters.drops);
                    }
                    None => {
                        peer.counters.drops.add(DropReason::NoEndpoint, 1);
                        if wire.first() == Some(&1) {
                            peer.counters
                                .handshakes
                                .failed(super::HandshakeFailure::NoEndpoint);
                        }
                    }
                },
                SessionOutput::Failed(SessionError::Expired) => {
                    peer.counters
                        .handshakes
                        .failed(super::HandshakeFailure::GaveUp);
                }
                SessionOutput::Done => {}
                SessionOutput::Failed(e) => {
                    tracing::debug!(device = %shared.name, slot = peer.slot, "timers: {e}");
                }
                SessionOutput::ToTunnel(_) => {}
            }
        }
    }
}
