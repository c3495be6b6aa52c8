//! Batches for the device's socket: recvmmsg into buffers allocated once
//! (with UDP GRO, one message may hold many datagrams), and sendmmsg of runs
//! of equal-sized datagrams as single UDP GSO messages.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::{read_sockaddr, wait_writable, write_sockaddr, UdpSocket, CMSG_BUF};

/// Datagrams per GSO message (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per GSO message: the UDP length field, less the headers.
const GSO_MAX_BYTES: usize = 65_000;

/// Buffers for receiving up to `capacity` messages with one recvmmsg. With
/// UDP GRO, one message may hold several datagrams: `get` says their size.
pub struct RecvBatch {
    slot: usize,
    data: Vec<u8>,
    lens: Vec<usize>,
    segments: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
    count: usize,
}

impl RecvBatch {
    /// `slot` bytes per message: 65 536 to take whatever GRO assembles.
    pub fn new(capacity: usize, slot: usize) -> RecvBatch {
        RecvBatch {
            slot,
            data: vec![0u8; capacity * slot],
            lens: vec![0; capacity],
            segments: vec![0; capacity],
            // SAFETY: all-zero bytes are valid for these plain C structs.
            addrs: vec![unsafe { zeroed() }; capacity],
            // SAFETY: as above; the pointers are filled in before each use.
            iovs: vec![unsafe { zeroed() }; capacity],
            // SAFETY: as above.
            hdrs: vec![unsafe { zeroed() }; capacity],
            cmsgs: vec![[0; CMSG_BUF / 8]; capacity],
            count: 0,
        }
    }

    /// Receives what is queued (up to capacity) without blocking. Returns the
    /// number of messages, 0 when none were waiting.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let capacity = self.lens.len();
        let base = self.data.as_mut_ptr();
        for i in 0..capacity {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot i lies within `data` (capacity * slot bytes).
                iov_base: unsafe { base.add(i * self.slot) }.cast(),
                iov_len: self.slot,
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            hdr.msg_controllen = CMSG_BUF as _;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        self.count = 0;
        loop {
            // SAFETY: every header points at buffers owned by `self` that stay
            // alive and unmoved for the duration of the call.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    capacity as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                let n = n as usize;
                for i in 0..n {
                    let len = (self.hdrs[i].msg_len as usize).min(self.slot);
                    self.lens[i] = len;
                    self.segments[i] = match gro_segment(&self.hdrs[i].msg_hdr) {
                        Some(size) if size > 0 => size,
                        _ => len.max(1),
                    };
                }
                self.count = n;
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(err),
            }
        }
    }

    /// Messages the last `recv` received.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the last `recv` received nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Message `i` of the last `recv`, who sent it, and the size of the
    /// datagrams in it (all but the last have exactly that size).
    #[inline]
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, usize)> {
        if i >= self.count {
            return None;
        }
        let from = read_sockaddr(&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen)?;
        let start = i * self.slot;
        Some((
            &self.data[start..start + self.lens[i]],
            from,
            self.segments[i],
        ))
    }
}

/// The UDP_GRO control message's segment size, if the kernel sent one.
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in,
    // bounded by `msg_controllen`; `hdr` points at our own live buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                return usize::try_from(std::ptr::read_unaligned(data)).ok();
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// One message of a send batch: a run of datagrams to one endpoint, all of
/// `segment` bytes but the last (which may be shorter and ends the run).
#[derive(Debug, Clone, Copy)]
struct Message {
    start: usize,
    len: usize,
    segment: usize,
    datagrams: usize,
    to: SocketAddr,
    /// More datagrams may join.
    open: bool,
}

/// Buffers for sending datagrams with one sendmmsg; with GSO, runs of
/// equal-sized datagrams to one endpoint go as one message each.
pub struct SendBatch {
    data: Vec<u8>,
    /// End of the last datagram in `data`.
    pos: usize,
    messages: Vec<Message>,
    capacity: usize,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
}

/// How a flush went, in datagrams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams it refused (counted as send failures).
    pub failed: usize,
}

impl SendBatch {
    /// Up to `capacity` messages in `bytes` bytes of datagrams.
    pub fn new(capacity: usize, bytes: usize) -> SendBatch {
        SendBatch {
            data: vec![0u8; bytes],
            pos: 0,
            messages: Vec::with_capacity(capacity),
            capacity,
            // SAFETY: all-zero bytes are valid for these plain C structs.
            addrs: vec![unsafe { zeroed() }; capacity],
            // SAFETY: as above; the pointers are filled in before each use.
            iovs: vec![unsafe { zeroed() }; capacity],
            // SAFETY: as above.
            hdrs: vec![unsafe { zeroed() }; capacity],
            cmsgs: vec![[0; CMSG_BUF / 8]; capacity],
        }
    }

