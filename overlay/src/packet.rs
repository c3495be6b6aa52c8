//! Classification without allocation: WireGuard messages arriving over UDP,
//! and IP packets read from the TUN device (or decrypted from a peer).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Sizes fixed by the WireGuard protocol.
pub const HANDSHAKE_INITIATION_LEN: usize = 148;
/// A handshake response is always 92 bytes.
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
/// A cookie reply is always 64 bytes.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Header (16) plus AEAD tag (16): an empty data message (a keepalive) is 32 bytes.
pub const DATA_OVERHEAD: usize = 32;

/// Why bytes are not a WireGuard message or not an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// No bytes at all (a zero-length datagram or read).
    #[error("empty packet")]
    Empty,
    /// A message type that does not exist, reserved bytes that are not zero,
    /// or a length that is not the type's (`kind` is the first 32 bits, little
    /// endian; a datagram under 4 bytes gives its first byte).
    #[error("WireGuard message type {kind} with {len} bytes is not a valid message")]
    BadMessage {
        /// The first 32 bits, little endian (the first byte under 4 bytes).
        kind: u32,
        /// The datagram's length in bytes.
        len: usize,
    },
    /// Shorter than its IP header, or than the length the header claims.
    #[error("IP packet of {len} bytes is shorter than its header")]
    Truncated {
        /// The bytes at hand.
        len: usize,
    },
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownIpVersion(u8),
}

/// A WireGuard message, identified by its type and the indexes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireMessage {
    /// Type 1: someone starts a handshake; only the static key inside says who.
    HandshakeInitiation {
        /// The initiator's session index, for its answer.
        sender: u32,
    },
    /// Type 2: the answer to our initiation, addressed to our index.
    HandshakeResponse {
        /// The responder's session index.
        sender: u32,
        /// Our session index the response answers.
        receiver: u32,
    },
    /// Type 3: we were asked to retry with a cookie (the responder is under load).
    CookieReply {
        /// Our session index whose handshake the cookie is for.
        receiver: u32,
    },
    /// Type 4: transport data for the session with our index `receiver`.
    Data {
        /// Our session index the data is for.
        receiver: u32,
        /// The message counter (the nonce; replay protection).
        counter: u64,
    },
}

impl WireMessage {
    /// Reads the type and indexes. The reserved bytes after the type must be zero.
    #[inline]
    pub fn classify(datagram: &[u8]) -> Result<WireMessage, PacketError> {
        if datagram.is_empty() {
            return Err(PacketError::Empty);
        }
        let len = datagram.len();
        if len < 4 {
            return Err(PacketError::BadMessage {
                kind: u32::from(datagram[0]),
                len,
            });
        }
        let kind = le32(datagram, 0);
        let bad = PacketError::BadMessage { kind, len };
        match (kind, len) {
            (1, HANDSHAKE_INITIATION_LEN) => Ok(WireMessage::HandshakeInitiation {
                sender: le32(datagram, 4),
            }),
            (2, HANDSHAKE_RESPONSE_LEN) => Ok(WireMessage::HandshakeResponse {
                sender: le32(datagram, 4),
                receiver: le32(datagram, 8),
            }),
            (3, COOKIE_REPLY_LEN) => Ok(WireMessage::CookieReply {
                receiver: le32(datagram, 4),
            }),
            (4, DATA_OVERHEAD..) => Ok(WireMessage::Data {
                receiver: le32(datagram, 4),
                counter: u64::from_le_bytes(datagram[8..16].try_into().expect("8 bytes")),
            }),
            _ => Err(bad),
        }
    }

    /// The index of ours the message is addressed to; initiations have none.
    #[inline]
    pub fn receiver(&self) -> Option<u32> {
        match *self {
            WireMessage::HandshakeInitiation { .. } => None,
            WireMessage::HandshakeResponse { receiver, .. }
            | WireMessage::CookieReply { receiver }
            | WireMessage::Data { receiver, .. } => Some(receiver),
        }
    }

    /// Handshake messages are the expensive ones (public-key crypto) that the
    /// rate limiter guards.
    #[inline]
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            WireMessage::HandshakeInitiation { .. } | WireMessage::HandshakeResponse { .. }
        )
    }
}

/// The addresses of an IP packet, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// The packet's source address (what the allowed-IPs check reads).
    pub source: IpAddr,
    /// The packet's destination address (what routing to a peer reads).
    pub destination: IpAddr,
    /// Length of the packet according to its header (≤ the bytes at hand).
    pub total_len: usize,
}

