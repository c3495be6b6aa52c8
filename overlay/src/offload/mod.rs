//! Offloads between the TUN device and the sessions: the virtio-net header
//! that IFF_VNET_HDR puts before every packet, Internet checksums, cutting
//! the kernel's TCP/UDP super-segments (TSO/USO) into MTU-sized packets on the
//! way out (`segment`), and gluing a TCP flow's consecutive packets back into
//! one super-packet on the way in (`coalesce`, GRO).
//!
//! Checksums are one's-complement sums, which do not depend on byte order
//! (RFC 1071 §2): bytes are summed as native-endian words and the folded
//! result is written back with `to_ne_bytes`, which puts it in network order.

pub mod coalesce;
pub mod segment;

pub use coalesce::Coalescer;
pub use segment::{largest_segment, segment, SegmentError};

/// `struct virtio_net_hdr` (10 bytes, native endian for a TUN device).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits, e.g. [`VIRTIO_NET_HDR_F_NEEDS_CSUM`].
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`: how the packet is to be cut, or NONE.
    pub gso_type: u8,
    /// Bytes of headers (IP and transport) before the payload.
    pub hdr_len: u16,
    /// Payload bytes per segment when cut (the MSS for TCP).
    pub gso_size: u16,
    /// Where the checksum's coverage starts, from the packet's first byte.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

/// Size of `struct virtio_net_hdr`, the TUN's default vnet header size.
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum from `csum_start` on is still to be computed and
/// stored at `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: a single packet, nothing to cut.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: a TCP over IPv4 super-segment.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: a TCP over IPv6 super-segment.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: a UDP super-packet (USO), cut into datagrams of `gso_size`.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN's CWR as the first one does.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

impl VirtioNetHdr {
    /// Reads a header as the TUN device hands it over (native endian).
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VirtioNetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// The header's bytes as the TUN device takes them (native endian).
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Adds `data` to a running one's-complement sum (unfolded).
#[inline]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        // Split into 32-bit halves: the 64-bit accumulator cannot overflow
        // for any packet size we handle.
        acc += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u64::from(u32::from_ne_bytes(rest[..4].try_into().expect("4 bytes")));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A value in network order, as `sum` would have read it from a packet.
#[inline]
fn be16(v: u16) -> u64 {
    u64::from(u16::from_ne_bytes(v.to_be_bytes()))
}

/// The TCP/UDP pseudo-header sum (unfolded) of the IP packet `ip` for a
/// transport segment of `l4_len` bytes.
#[inline]
pub fn pseudo_header(ip: &[u8], proto: u8, l4_len: usize) -> u64 {
    let addrs = if ip[0] >> 4 == 4 {
        &ip[12..20]
    } else {
        &ip[8..40]
    };
    let mut acc = sum(addrs, 0);
    acc += be16(u16::from(proto));
    // IPv6 uses a 32-bit length; its upper half is zero for anything we carry.
    acc += be16(l4_len as u16) + be16((l4_len >> 16) as u16);
    acc
}

/// Writes a fresh IPv4 header checksum.
#[inline]
pub fn ipv4_header_checksum(ip: &mut [u8]) {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ip[10] = 0;
    ip[11] = 0;
    let c = !fold(sum(&ip[..ihl], 0));
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
}

/// Computes the transport checksum of `ip` (TCP or UDP starting at `l4`) from
/// scratch, pseudo-header included, and stores it.
#[inline]
pub fn transport_checksum(ip: &mut [u8], l4: usize, proto: u8) {
    let at = l4 + if proto == IPPROTO_TCP { 16 } else { 6 };
    ip[at] = 0;
    ip[at + 1] = 0;
    let l4_len = ip.len() - l4;
    let c = !fold(sum(&ip[l4..], pseudo_header(ip, proto, l4_len)));
    // UDP sends an all-zero checksum as all ones (zero means "none").
    let c = if c == 0 && proto == IPPROTO_UDP {
        0xffff
    } else {
        c
    };
    ip[at..at + 2].copy_from_slice(&c.to_ne_bytes());
}

/// Completes a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM):
/// the field holds the pseudo-header sum, the rest is summed from `start`.
/// Returns false when the offsets do not fit the packet.
#[inline]
pub fn finish_checksum(packet: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > packet.len() {
        return false;
    }
    let c = !fold(sum(&packet[start..], 0));
    let c = if c == 0 { 0xffff } else { c };
    packet[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// RFC 1071 byte by byte, big-endian words: the reference.
    pub(crate) fn reference_sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn fast_sum_matches_rfc1071_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..8 {
            for len in 0..200 {
                let slice = &data[start..start + len];
                let fast = u16::from_be_bytes(fold(sum(slice, 0)).to_ne_bytes());
                assert_eq!(fast, reference_sum(slice), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1388,
            csum_start: 40,
            csum_offset: 16,
        };
        assert_eq!(VirtioNetHdr::parse(&h.to_bytes()), h);
    }
}
