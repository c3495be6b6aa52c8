//! A bounded fuzz of what the rx path decides about untrusted bytes: the
//! WireGuard message classification of an arriving datagram, and the IP
//! header parse that the allowed-source check reads.
//!
//! The corpus (tests/corpus/packets/*.bin: every message type at its length
//! and one off, reserved bytes set, IPv4 and IPv6 headers that lie about
//! their length, …) is replayed as is, then mutated by a seeded generator a
//! fixed number of times per file: bit flips, byte writes, truncations,
//! extensions, the type byte swapped. Same seed, same cases, every run.
//! Each result is checked against an independent reading of the rules.
//! A failing case prints its bytes; add it to the corpus with the fix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use overlay::packet::{
    COOKIE_REPLY_LEN, DATA_OVERHEAD, HANDSHAKE_INITIATION_LEN, HANDSHAKE_RESPONSE_LEN,
};
use overlay::{AllowedIps, IpHeader, PacketError, WireMessage};

const SEED: u64 = 0x5eed_f00d_2026_1207;
/// Mutations per corpus file (28 files: about 230 000 cases, a fraction of
/// a second in a debug build).
const MUTATIONS_PER_FILE: usize = 8_192;

/// xorshift64*: enough to spread mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/packets");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read the corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus lost files: {}", files.len());
    files
}

fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(7) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = rng.next() as u8;
            }
            2 => out.truncate(rng.below(out.len() + 1)),
            3 => {
                let extra = rng.below(64);
                out.extend((0..extra).map(|_| rng.next() as u8));
            }
            // The type byte, to any of the message types and just past them.
            4 if !out.is_empty() => out[0] = rng.below(6) as u8,
            // The IP version nibble.
            5 if !out.is_empty() => out[0] = (out[0] & 0x0f) | ((rng.below(8) as u8) << 4),
            // Exactly a message type's length, to reach the valid classes.
            _ => out.resize(
                [
                    HANDSHAKE_INITIATION_LEN,
                    HANDSHAKE_RESPONSE_LEN,
                    COOKIE_REPLY_LEN,
                    DATA_OVERHEAD,
                    20,
                    40,
                ][rng.below(6)],
                0,
            ),
        }
    }
    out
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// What `WireMessage::classify` must say, read from the protocol's rules.
fn expected_message(b: &[u8]) -> Result<WireMessage, PacketError> {
    let len = b.len();
    if len == 0 {
        return Err(PacketError::Empty);
    }
    if len < 4 {
        return Err(PacketError::BadMessage {
            kind: u32::from(b[0]),
            len,
        });
    }
    let kind = le32(b, 0);
    match kind {
        1 if len == HANDSHAKE_INITIATION_LEN => {
            Ok(WireMessage::HandshakeInitiation { sender: le32(b, 4) })
        }
        2 if len == HANDSHAKE_RESPONSE_LEN => Ok(WireMessage::HandshakeResponse {
            sender: le32(b, 4),
            receiver: le32(b, 8),
        }),
        3 if len == COOKIE_REPLY_LEN => Ok(WireMessage::CookieReply {
            receiver: le32(b, 4),
        }),
        4 if len >= DATA_OVERHEAD => Ok(WireMessage::Data {
            receiver: le32(b, 4),
            counter: u64::from(le32(b, 8)) | (u64::from(le32(b, 12)) << 32),
        }),
        _ => Err(PacketError::BadMessage { kind, len }),
    }
}