impl IpHeader {
    /// Reads the version, the addresses and the length. Errors when the bytes
    /// are shorter than the header or than the length it claims, or the version
    /// is neither 4 nor 6; options and extension headers are not read.
    #[inline]
    pub fn parse(packet: &[u8]) -> Result<IpHeader, PacketError> {
        let Some(first) = packet.first() else {
            return Err(PacketError::Empty);
        };
        let len = packet.len();
        match first >> 4 {
            4 => {
                if len < 20 {
                    return Err(PacketError::Truncated { len });
                }
                let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
                if total_len > len || total_len < 20 {
                    return Err(PacketError::Truncated { len });
                }
                Ok(IpHeader {
                    source: IpAddr::V4(Ipv4Addr::from(be32(packet, 12))),
                    destination: IpAddr::V4(Ipv4Addr::from(be32(packet, 16))),
                    total_len,
                })
            }
            6 => {
                if len < 40 {
                    return Err(PacketError::Truncated { len });
                }
                let total_len = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
                if total_len > len {
                    return Err(PacketError::Truncated { len });
                }
                Ok(IpHeader {
                    source: IpAddr::V6(Ipv6Addr::from(be128(packet, 8))),
                    destination: IpAddr::V6(Ipv6Addr::from(be128(packet, 24))),
                    total_len,
                })
            }
            v => Err(PacketError::UnknownIpVersion(v)),
        }
    }
}

#[inline]
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[inline]
fn be128(b: &[u8], at: usize) -> u128 {
    u128::from_be_bytes(b[at..at + 16].try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u32, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[..4].copy_from_slice(&kind.to_le_bytes());
        if len >= 16 {
            m[4..8].copy_from_slice(&0x1122_3344u32.to_le_bytes());
            m[8..12].copy_from_slice(&0x5566_7788u32.to_le_bytes());
            m[12..16].copy_from_slice(&0x99aa_bbccu32.to_le_bytes());
        }
        m
    }

    #[test]
    fn wireguard_message_types_and_indexes() {
        assert_eq!(
            WireMessage::classify(&message(1, 148)),
            Ok(WireMessage::HandshakeInitiation {
                sender: 0x1122_3344
            })
        );
        assert_eq!(
            WireMessage::classify(&message(2, 92)),
            Ok(WireMessage::HandshakeResponse {
                sender: 0x1122_3344,
                receiver: 0x5566_7788
            })
        );
        assert_eq!(
            WireMessage::classify(&message(3, 64)),
            Ok(WireMessage::CookieReply {
                receiver: 0x1122_3344
            })
        );
        let data = WireMessage::classify(&message(4, 32)).unwrap();
        assert_eq!(
            data,
            WireMessage::Data {
                receiver: 0x1122_3344,
                counter: 0x99aa_bbcc_5566_7788
            }
        );
        assert_eq!(data.receiver(), Some(0x1122_3344));
        assert!(!data.is_handshake());
        assert!(WireMessage::classify(&message(4, 1452)).is_ok());
    }

    #[test]
    fn wrong_lengths_types_and_reserved_bytes_are_refused() {
        assert_eq!(WireMessage::classify(&[]), Err(PacketError::Empty));
        assert!(WireMessage::classify(&[1, 0]).is_err());
        assert!(WireMessage::classify(&message(1, 147)).is_err());
        assert!(WireMessage::classify(&message(2, 148)).is_err());
        assert!(WireMessage::classify(&message(4, 31)).is_err());
        assert!(WireMessage::classify(&message(5, 64)).is_err());
        let mut reserved = message(4, 64);
        reserved[2] = 1;
        assert_eq!(
            WireMessage::classify(&reserved),
            Err(PacketError::BadMessage {
                kind: 0x0001_0004,
                len: 64
            })
        );
    }

    #[test]
    fn ipv4_and_ipv6_headers() {
        let mut v4 = vec![0u8; 60];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&52u16.to_be_bytes());
        v4[12..16].copy_from_slice(&[10, 99, 0, 2]);
        v4[16..20].copy_from_slice(&[10, 99, 0, 1]);
        let h = IpHeader::parse(&v4).unwrap();
        assert_eq!(h.source, "10.99.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(h.destination, "10.99.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(h.total_len, 52);

        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        let h = IpHeader::parse(&v6).unwrap();
        assert_eq!(h.source, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(h.destination, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(h.total_len, 48);
    }

    #[test]
    fn short_or_lying_ip_packets_are_refused() {
        assert_eq!(IpHeader::parse(&[]), Err(PacketError::Empty));
        assert_eq!(
            IpHeader::parse(&[0x45; 19]),
            Err(PacketError::Truncated { len: 19 })
        );
        let mut v4 = vec![0u8; 20];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(
            IpHeader::parse(&v4),
            Err(PacketError::Truncated { len: 20 })
        );
        assert_eq!(
            IpHeader::parse(&[0x60; 39]),
            Err(PacketError::Truncated { len: 39 })
        );
        assert_eq!(
            IpHeader::parse(&[0x50; 40]),
            Err(PacketError::UnknownIpVersion(5))
        );
    }
}