    /// True when a datagram of `len` bytes still fits (in a new message, at worst).
    #[inline]
    pub fn has_room(&self, len: usize) -> bool {
        self.messages.len() < self.capacity && self.pos + len <= self.data.len()
    }

    /// True when nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Messages queued (each one or more datagrams).
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// The buffer the next datagram is built in (check `has_room` first).
    #[inline]
    pub fn next_slot(&mut self) -> &mut [u8] {
        &mut self.data[self.pos..]
    }

    /// Queues the first `len` bytes of `next_slot()` for `to`, joining the
    /// last message when GSO can carry them together.
    #[inline]
    pub fn commit(&mut self, len: usize, to: SocketAddr, gso: bool) {
        debug_assert!(self.pos + len <= self.data.len());
        if gso {
            if let Some(last) = self.messages.last_mut() {
                if last.open
                    && last.to == to
                    && len <= last.segment
                    && last.datagrams < GSO_MAX_SEGMENTS
                    && last.len + len <= GSO_MAX_BYTES
                {
                    last.len += len;
                    last.datagrams += 1;
                    last.open = len == last.segment;
                    self.pos += len;
                    return;
                }
            }
        }
        debug_assert!(self.messages.len() < self.capacity);
        self.messages.push(Message {
            start: self.pos,
            len,
            segment: len,
            datagrams: 1,
            to,
            open: true,
        });
        self.pos += len;
    }

    /// Sends everything queued. Datagrams the kernel refuses (unreachable
    /// endpoint, …) are skipped and counted as failed; a full send buffer is
    /// waited out. A kernel that refuses GSO gets the datagrams one by one,
    /// and no more GSO from this socket.
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut done = Flushed::default();
        let base = self.data.as_mut_ptr();
        for (i, m) in self.messages.iter().enumerate() {
            self.iovs[i] = libc::iovec {
                // SAFETY: the message lies within `data`.
                iov_base: unsafe { base.add(m.start) }.cast(),
                iov_len: m.len,
            };
            let namelen = write_sockaddr(m.to, socket.v6, &mut self.addrs[i]);
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = namelen;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_flags = 0;
            if m.datagrams > 1 {
                hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: the control buffer (CMSG_BUF bytes, 8-aligned) holds
                // one cmsghdr with a u16 after it; `hdr` points at it.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<u16>(),
                        m.segment as u16,
                    );
                }
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
        }
        let count = self.messages.len();
        let mut at = 0;
        while at < count {
            // SAFETY: headers at..count point at buffers owned by `self`, alive
            // and unmoved for the duration of the call.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.hdrs[at..].as_mut_ptr(),
                    (count - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                for m in &self.messages[at..at + n as usize] {
                    done.sent += m.datagrams;
                }
                at += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            let m = self.messages[at];
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    if wait_writable(socket.as_raw_fd()).is_err() {
                        for m in &self.messages[at..] {
                            done.failed += m.datagrams;
                        }
                        break;
                    }
                }
                _ if m.datagrams > 1
                    && matches!(
                        err.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                    ) =>
                {
                    if err.raw_os_error() == Some(libc::EMSGSIZE) {
                        // The datagrams exceed this path's MTU: GSO cannot
                        // cut them, the kernel's fragmentation can. Other
                        // paths may still take GSO.
                        tracing::debug!("UDP GSO to {}: {err}; sending one by one", m.to);
                    } else {
                        // No GSO at all (no checksum offload, or an old kernel).
                        socket.gso.store(false, Ordering::Relaxed);
                        tracing::debug!("UDP GSO refused ({err}); sending one by one");
                    }
                    let bytes = &self.data[m.start..m.start + m.len];
                    for d in bytes.chunks(m.segment) {
                        match socket.send_to(d, m.to) {
                            Ok(()) => done.sent += 1,
                            Err(_) => done.failed += 1,
                        }
                    }
                    at += 1;
                }
                _ => {
                    // The first queued message was refused: skip it.
                    done.failed += m.datagrams;
                    at += 1;
                }
            }
        }
        self.messages.clear();
        self.pos = 0;
        done
    }
}