/// What `IpHeader::parse` must say, read from RFC 791 / RFC 8200 fields.
fn expected_header(b: &[u8]) -> Result<IpHeader, PacketError> {
    let len = b.len();
    let Some(first) = b.first() else {
        return Err(PacketError::Empty);
    };
    match first >> 4 {
        4 => {
            if len < 20 {
                return Err(PacketError::Truncated { len });
            }
            let total = usize::from(b[2]) << 8 | usize::from(b[3]);
            if !(20..=len).contains(&total) {
                return Err(PacketError::Truncated { len });
            }
            let addr = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
            Ok(IpHeader {
                source: IpAddr::V4(addr(12)),
                destination: IpAddr::V4(addr(16)),
                total_len: total,
            })
        }
        6 => {
            if len < 40 {
                return Err(PacketError::Truncated { len });
            }
            let total = 40 + (usize::from(b[4]) << 8 | usize::from(b[5]));
            if total > len {
                return Err(PacketError::Truncated { len });
            }
            let addr = |at: usize| {
                let octets: [u8; 16] = b[at..at + 16].try_into().unwrap();
                Ipv6Addr::from(octets)
            };
            Ok(IpHeader {
                source: IpAddr::V6(addr(8)),
                destination: IpAddr::V6(addr(24)),
                total_len: total,
            })
        }
        v => Err(PacketError::UnknownIpVersion(v)),
    }
}

/// The allowed-source check as the rx path makes it: one peer owns
/// 10.99.0.0/24 and fd00::/64.
fn allowed() -> AllowedIps<u32> {
    let mut table = AllowedIps::new();
    table.insert("10.99.0.0/24".parse().unwrap(), 7);
    table.insert("fd00::/64".parse().unwrap(), 7);
    table
}

/// Checks one input; the counts say which classes the run reached.
fn check(input: &[u8], table: &AllowedIps<u32>, reached: &mut Reached) {
    let message = WireMessage::classify(input);
    assert_eq!(message, expected_message(input), "classify {input:02x?}");
    match message {
        Ok(m) => {
            reached.messages[input[0] as usize - 1] += 1;
            // The derived facts agree with the class.
            assert_eq!(m.is_handshake(), matches!(input[0], 1 | 2), "{m:?}");
            assert_eq!(m.receiver().is_none(), input[0] == 1, "{m:?}");
        }
        Err(PacketError::BadMessage { len, .. }) => {
            assert_eq!(len, input.len());
            reached.bad_messages += 1;
        }
        Err(PacketError::Empty) => reached.empty += 1,
        Err(e) => panic!("classify {input:02x?}: an IP error from a message: {e}"),
    }

    let header = IpHeader::parse(input);
    assert_eq!(header, expected_header(input), "parse {input:02x?}");
    if let Ok(h) = header {
        assert!(h.total_len <= input.len());
        // The check the rx path makes next: total, and true to the table.
        let owner = table.lookup(h.source);
        let inside = match h.source {
            IpAddr::V4(a) => a.octets()[..3] == [10, 99, 0],
            IpAddr::V6(a) => a.segments()[..4] == [0xfd00, 0, 0, 0],
        };
        assert_eq!(owner == Some(7), inside, "{h:?}");
        reached.headers[usize::from(h.source.is_ipv6())] += 1;
    }
}

#[derive(Debug, Default)]
struct Reached {
    messages: [usize; 4],
    bad_messages: usize,
    empty: usize,
    headers: [usize; 2],
}

#[test]
fn the_corpus_and_its_mutations_classify_as_the_rules_say() {
    let table = allowed();
    let mut reached = Reached::default();
    let mut rng = Rng(SEED);
    for (name, bytes) in corpus() {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check(&bytes, &table, &mut reached);
            for _ in 0..MUTATIONS_PER_FILE {
                check(&mutate(&bytes, &mut rng), &table, &mut reached);
            }
        }));
        if let Err(panic) = outcome {
            std::panic::resume_unwind(Box::new(format!(
                "corpus file {name} or a mutation of it: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panicked".into())
            )));
        }
    }
    // The run reached every class: a generator that stops producing valid
    // messages or headers would check nothing.
    assert!(reached.messages.iter().all(|n| *n > 50), "{reached:?}");
    assert!(
        reached.bad_messages > 1000 && reached.empty > 0,
        "{reached:?}"
    );
    assert!(reached.headers.iter().all(|n| *n > 50), "{reached:?}");
}
