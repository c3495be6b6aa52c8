//! "Too big" answers for packets the overlay cannot carry whole: ICMP
//! "fragmentation needed" (type 3 code 4, RFC 1191) for IPv4 with DF set,
//! ICMPv6 "packet too big" (type 2, RFC 8201) for IPv6. Written back into the
//! TUN device, they tell the sender's kernel the path MTU, so TCP lowers its
//! segment size and `ping -M do` reports the MTU, instead of packets vanishing.
//!
//! The answer comes from the original destination (as if the far end of the
//! tunnel sent it), so it passes reverse-path filtering on the TUN link.

use crate::offload::{fold, sum};

/// RFC 1812 §4.3.2.3: an ICMPv4 error holds at most 576 bytes in all.
const V4_MAX: usize = 576;
/// RFC 4443 §2.4: an ICMPv6 error must not exceed the minimum IPv6 MTU.
const V6_MAX: usize = 1280;

/// Whether an oversized `packet` must be answered (rather than sent in
/// fragments): always for IPv6, for IPv4 when DF is set.
pub fn must_answer(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.len() >= 20 && packet[6] & 0x40 != 0,
        Some(6) => true,
        _ => false,
    }
}

/// Builds in `out` the "too big" answer to `packet` for a path MTU of `mtu`;
/// None for something that is not an IP packet, or is itself an ICMP error
/// (never answer errors with errors).
pub fn too_big<'a>(packet: &[u8], mtu: u32, out: &'a mut [u8]) -> Option<&'a [u8]> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => v4(packet, mtu, out),
        6 if packet.len() >= 40 => v6(packet, mtu, out),
        _ => None,
    }
}

fn v4<'a>(packet: &[u8], mtu: u32, out: &'a mut [u8]) -> Option<&'a [u8]> {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet[9] == 1 && packet.len() > ihl && !matches!(packet[ihl], 0 | 8 | 13 | 15 | 17) {
        // ICMP, and not a query (echo, timestamp, …): an error. Stay quiet.
        return None;
    }
    let quoted = packet.len().min(V4_MAX - 28);
    let len = 28 + quoted;
    let out = out.get_mut(..len)?;
    out[0] = 0x45;
    out[1] = 0xc0; // Internetwork control, as the kernel sends ICMP errors.
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[4..8].fill(0);
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&packet[16..20]);
    out[16..20].copy_from_slice(&packet[12..16]);
    crate::offload::ipv4_header_checksum(out);
    out[20] = 3;
    out[21] = 4;
    out[22..26].fill(0);
    out[26..28].copy_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
    out[28..].copy_from_slice(&packet[..quoted]);
    let c = !fold(sum(&out[20..], 0));
    out[22..24].copy_from_slice(&c.to_ne_bytes());
    Some(out)
}

fn v6<'a>(packet: &[u8], mtu: u32, out: &'a mut [u8]) -> Option<&'a [u8]> {
    // An ICMPv6 error (types below 128) right after the fixed header: quiet.
    if packet[6] == 58 && packet.len() > 40 && packet[40] < 128 {
        return None;
    }
    let quoted = packet.len().min(V6_MAX - 48);
    let len = 48 + quoted;
    let out = out.get_mut(..len)?;
    out[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&packet[24..40]);
    out[24..40].copy_from_slice(&packet[8..24]);
    out[40] = 2;
    out[41] = 0;
    out[42..44].fill(0);
    out[44..48].copy_from_slice(&mtu.to_be_bytes());
    out[48..].copy_from_slice(&packet[..quoted]);
    let pseudo = crate::offload::pseudo_header(out, 58, len - 40);
    let c = !fold(sum(&out[40..], pseudo));
    out[42..44].copy_from_slice(&c.to_ne_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::tests::reference_sum;
    use etherparse::{Icmpv4Type, Icmpv6Type, SlicedPacket, TransportSlice};

    fn tcp(v6: bool, payload: usize) -> Vec<u8> {
        let data = vec![7u8; payload];
        let mut p = Vec::new();
        let b = if v6 {
            etherparse::PacketBuilder::ipv6(
                "fd99::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                "fd99::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                64,
            )
        } else {
            etherparse::PacketBuilder::ipv4([10, 99, 0, 1], [10, 99, 0, 2], 64)
        };
        b.tcp(40000, 5201, 1, 1000).write(&mut p, &data).unwrap();
        p
    }

    #[test]
    fn fragmentation_needed_for_ipv4_with_df() {
        let mut p = tcp(false, 1460);
        p[6] |= 0x40;
        assert!(must_answer(&p));
        let mut out = vec![0u8; 2048];
        let icmp = too_big(&p, 1420, &mut out).unwrap().to_vec();
        assert_eq!(icmp.len(), 576);
        let sliced = SlicedPacket::from_ip(&icmp).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(h.source, [10, 99, 0, 2], "from the original destination");
        assert_eq!(h.destination, [10, 99, 0, 1]);
        let Some(TransportSlice::Icmpv4(icmp4)) = &sliced.transport else {
            panic!("not ICMP")
        };
        assert!(matches!(
            icmp4.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1420
                }
            )
        ));
        assert_eq!(reference_sum(&icmp[20..]), 0xffff, "ICMP checksum");
        assert_eq!(&icmp[28..48], &p[..20], "the original header is quoted");
        // Without DF, IPv4 is sent in fragments instead.
        p[6] &= !0x40;
        assert!(!must_answer(&p));
    }

    #[test]
    fn packet_too_big_for_ipv6() {
        let p = tcp(true, 1460);
        assert!(must_answer(&p));
        let mut out = vec![0u8; 2048];
        let icmp = too_big(&p, 1420, &mut out).unwrap().to_vec();
        assert_eq!(icmp.len(), 1280);
        let sliced = SlicedPacket::from_ip(&icmp).unwrap();
        let Some(TransportSlice::Icmpv6(icmp6)) = &sliced.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(icmp6.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1420 });
        let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6")
        };
        let h = ip.header().to_header();
        let expected = icmp6
            .header()
            .icmp_type
            .calc_checksum(h.source, h.destination, icmp6.payload())
            .unwrap();
        assert_eq!(icmp6.header().checksum, expected, "ICMPv6 checksum");
        assert_eq!(&icmp[48..88], &p[..40]);
    }

    #[test]
    fn errors_are_never_answered() {
        let mut out = vec![0u8; 2048];
        let mut p = tcp(false, 1460);
        p[6] |= 0x40;
        let icmp = too_big(&p, 1420, &mut out).unwrap().to_vec();
        assert!(too_big(&icmp, 1280, &mut out).is_none());
        let p6 = tcp(true, 1460);
        let icmp6 = too_big(&p6, 1420, &mut out).unwrap().to_vec();
        assert!(too_big(&icmp6, 1280, &mut out).is_none());
    }
}
