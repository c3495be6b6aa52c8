//! Cutting what the TUN device hands over into packets a peer can take: a
//! TCP super-segment (TSO, up to 64 KiB) or UDP super-datagram (USO) becomes
//! MTU-sized packets with their own lengths, sequence numbers, IPv4 IDs and
//! checksums — what the kernel's own GSO would have put on a wire. A single
//! packet whose checksum the kernel left partial gets it completed.

use super::{
    finish_checksum, ipv4_header_checksum, transport_checksum, VirtioNetHdr, IPPROTO_TCP,
    IPPROTO_UDP, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};

/// Why a super-segment from the TUN device could not be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// A `gso_type` the device was not told it may send.
    #[error("GSO type {0} is not one we offered")]
    UnknownType(u8),
    /// The header's lengths do not fit the packet of `len` bytes.
    #[error("GSO header does not fit a packet of {len} bytes")]
    BadHeader {
        /// The packet's length in bytes.
        len: usize,
    },
    /// A segment (`needed` bytes) larger than the scratch buffer (`have` bytes).
    #[error("segment of {needed} bytes does not fit the {have}-byte scratch buffer")]
    ScratchTooSmall {
        /// Bytes one segment needs.
        needed: usize,
        /// Bytes the scratch buffer holds.
        have: usize,
    },
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Hands each packet of `packet` (as described by `hdr`) to `emit`, in order,
/// and returns how many there were. Segments are built in `scratch`; a packet
/// that needs no cutting is passed as is (its checksum completed in place).
pub fn segment(
    hdr: &VirtioNetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SegmentError> {
    let len = packet.len();
    let bad = SegmentError::BadHeader { len };
    let gso = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    if gso == VIRTIO_NET_HDR_GSO_NONE {
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
            && !finish_checksum(
                packet,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )
        {
            return Err(bad);
        }
        emit(packet);
        return Ok(1);
    }
    let version = packet.first().map(|b| b >> 4).ok_or(bad)?;
    let proto = match (gso, version) {
        (VIRTIO_NET_HDR_GSO_TCPV4, 4) | (VIRTIO_NET_HDR_GSO_TCPV6, 6) => IPPROTO_TCP,
        (VIRTIO_NET_HDR_GSO_UDP_L4, 4 | 6) => IPPROTO_UDP,
        (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_UDP_L4, _) => {
            return Err(bad)
        }
        (other, _) => return Err(SegmentError::UnknownType(other)),
    };
    let l4 = usize::from(hdr.csum_start);
    let min_ip = if version == 4 { 20 } else { 40 };
    if l4 < min_ip || l4 + 20 > len {
        return Err(bad);
    }
    let headers = if proto == IPPROTO_TCP {
        let thl = usize::from(packet[l4 + 12] >> 4) * 4;
        if thl < 20 {
            return Err(bad);
        }
        l4 + thl
    } else {
        l4 + 8
    };
    let mss = usize::from(hdr.gso_size);
    if headers > len || mss == 0 {
        return Err(bad);
    }
    let payload_len = len - headers;
    if payload_len <= mss {
        // One segment: lengths are already right; the checksum is not.
        transport_checksum(packet, l4, proto);
        emit(packet);
        return Ok(1);
    }
    if headers + mss > scratch.len() {
        return Err(SegmentError::ScratchTooSmall {
            needed: headers + mss,
            have: scratch.len(),
        });
    }
    let (head, payload) = packet.split_at(headers);
    let id = u16::from_be_bytes([head[4], head[5]]);
    let seq = u32::from_be_bytes([head[l4 + 4], head[l4 + 5], head[l4 + 6], head[l4 + 7]]);
    let count = payload_len.div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let seg_len = headers + chunk.len();
        let seg = &mut scratch[..seg_len];
        seg[..headers].copy_from_slice(head);
        seg[headers..].copy_from_slice(chunk);
        if version == 4 {
            seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            ipv4_header_checksum(seg);
        } else {
            seg[4..6].copy_from_slice(&((seg_len - 40) as u16).to_be_bytes());
        }
        if proto == IPPROTO_TCP {
            let s = seq.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            if i + 1 < count {
                seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[l4 + 13] &= !TCP_CWR;
            }
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&((seg_len - l4) as u16).to_be_bytes());
        }
        transport_checksum(seg, l4, proto);
        emit(seg);
    }
    Ok(count)
}

