//! Set and map elements straight over nfnetlink: for weft, the published-port
//! map elements, the one change made on every container start and stop,
//! without libnftables. A short-lived
//! process (the CNI plugin) saves loading libnftables and its libraries,
//! creating a context and fetching the ruleset cache (~1.7 ms measured here)
//! for a message of a hundred bytes.
//!
//! One batch (`NFNL_MSG_BATCH_BEGIN`, the element messages, `BATCH_END`) is
//! one transaction, as `nft -f` makes it; every element message asks for an
//! acknowledgement so that the first refusal is reported with its errno.
//! The socket is kept for the next call in the same namespace, for the
//! reason in [`super::kept`].
//!
//! Element encoding (as nft does it, see `nft --debug=netlink`): each field of
//! a concatenation occupies a multiple of 4 bytes; the protocol is one byte,
//! ports are big-endian u16, addresses in network order.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use super::kept::Kept;
use crate::error::{Error, Result};
use crate::netns::Netns;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;

/// One field of a concatenated set key or map value, typed as nft types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `inet_proto`: an IP protocol number (6 tcp, 17 udp, 132 sctp).
    Proto(u8),
    /// `ipv4_addr` or `ipv6_addr`.
    Addr(IpAddr),
    /// `inet_service`: a transport port.
    Port(u16),
}

impl Field {
    /// The field as the kernel holds it: each field of a concatenation
    /// occupies a multiple of 4 bytes, in network order.
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Field::Proto(number) => out.extend_from_slice(&[number, 0, 0, 0]),
            Field::Addr(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
            Field::Addr(IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
            Field::Port(port) => {
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
    }
}

/// nft's spelling: `tcp`, `10.9.0.3`, `8080`.
impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Field::Proto(n) if n == libc::IPPROTO_TCP as u8 => f.write_str("tcp"),
            Field::Proto(n) if n == libc::IPPROTO_UDP as u8 => f.write_str("udp"),
            Field::Proto(n) if n == libc::IPPROTO_SCTP as u8 => f.write_str("sctp"),
            Field::Proto(n) => write!(f, "{n}"),
            Field::Addr(ip) => write!(f, "{ip}"),
            Field::Port(port) => write!(f, "{port}"),
        }
    }
}

/// One element of a named set or map: `key` fields joined with `.`, and for
/// a map the `data` fields it maps to (empty for a set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetElement {
    /// The set or map the element belongs to.
    pub set: String,
    /// The key's fields, in the order of the set's type.
    pub key: Vec<Field>,
    /// The value's fields (maps only).
    pub data: Vec<Field>,
}

impl SetElement {
    fn encoded(fields: &[Field]) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        for field in fields {
            field.encode(&mut out);
        }
        out
    }
}

/// The element in nft's syntax, as `add element … { … }` takes it:
/// `tcp . 8080 : 10.9.0.3 . 80`. The same fields as the netlink encoding.
impl fmt::Display for SetElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |fields: &[Field]| {
            fields
                .iter()
                .map(Field::to_string)
                .collect::<Vec<_>>()
                .join(" . ")
        };
        f.write_str(&join(&self.key))?;
        if !self.data.is_empty() {
            write!(f, " : {}", join(&self.data))?;
        }
        Ok(())
    }
}

/// What to do with an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add it (a no-op when the same element is there; refused with
    /// EEXIST when the key maps to other data).
    Add,
    /// Delete it (refused with ENOENT when it is not there).
    Delete,
}

/// The socket kept from the last call (see the module comment).
///
/// Process-wide on purpose: the callers are plain functions given a
/// namespace, not a handle, and a daemon calls them from many tasks; one
/// socket per process is what saves the close's grace period on every
/// change, and [`super::settle`] must know at exit whether any
/// transaction was made anywhere in the process. The mutex also makes
/// transactions take turns, so two batches never interleave on one socket.
static KEPT: Mutex<Option<Kept<OwnedFd>>> = Mutex::new(None);

/// Applies `changes` to the sets of table `inet <table>` in `netns` as one
/// transaction. The outer error is a failure to talk to the kernel; the
/// inner one the kernel's refusal, as the errno's text (what nft prints too).
pub fn apply(
    netns: &Netns,
    table: &str,
    changes: &[(Change, &SetElement)],
) -> Result<std::result::Result<(), String>> {
    if changes.is_empty() {
        return Ok(Ok(()));
    }
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let socket = match kept.take().filter(|k| k.is_for(netns)) {
        Some(socket) => socket,
        None => Kept::new(netns, netns.run(open_socket)??)?,
    };
    let outcome = transact(socket.value.as_raw_fd(), table, changes);
    // A socket that failed mid-conversation may hold stray replies: not kept.
    if outcome.is_ok() {
        *kept = Some(socket);
    }
    outcome.map_err(|e| {
        Error::io(
            format!("nftables netlink in namespace {}", netns.label()),
            e,
        )
    })
}

