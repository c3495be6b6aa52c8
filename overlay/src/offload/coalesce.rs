//! GRO for the TUN device: consecutive packets of one TCP flow, decrypted
//! from a batch of datagrams, are glued back into one super-packet that is
//! written with a virtio-net header saying how to cut it (gso_size), so the
//! kernel's TCP sees a few 64 KiB packets instead of dozens of MTU-sized ones.
//!
//! Packets join a flow's run only when the kernel's own GRO would have merged
//! them: same addresses, ports, IP TOS/TTL (traffic class, flow label, hop
//! limit), same TCP header length, options, ACK and window, the next sequence
//! number, only ACK (and PSH on the last) set, and no more payload than the
//! first. Everything else passes through unchanged and in order: a packet
//! that cannot join flushes its own flow's run first.
//!
//! The merged packet carries VIRTIO_NET_HDR_F_NEEDS_CSUM (the pseudo-header
//! sum in the checksum field), so the kernel does not check the payload sums
//! again; like kernel WireGuard, which marks decrypted packets
//! CHECKSUM_UNNECESSARY, we rely on the AEAD tag that authenticated every
//! byte. Packets written alone keep their own checksum, which the kernel checks.

use super::{
    fold, ipv4_header_checksum, pseudo_header, VirtioNetHdr, IPPROTO_TCP, IPPROTO_UDP,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};