/// The size of the largest packet `segment` would make of `packet`.
pub fn largest_segment(hdr: &VirtioNetHdr, packet: &[u8]) -> usize {
    let gso = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    let l4 = usize::from(hdr.csum_start);
    if gso == VIRTIO_NET_HDR_GSO_NONE || hdr.gso_size == 0 || l4 + 20 > packet.len() {
        return packet.len();
    }
    let headers = if gso == VIRTIO_NET_HDR_GSO_UDP_L4 {
        l4 + 8
    } else {
        l4 + usize::from(packet[l4 + 12] >> 4) * 4
    };
    packet.len().min(headers + usize::from(hdr.gso_size))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::offload::{pseudo_header, VIRTIO_NET_HDR_GSO_TCPV4};
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    /// A TCP super-segment as the kernel hands it over with TSO: full-length
    /// IP header, the pseudo-header sum in the checksum field.
    pub(crate) fn tso_packet(v6: bool, payload: usize, flags: u8) -> (VirtioNetHdr, Vec<u8>) {
        let data: Vec<u8> = (0..payload).map(|i| (i * 31 + 7) as u8).collect();
        let builder = if v6 {
            etherparse::PacketBuilder::ipv6(
                "fd99::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                "fd99::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                64,
            )
        } else {
            etherparse::PacketBuilder::ipv4([10, 99, 0, 2], [10, 99, 0, 1], 64)
        };
        let mut tcp = builder
            .tcp(40000, 5201, 0xffff_f000, 512)
            .ack(77)
            .options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(1, 2),
            ])
            .unwrap();
        if flags & TCP_PSH != 0 {
            tcp = tcp.psh();
        }
        if flags & TCP_FIN != 0 {
            tcp = tcp.fin();
        }
        let mut packet = Vec::new();
        tcp.write(&mut packet, &data).unwrap();
        let l4 = if v6 { 40 } else { 20 };
        // What the kernel leaves in the field with CHECKSUM_PARTIAL.
        let partial = crate::offload::fold(pseudo_header(&packet, 6, packet.len() - l4));
        packet[l4 + 16..l4 + 18].copy_from_slice(&partial.to_ne_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            },
            hdr_len: (l4 + 32) as u16,
            gso_size: 1368,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        (hdr, packet)
    }

    /// Parses and checks a packet with etherparse: lengths consistent, IPv4
    /// header and TCP/UDP checksums right. Returns (seq or 0, payload).
    pub(crate) fn verify(packet: &[u8]) -> (u32, u8, Vec<u8>) {
        let sliced = SlicedPacket::from_ip(packet).expect("parses");
        let (src, dst): (Vec<u8>, Vec<u8>) = match &sliced.net {
            Some(NetSlice::Ipv4(v4)) => {
                let h = v4.header().to_header();
                assert_eq!(
                    h.calc_header_checksum(),
                    h.header_checksum,
                    "IPv4 header checksum"
                );
                assert_eq!(usize::from(h.total_len), packet.len());
                (h.source.to_vec(), h.destination.to_vec())
            }
            Some(NetSlice::Ipv6(v6)) => {
                let h = v6.header().to_header();
                assert_eq!(usize::from(h.payload_length) + 40, packet.len());
                (h.source.to_vec(), h.destination.to_vec())
            }
            other => panic!("not IP: {other:?}"),
        };
        match sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let header = tcp.to_header();
                let expected = if src.len() == 4 {
                    header
                        .calc_checksum_ipv4_raw(
                            src.try_into().unwrap(),
                            dst.try_into().unwrap(),
                            tcp.payload(),
                        )
                        .unwrap()
                } else {
                    header
                        .calc_checksum_ipv6_raw(
                            src.try_into().unwrap(),
                            dst.try_into().unwrap(),
                            tcp.payload(),
                        )
                        .unwrap()
                };
                assert_eq!(header.checksum, expected, "TCP checksum");
                let mut f = 0u8;
                if header.fin {
                    f |= TCP_FIN;
                }
                if header.psh {
                    f |= TCP_PSH;
                }
                if header.cwr {
                    f |= TCP_CWR;
                }
                (header.sequence_number, f, tcp.payload().to_vec())
            }
            Some(TransportSlice::Udp(udp)) => {
                let header = udp.to_header();
                let expected = if src.len() == 4 {
                    header
                        .calc_checksum_ipv4_raw(
                            src.try_into().unwrap(),
                            dst.try_into().unwrap(),
                            udp.payload(),
                        )
                        .unwrap()
                } else {
                    header
                        .calc_checksum_ipv6_raw(
                            src.try_into().unwrap(),
                            dst.try_into().unwrap(),
                            udp.payload(),
                        )
                        .unwrap()
                };
                assert_eq!(header.checksum, expected, "UDP checksum");
                assert_eq!(usize::from(header.length), udp.slice().len());
                (0, 0, udp.payload().to_vec())
            }
            other => panic!("not TCP or UDP: {other:?}"),
        }
    }

    fn cut(hdr: &VirtioNetHdr, packet: &mut [u8]) -> Vec<Vec<u8>> {
        let mut scratch = vec![0u8; 65536];
        let mut out = Vec::new();
        let n = segment(hdr, packet, &mut scratch, |s| out.push(s.to_vec())).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn tso_super_segments_become_valid_mss_sized_packets() {
        for v6 in [false, true] {
            let payload = 60_000;
            let (hdr, mut packet) = tso_packet(v6, payload, TCP_PSH | TCP_FIN);
            let original = packet.clone();
            let largest = largest_segment(&hdr, &packet);
            let segments = cut(&hdr, &mut packet);
            assert_eq!(segments.len(), payload.div_ceil(1368));
            assert_eq!(largest, segments[0].len());
            let mut joined = Vec::new();
            let mut ids = Vec::new();
            for (i, s) in segments.iter().enumerate() {
                let (seq, flags, data) = verify(s);
                assert_eq!(
                    seq,
                    0xffff_f000u32.wrapping_add((i * 1368) as u32),
                    "seq wraps"
                );
                let last = i + 1 == segments.len();
                assert_eq!(flags & (TCP_FIN | TCP_PSH) != 0, last, "segment {i}");
                assert!(data.len() == 1368 || last);
                if !v6 {
                    ids.push(u16::from_be_bytes([s[4], s[5]]));
                }
                joined.extend_from_slice(&data);
            }
            let l4 = if v6 { 40 } else { 20 };
            assert_eq!(joined, original[l4 + 32..]);
            if !v6 {
                assert!(ids.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
            }
        }
    }

    #[test]
    fn a_small_packet_with_a_partial_checksum_is_completed_in_place() {
        for v6 in [false, true] {
            let (mut hdr, mut packet) = tso_packet(v6, 100, 0);
            hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
            let segments = cut(&hdr, &mut packet);
            assert_eq!(segments.len(), 1);
            verify(&segments[0]);
            // And a GSO header over a packet that needs no cutting.
            let (hdr, mut packet) = tso_packet(v6, 1000, 0);
            let segments = cut(&hdr, &mut packet);
            assert_eq!(segments.len(), 1);
            verify(&segments[0]);
        }
    }

    #[test]
    fn uso_super_datagrams_become_datagrams() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 99, 0, 2], [10, 99, 0, 1], 64)
            .udp(5000, 5201)
            .write(&mut packet, &data)
            .unwrap();
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1200,
            csum_start: 20,
            csum_offset: 6,
        };
        let segments = cut(&hdr, &mut packet);
        assert_eq!(segments.len(), 5);
        let mut joined = Vec::new();
        for s in &segments {
            joined.extend(verify(s).2);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn headers_that_do_not_fit_are_refused() {
        let (mut hdr, mut packet) = tso_packet(false, 3000, 0);
        hdr.csum_start = 4000;
        let mut scratch = vec![0u8; 65536];
        assert!(segment(&hdr, &mut packet, &mut scratch, |_| {}).is_err());
        let (mut hdr, mut packet) = tso_packet(false, 3000, 0);
        hdr.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
        assert!(segment(&hdr, &mut packet, &mut scratch, |_| {}).is_err());
        hdr.gso_type = 3; // UFO: never offered
        assert_eq!(
            segment(&hdr, &mut packet, &mut scratch, |_| {}),
            Err(SegmentError::UnknownType(3))
        );
    }
}