/// Whether a socket is kept, i.e. a transaction may have been made.
pub(crate) fn in_use() -> bool {
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

fn open_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(Error::io(
            "open a netfilter netlink socket",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // Replies come at once; the timeout only bounds a kernel that never answers.
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(Error::io(
            "set the netfilter socket's timeout",
            io::Error::last_os_error(),
        ));
    }
    Ok(socket)
}

/// Sends the batch and waits for one acknowledgement per element message.
fn transact(
    fd: i32,
    table: &str,
    changes: &[(Change, &SetElement)],
) -> io::Result<std::result::Result<(), String>> {
    let base = sequence_base();
    let mut batch = Vec::with_capacity(64 + changes.len() * 96);
    push_message(
        &mut batch,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        base,
        0,
        |_| {},
    );
    for (i, (change, element)) in changes.iter().enumerate() {
        let (kind, flags) = match change {
            Change::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Change::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        push_message(
            &mut batch,
            kind,
            flags,
            base + 1 + i as u32,
            NFPROTO_INET,
            |m| {
                push_attr(m, NFTA_SET_ELEM_LIST_TABLE, &c_string(table));
                push_attr(m, NFTA_SET_ELEM_LIST_SET, &c_string(&element.set));
                nest(m, NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                    nest(m, NFTA_LIST_ELEM, |m| {
                        nest(m, NFTA_SET_ELEM_KEY, |m| {
                            push_attr(m, NFTA_DATA_VALUE, &SetElement::encoded(&element.key))
                        });
                        if *change == Change::Add && !element.data.is_empty() {
                            nest(m, NFTA_SET_ELEM_DATA, |m| {
                                push_attr(m, NFTA_DATA_VALUE, &SetElement::encoded(&element.data))
                            });
                        }
                    });
                });
            },
        );
    }
    let end = base + 1 + changes.len() as u32;
    push_message(
        &mut batch,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        0,
        |_| {},
    );

    // SAFETY: a valid socket; the kernel's address (all zero but the family).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd,
            batch.as_ptr().cast(),
            batch.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut waiting = changes.len();
    let mut refusal: Option<i32> = None;
    let mut buf = vec![0u8; 16 * 1024];
    while waiting > 0 {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
            if len < 16 || len > rest.len() {
                break;
            }
            if kind == NLMSG_ERROR && (base..=end).contains(&seq) && len >= 20 {
                let errno = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                if errno != 0 && refusal.is_none() {
                    refusal = Some(-errno);
                }
                if seq == base || seq == end {
                    // The batch itself was refused: no more replies come.
                    waiting = 0;
                } else {
                    waiting = waiting.saturating_sub(1);
                }
            }
            rest = &rest[align4(len).min(rest.len())..];
        }
    }
    Ok(match refusal {
        None => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno).to_string()),
    })
}

/// Sequence numbers distinct from one call to the next, so that a reply
/// left over from an earlier call is never taken for this one's.
fn sequence_base() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Process-wide because the kept socket is: any call may reuse the socket
    // of an earlier one, so the ranges must not repeat across calls.
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1 << 16, Ordering::Relaxed)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// nlmsghdr + nfgenmsg, then what `body` appends; the length is patched in.
fn push_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, res_id (big-endian): the subsystem for batches.
    let res_id: u16 = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
        NFNL_SUBSYS_NFTABLES
    } else {
        0
    };
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

fn nest(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_element(host_ip: Option<&str>, container_ip: &str) -> SetElement {
        let mut key = vec![Field::Proto(6)];
        key.extend(host_ip.map(|h| Field::Addr(h.parse().unwrap())));
        key.push(Field::Port(8040));
        SetElement {
            set: "m".into(),
            key,
            data: vec![Field::Addr(container_ip.parse().unwrap()), Field::Port(80)],
        }
    }

    #[test]
    fn elements_are_encoded_as_nft_encodes_them() {
        // `nft --debug=netlink add element inet t a { tcp . 8040 : 10.90.0.9 . 80 }`
        // prints the 32-bit words in host order: element 00000006 0000681f : 09005a0a 00005000
        let e = port_element(None, "10.90.0.9");
        assert_eq!(SetElement::encoded(&e.key), [6, 0, 0, 0, 0x1f, 0x68, 0, 0]);
        assert_eq!(SetElement::encoded(&e.data), [10, 90, 0, 9, 0, 80, 0, 0]);
        let e = port_element(Some("fd00::1"), "fd00::2");
        let key = SetElement::encoded(&e.key);
        assert_eq!(key.len(), 4 + 16 + 4);
        assert_eq!(&key[4..6], &[0xfd, 0]);
        assert_eq!(SetElement::encoded(&e.data).len(), 16 + 4);
    }

    #[test]
    fn elements_print_in_nft_syntax_from_the_same_fields() {
        assert_eq!(
            port_element(Some("198.18.0.1"), "10.9.0.3").to_string(),
            "tcp . 198.18.0.1 . 8040 : 10.9.0.3 . 80"
        );
        let set = SetElement {
            set: "s".into(),
            key: vec![Field::Proto(132), Field::Proto(47), Field::Port(9)],
            data: vec![],
        };
        assert_eq!(set.to_string(), "sctp . 47 . 9");
    }

    #[test]
    fn a_batch_is_framed_with_lengths_and_nesting() {
        let mut m = Vec::new();
        push_message(&mut m, 0x0a0c, NLM_F_REQUEST, 7, NFPROTO_INET, |m| {
            push_attr(m, NFTA_SET_ELEM_LIST_TABLE, &c_string("weft"));
            nest(m, NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                push_attr(m, NFTA_DATA_VALUE, &[1, 2, 3])
            });
        });
        // 16 header + 4 nfgenmsg + (4+5 → 12) + (4 + (4+3 → 8)) = 44
        assert_eq!(m.len(), 44);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 44);
        assert_eq!(m[16], NFPROTO_INET);
        let nested = u16::from_ne_bytes(m[34..36].try_into().unwrap());
        assert_eq!(nested, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED);
        assert_eq!(u16::from_ne_bytes(m[32..34].try_into().unwrap()), 12);
    }
}