/// The largest packet we build (an IPv4 total length must fit 16 bits).
const MAX_PACKET: usize = 65_535;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Datagrams per UDP super-packet (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const UDP_MAX_SEGMENTS: usize = 64;

/// Where a writer puts packets: a virtio-net header and the packet after it.
pub trait PacketSink {
    /// Takes one packet with its header; the writer has no use for it after.
    fn write_packet(&mut self, hdr: &VirtioNetHdr, packet: &[u8]);
}

impl<F: FnMut(&VirtioNetHdr, &[u8])> PacketSink for F {
    fn write_packet(&mut self, hdr: &VirtioNetHdr, packet: &[u8]) {
        self(hdr, packet)
    }
}

/// One flow's packets waiting to be written as one.
struct Run {
    buf: Vec<u8>,
    /// Bytes of `buf` in use; 0 when the slot is free.
    len: usize,
    /// TCP or UDP.
    proto: u8,
    /// Offset of the TCP/UDP header, and of the payload.
    l4: usize,
    headers: usize,
    /// Payload of the first packet: the size the kernel cuts at.
    mss: usize,
    next_seq: u32,
    count: usize,
    /// A short segment or PSH ended the run: nothing more may join.
    closed: bool,
    psh: bool,
    /// When the run started (for choosing which one to write out first).
    stamp: u64,
}

/// What `push` learned about a packet that could join a run.
struct Candidate {
    proto: u8,
    l4: usize,
    headers: usize,
    seq: u32,
    flags: u8,
}

/// Merges TCP packets into super-packets; see the module comment.
pub struct Coalescer {
    runs: Vec<Run>,
    clock: u64,
    /// Merge UDP datagrams too (the kernel takes UDP super-packets, USO).
    udp: bool,
}

impl Coalescer {
    /// Up to `flows` runs at once; 0 passes every packet straight through
    /// (for a TUN device that cannot take super-packets). With `udp`, a UDP
    /// flow's equal-sized datagrams merge too (Linux 6.2+ takes them, USO).
    pub fn new(flows: usize, udp: bool) -> Coalescer {
        Coalescer {
            runs: (0..flows)
                .map(|_| Run {
                    buf: vec![0u8; MAX_PACKET],
                    len: 0,
                    proto: 0,
                    l4: 0,
                    headers: 0,
                    mss: 0,
                    next_seq: 0,
                    count: 0,
                    closed: false,
                    psh: false,
                    stamp: 0,
                })
                .collect(),
            clock: 0,
            udp,
        }
    }

    /// Takes one IP packet; writes whatever can no longer wait.
    pub fn push(&mut self, packet: &[u8], sink: &mut impl PacketSink) {
        let Some(c) = candidate(packet, self.udp).filter(|_| !self.runs.is_empty()) else {
            if let Some(i) = self.same_flow(packet) {
                self.flush_run(i, sink);
            }
            sink.write_packet(&VirtioNetHdr::default(), packet);
            return;
        };
        let i = match self.same_flow(packet) {
            Some(i) => {
                if self.runs[i].try_append(packet, &c) {
                    return;
                }
                self.flush_run(i, sink);
                i
            }
            None => match self.runs.iter().position(|r| r.len == 0) {
                Some(i) => i,
                None => {
                    let i = (0..self.runs.len())
                        .min_by_key(|&i| self.runs[i].stamp)
                        .expect("at least one run");
                    self.flush_run(i, sink);
                    i
                }
            },
        };
        self.clock += 1;
        self.runs[i].start(packet, &c, self.clock);
    }

    /// Writes every waiting run (call at the end of each receive batch).
    pub fn flush(&mut self, sink: &mut impl PacketSink) {
        for i in 0..self.runs.len() {
            if self.runs[i].len > 0 {
                self.flush_run(i, sink);
            }
        }
    }

    /// The run holding `packet`'s TCP or UDP flow, if any.
    fn same_flow(&self, packet: &[u8]) -> Option<usize> {
        let (addrs, l4, proto) = flow_fields(packet)?;
        let ports = packet.get(l4..l4 + 4)?;
        self.runs.iter().position(|r| {
            r.len > 0
                && r.proto == proto
                && r.buf[0] >> 4 == packet[0] >> 4
                && r.buf[addrs.clone()] == packet[addrs.clone()]
                && r.buf[r.l4..r.l4 + 4] == *ports
        })
    }

    fn flush_run(&mut self, i: usize, sink: &mut impl PacketSink) {
        let run = &mut self.runs[i];
        let len = std::mem::take(&mut run.len);
        let packet = &mut run.buf[..len];
        if run.count == 1 {
            sink.write_packet(&VirtioNetHdr::default(), packet);
            return;
        }
        let v6 = packet[0] >> 4 == 6;
        if v6 {
            packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            ipv4_header_checksum(packet);
        }
        let l4_len = len - run.l4;
        let (gso_type, csum_offset) = if run.proto == IPPROTO_UDP {
            packet[run.l4 + 4..run.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            (VIRTIO_NET_HDR_GSO_UDP_L4, 6)
        } else {
            if run.psh {
                packet[run.l4 + 13] |= TCP_PSH;
            }
            let t = if v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            };
            (t, 16)
        };
        let partial = fold(pseudo_header(packet, run.proto, l4_len));
        let at = run.l4 + csum_offset;
        packet[at..at + 2].copy_from_slice(&partial.to_ne_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: run.headers as u16,
            gso_size: run.mss as u16,
            csum_start: run.l4 as u16,
            csum_offset: csum_offset as u16,
        };
        sink.write_packet(&hdr, packet);
    }
}

impl Run {
    fn start(&mut self, packet: &[u8], c: &Candidate, stamp: u64) {
        self.buf[..packet.len()].copy_from_slice(packet);
        self.len = packet.len();
        self.proto = c.proto;
        self.l4 = c.l4;
        self.headers = c.headers;
        self.mss = packet.len() - c.headers;
        self.next_seq = c.seq.wrapping_add(self.mss as u32);
        self.count = 1;
        self.psh = c.flags & TCP_PSH != 0;
        self.closed = self.psh;
        self.stamp = stamp;
    }

    fn try_append(&mut self, packet: &[u8], c: &Candidate) -> bool {
        let payload = packet.len() - c.headers;
        let run = &self.buf[..self.len];
        let same_ip = if packet[0] >> 4 == 4 {
            // TOS, flags (DF), TTL; IDs may differ.
            run[1] == packet[1] && run[6..9] == packet[6..9]
        } else {
            // Traffic class and flow label; hop limit.
            run[..4] == packet[..4] && run[7] == packet[7]
        };
        let l4 = c.l4;
        if c.proto == IPPROTO_UDP {
            if self.closed
                || !same_ip
                || c.headers != self.headers
                || payload > self.mss
                || self.count >= UDP_MAX_SEGMENTS
                || self.len + payload > MAX_PACKET
            {
                return false;
            }
            self.buf[self.len..self.len + payload].copy_from_slice(&packet[c.headers..]);
            self.len += payload;
            self.count += 1;
            self.closed = payload < self.mss;
            return true;
        }
        if self.closed
            || !same_ip
            || c.headers != self.headers
            || c.seq != self.next_seq
            || payload > self.mss
            || self.len + payload > MAX_PACKET
            // ACK number, then data offset and flags must equal ours once
            // PSH is ignored, window, urgent pointer and options.
            || run[l4 + 8..l4 + 13] != packet[l4 + 8..l4 + 13]
            || run[l4 + 14..l4 + 16] != packet[l4 + 14..l4 + 16]
            || run[l4 + 18..c.headers] != packet[l4 + 18..c.headers]
        {
            return false;
        }
        self.buf[self.len..self.len + payload].copy_from_slice(&packet[c.headers..]);
        self.len += payload;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.count += 1;
        if c.flags & TCP_PSH != 0 {
            self.psh = true;
            self.closed = true;
        }
        if payload < self.mss {
            self.closed = true;
        }
        true
    }
}

/// The address range, transport header offset and protocol of a TCP or UDP
/// packet, if it is one.
fn flow_fields(packet: &[u8]) -> Option<(std::ops::Range<usize>, usize, u8)> {
    let tcp_or_udp = |p: u8| p == IPPROTO_TCP || p == IPPROTO_UDP;
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 && tcp_or_udp(packet[9]) => {
            Some((12..20, usize::from(packet[0] & 0x0f) * 4, packet[9]))
        }
        6 if packet.len() >= 40 && tcp_or_udp(packet[6]) => Some((8..40, 40, packet[6])),
        _ => None,
    }
}

