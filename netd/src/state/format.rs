//! How the state files are framed so that damage shows (format 2).
//!
//! - A journal record is one line, `<seq> <crc> <json>\n` (see `journal.rs`):
//!   `seq` counts the transactions since the state directory was made (1, 2,
//!   …, never reused), `crc` is the CRC-32 (8 hex digits) of `<seq> <json>`.
//! - The snapshot is `weft-state 2 <seq> <crc>\n<json>`: `seq` is the last
//!   transaction it holds, `crc` the CRC-32 of `<seq> <json>`.
//! - The head, in the lock file every transaction holds anyway, is
//!   `weft-head 2 <seq> <boot id> <crc>\n`, fixed width and overwritten in
//!   place after each append: the last transaction that was committed.
//!
//! Format 1 (what netd wrote before) had bare JSON lines and a bare JSON
//! snapshot; both are still read, and the next write folds them into a
//! format-2 snapshot (see `Store::update`).

use super::State;

/// The state files' format; 1 was bare JSON without checksums.
pub const FORMAT: u32 = 2;
const SNAPSHOT_MAGIC: &str = "weft-state";
const HEAD_MAGIC: &str = "weft-head";
/// The kernel's id of this boot: a head written in another boot may be ahead
/// of the journal after a power loss (neither is fsynced), see `Head`.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// A checksum as written: exactly 8 lower-case hex digits. Upper case is
/// refused, or a flipped bit 5 in a letter digit would go unseen.
pub(super) fn parse_crc(text: &str) -> Option<u32> {
    let digits = text.len() == 8 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    digits.then(|| u32::from_str_radix(text, 16).ok()).flatten()
}

pub(super) fn crc(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// The snapshot file holding `state` as of transaction `seq`.
pub(super) fn encode_snapshot(seq: u64, state: &State) -> Vec<u8> {
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    let seq_text = seq.to_string();
    let sum = crc(&[seq_text.as_bytes(), b" ", &json]);
    let mut text = format!("{SNAPSHOT_MAGIC} {FORMAT} {seq_text} {sum:08x}\n").into_bytes();
    text.extend_from_slice(&json);
    text
}

/// Parses a snapshot file: the state and the transaction it is as of (None
/// for format 1, which did not say). Err says what is wrong.
pub(super) fn decode_snapshot(text: &[u8]) -> Result<(State, Option<u64>), String> {
    if text.first() == Some(&b'{') {
        return serde_json::from_slice(text)
            .map(|state| (state, None))
            .map_err(|e| format!("a format-1 snapshot does not parse ({e})"));
    }
    let Some(newline) = text.iter().position(|&b| b == b'\n') else {
        return Err("the header line is missing or cut short".into());
    };
    let header = std::str::from_utf8(&text[..newline]).map_err(|_| "the header is not text")?;
    let json = &text[newline + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, format, seq, sum] = fields[..] else {
        return Err(format!(
            "the header `{header}` is not `{SNAPSHOT_MAGIC} <format> <seq> <crc>`"
        ));
    };
    if magic != SNAPSHOT_MAGIC {
        return Err(format!("it does not start with `{SNAPSHOT_MAGIC}`"));
    }
    if format != FORMAT.to_string() {
        return Err(format!(
            "it has file format {format}; this netd reads formats 1 and {FORMAT}"
        ));
    }
    let sum = parse_crc(sum)
        .ok_or_else(|| format!("the checksum `{sum}` is not 8 lower-case hex digits"))?;
    let actual = crc(&[seq.as_bytes(), b" ", json]);
    if actual != sum {
        return Err(format!(
            "it fails its checksum (stored {sum:08x}, computed {actual:08x}, {} bytes)",
            json.len()
        ));
    }
    let seq: u64 = seq
        .parse()
        .map_err(|_| format!("the sequence number `{seq}` is not a number"))?;
    let state = serde_json::from_slice(json)
        .map_err(|e| format!("it passes its checksum but does not parse ({e})"))?;
    Ok((state, Some(seq)))
}

/// The last committed transaction, and the boot it was committed in.
///
/// Why it exists: a journal cut anywhere ends in a line that is cut short,
/// exactly like the one record a crashed writer leaves, and a cut at a line
/// boundary leaves nothing wrong to see at all. The head is written after
/// the record is appended, so a torn last record was never committed (the
/// head does not count it) while a cut through committed records leaves the
/// journal short of the head. Neither is fsynced: after a power loss the
/// head may be ahead of the journal, and then every container's link went
/// with the old boot too, so a short journal from another boot is no harm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub seq: u64,
    pub boot: String,
}

impl Head {
    pub fn now(seq: u64) -> Head {
        Head {
            seq,
            boot: boot_id(),
        }
    }

    /// Fixed width, so an overwrite in place leaves nothing of the old one.
    pub fn encode(&self) -> Vec<u8> {
        let body = format!("{HEAD_MAGIC} {FORMAT} {:020} {:>36}", self.seq, self.boot);
        format!("{body} {:08x}\n", crc(&[body.as_bytes()])).into_bytes()
    }

    /// None for an empty lock file (format 1, or a new directory).
    pub fn decode(text: &[u8]) -> Result<Option<Head>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        let text = std::str::from_utf8(text).map_err(|_| "the head is not text")?;
        let line = text.strip_suffix('\n').ok_or("the head is cut short")?;
        let (body, sum) = line.rsplit_once(' ').ok_or("the head has no checksum")?;
        let sum = parse_crc(sum).ok_or("the head's checksum is not 8 lower-case hex digits")?;
        if crc(&[body.as_bytes()]) != sum {
            return Err("the head fails its checksum".into());
        }
        let fields: Vec<&str> = body.split_whitespace().collect();
        match fields[..] {
            [HEAD_MAGIC, format, seq, boot] if format == FORMAT.to_string() => Ok(Some(Head {
                seq: seq
                    .parse()
                    .map_err(|_| "the head's sequence number is not a number")?,
                boot: boot.to_string(),
            })),
            _ => Err(format!(
                "the head `{body}` is not `{HEAD_MAGIC} {FORMAT} <seq> <boot>`"
            )),
        }
    }
}

/// This boot's id; "unknown" where the kernel does not tell (then a head from
/// an earlier boot cannot be told from this one's, and is trusted).
pub(super) fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.contains(' '))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_heads_round_trip_and_a_flipped_bit_shows() {
        let snapshot = encode_snapshot(7, &State::default());
        assert_eq!(
            decode_snapshot(&snapshot).unwrap(),
            (State::default(), Some(7))
        );
        let mut bad = snapshot.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x01;
        assert!(decode_snapshot(&bad).unwrap_err().contains("checksum"));
        let head = Head::now(9);
        assert_eq!(Head::decode(&head.encode()).unwrap(), Some(head.clone()));
        assert_eq!(Head::now(123_456).encode().len(), head.encode().len());
        assert_eq!(Head::decode(b"").unwrap(), None);
    }
}