/// A TCP packet with data, only ACK (and maybe PSH) set, or (with `udp`) a
/// UDP datagram with data; no IP options or extension headers, not a
/// fragment, lengths consistent.
fn candidate(packet: &[u8], udp: bool) -> Option<Candidate> {
    let len = packet.len();
    let (l4, proto) = match packet.first()? >> 4 {
        4 => {
            if len < 28
                || packet[0] & 0x0f != 5
                || usize::from(u16::from_be_bytes([packet[2], packet[3]])) != len
                // MF or a fragment offset.
                || u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0
            {
                return None;
            }
            (20, packet[9])
        }
        6 => {
            if len < 48 || usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40 != len {
                return None;
            }
            (40, packet[6])
        }
        _ => return None,
    };
    if proto == IPPROTO_UDP {
        let udp_len = usize::from(u16::from_be_bytes([packet[l4 + 4], packet[l4 + 5]]));
        if !udp || udp_len != len - l4 || len <= l4 + 8 {
            return None;
        }
        return Some(Candidate {
            proto,
            l4,
            headers: l4 + 8,
            seq: 0,
            flags: 0,
        });
    }
    if proto != IPPROTO_TCP || len < l4 + 20 {
        return None;
    }
    let headers = l4 + usize::from(packet[l4 + 12] >> 4) * 4;
    let flags = packet[l4 + 13];
    if headers < l4 + 20 || headers >= len || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let seq = u32::from_be_bytes([
        packet[l4 + 4],
        packet[l4 + 5],
        packet[l4 + 6],
        packet[l4 + 7],
    ]);
    Some(Candidate {
        proto,
        l4,
        headers,
        seq,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::finish_checksum;
    use crate::offload::segment::{segment, tests as seg_tests};

    /// The MSS-sized packets the sender's overlay would have produced.
    fn segments(v6: bool, payload: usize, flags: u8) -> Vec<Vec<u8>> {
        let (hdr, mut packet) = seg_tests::tso_packet(v6, payload, flags);
        let mut scratch = vec![0u8; 65536];
        let mut out = Vec::new();
        segment(&hdr, &mut packet, &mut scratch, |s| out.push(s.to_vec())).unwrap();
        out
    }

    fn collect(c: &mut Coalescer, packets: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        let mut written = Vec::new();
        let mut sink = |h: &VirtioNetHdr, p: &[u8]| written.push((*h, p.to_vec()));
        for p in packets {
            c.push(p, &mut sink);
        }
        c.flush(&mut sink);
        written
    }

    /// What the kernel does with a written super-packet: cut it again at
    /// gso_size (after completing the checksum it was handed partial).
    fn recut(hdr: &VirtioNetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
        let mut p = packet.to_vec();
        if hdr.gso_type == 0 {
            return vec![p];
        }
        // The partial checksum must complete to a valid one for the whole packet.
        let mut whole = p.clone();
        assert!(finish_checksum(
            &mut whole,
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset)
        ));
        seg_tests::verify(&whole);
        let mut scratch = vec![0u8; 65536];
        let mut out = Vec::new();
        segment(hdr, &mut p, &mut scratch, |s| out.push(s.to_vec())).unwrap();
        out
    }

    #[test]
    fn a_flows_segments_merge_into_one_packet_that_cuts_back_identically() {
        for v6 in [false, true] {
            let segs = segments(v6, 40_000, TCP_PSH);
            let mut c = Coalescer::new(4, true);
            let written = collect(&mut c, &segs);
            assert_eq!(written.len(), 1, "v6 {v6}");
            let (hdr, packet) = &written[0];
            assert_eq!(hdr.gso_size, 1368);
            assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
            assert_eq!(packet[if v6 { 40 } else { 20 } + 13] & TCP_PSH, TCP_PSH);
            let back = recut(hdr, packet);
            assert_eq!(back.len(), segs.len());
            for (a, b) in back.iter().zip(&segs) {
                // IPv4 IDs are renumbered from the first, as the kernel does.
                assert_eq!(seg_tests::verify(a), seg_tests::verify(b));
            }
        }
    }

    #[test]
    fn runs_stop_at_the_size_limit_gaps_and_changed_headers() {
        // 86 full segments, twice what one packet below 64 KiB can hold.
        let mut segs = segments(false, 43 * 1368, 0);
        let more: Vec<Vec<u8>> = segs
            .iter()
            .map(|p| {
                let mut p = p.clone();
                let seq = u32::from_be_bytes(p[24..28].try_into().unwrap());
                p[24..28].copy_from_slice(&seq.wrapping_add(43 * 1368).to_be_bytes());
                seg_fix(&mut p);
                p
            })
            .collect();
        segs.extend(more);
        let mut c = Coalescer::new(4, true);
        let written = collect(&mut c, &segs);
        assert!(written.len() >= 2);
        assert!(written.iter().all(|(_, p)| p.len() <= MAX_PACKET));
        let total: usize = written.iter().map(|(h, p)| recut(h, p).len()).sum();
        assert_eq!(total, segs.len());

        // A missing segment starts a new run.
        let mut gap = segments(false, 10 * 1368, 0);
        gap.remove(4);
        let written = collect(&mut Coalescer::new(4, true), &gap);
        assert_eq!(written.len(), 2);
        assert_eq!(recut(&written[0].0, &written[0].1).len(), 4);

        // A different ACK number cannot join, nor can the next one join it.
        let mut acks = segments(false, 4 * 1368, 0);
        acks[2][20 + 11] ^= 1;
        seg_fix(&mut acks[2]);
        let written = collect(&mut Coalescer::new(4, true), &acks);
        let sizes: Vec<usize> = written.iter().map(|(h, p)| recut(h, p).len()).collect();
        assert_eq!(sizes, [2, 1, 1]);
    }

    /// Recomputes a test packet's TCP checksum after an edit.
    fn seg_fix(p: &mut [u8]) {
        crate::offload::transport_checksum(p, 20, IPPROTO_TCP);
    }

    #[test]
    fn other_packets_pass_through_in_order_and_flush_their_flow_first() {
        let segs = segments(false, 3 * 1368, 0);
        let fin = segments(false, 100, 0x01).remove(0);
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 99, 0, 2], [10, 99, 0, 1], 64)
            .udp(1, 2)
            .write(&mut udp, b"hello")
            .unwrap();
        // UDP merging off: the datagram is a packet that cannot join anything.
        let mut c = Coalescer::new(4, false);
        let written = std::cell::RefCell::new(Vec::new());
        let mut sink = |h: &VirtioNetHdr, p: &[u8]| written.borrow_mut().push((*h, p.to_vec()));
        for s in &segs {
            c.push(s, &mut sink);
        }
        c.push(&udp, &mut sink);
        // The UDP datagram is another flow: it goes at once, the run waits.
        assert_eq!(written.borrow().len(), 1);
        assert_eq!(written.borrow()[0].1, udp);
        c.push(&fin, &mut sink);
        // The FIN belongs to the run's flow: the run goes first, then the FIN.
        let written = written.borrow();
        assert_eq!(written.len(), 3);
        assert_eq!(written[1].0.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(written[2].1, fin);
        assert_eq!(written[2].0, VirtioNetHdr::default());
    }

    #[test]
    fn a_udp_flows_datagrams_merge_and_cut_back_identically() {
        for v6 in [false, true] {
            let datagrams: Vec<Vec<u8>> = (0..10u8)
                .map(|i| {
                    let data = vec![i; if i == 9 { 500 } else { 1200 }];
                    let mut p = Vec::new();
                    let b = if v6 {
                        etherparse::PacketBuilder::ipv6(
                            "fd99::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                            "fd99::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                            64,
                        )
                    } else {
                        etherparse::PacketBuilder::ipv4([10, 99, 0, 2], [10, 99, 0, 1], 64)
                    };
                    b.udp(5000, 5201).write(&mut p, &data).unwrap();
                    p
                })
                .collect();
            let written = collect(&mut Coalescer::new(4, true), &datagrams);
            assert_eq!(written.len(), 1, "v6 {v6}");
            let (hdr, packet) = &written[0];
            assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
            assert_eq!(hdr.gso_size, 1200);
            let back = recut(hdr, packet);
            assert_eq!(back.len(), 10);
            for (a, b) in back.iter().zip(&datagrams) {
                assert_eq!(seg_tests::verify(a), seg_tests::verify(b));
            }
            // Without UDP merging, each goes alone.
            assert_eq!(collect(&mut Coalescer::new(4, false), &datagrams).len(), 10);
        }
    }

    #[test]
    fn without_runs_every_packet_passes_alone() {
        let segs = segments(false, 5 * 1368, 0);
        let written = collect(&mut Coalescer::new(0, true), &segs);
        assert_eq!(written.len(), 5);
        assert!(written.iter().all(|(h, _)| *h == VirtioNetHdr::default()));
    }

    #[test]
    fn interleaved_flows_merge_separately() {
        let a = segments(false, 5 * 1368, 0);
        let mut b = segments(false, 5 * 1368, 0);
        for p in &mut b {
            p[20..22].copy_from_slice(&40001u16.to_be_bytes());
            seg_fix(p);
        }
        let mixed: Vec<Vec<u8>> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .collect();
        let written = collect(&mut Coalescer::new(4, true), &mixed);
        assert_eq!(written.len(), 2);
        assert_eq!(recut(&written[0].0, &written[0].1).len(), 5);
        assert_eq!(recut(&written[1].0, &written[1].1).len(), 5);
    }
}
