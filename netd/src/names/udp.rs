//! DNS over UDP: one thread per socket, outside the async runtime, that
//! takes every query queued on the socket with one recvmmsg(2), answers
//! them and sends the answers with one sendmmsg(2). Under load that is two
//! system calls and at most one sleep per batch, where a task on the
//! runtime paid a receive, a send and often a wake-up of the runtime per
//! query (over a quarter of the server's CPU went to switching; the
//! figures are in docs/dns.md). Forwarded queries
//! still run as tasks on the runtime, so a slow upstream never holds up
//! the neighbours' lookups.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinSet;

use super::query::{Outcome, Responder, Transport};

/// Queries taken from the socket in one call at most.
const BATCH: usize = 32;
/// Bytes kept of each query. A query is a header, one question and an OPT
/// record: a few hundred bytes. A longer datagram arrives cut, fails to
/// decode and is answered FORMERR, as a malformed one.
const SLOT: usize = 4096;
/// How long a receive waits before the thread looks at its stop flag.
/// shutdown(2) wakes it at once when the server stops; this is the fallback.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Decoding and encoding one message needs little; the default 2 MiB is
/// address space the thread never uses.
const STACK: usize = 256 * 1024;

/// A socket served by its own thread; dropping it stops the thread and
/// closes the socket before returning, so that the port is free again.
#[derive(Debug)]
pub(crate) struct UdpServer {
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Serves `socket` (bound, in any namespace) from a new thread;
    /// forwarded queries run on `runtime`.
    pub(crate) fn start(
        socket: UdpSocket,
        responder: Arc<Responder>,
        runtime: Handle,
    ) -> io::Result<UdpServer> {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(IDLE_CHECK))?;
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("netd-dns-udp".into())
            .stack_size(STACK)
            .spawn({
                let (socket, stop) = (socket.clone(), stop.clone());
                move || serve(socket, &responder, &runtime, &stop)
            })?;
        Ok(UdpServer {
            socket,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Linux wakes a receiver blocked on a UDP socket that is shut down
        // (the call itself says ENOTCONN on an unconnected socket, and
        // still does it); the thread then sees the flag and returns.
        // SAFETY: shutdown(2) on a descriptor this struct keeps open.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("DNS server: the UDP thread panicked");
            }
        }
    }
}

fn serve(socket: Arc<UdpSocket>, responder: &Arc<Responder>, runtime: &Handle, stop: &AtomicBool) {
    let mut batch = Batch::new();
    // Dropped when the thread returns, which aborts the forwarded queries.
    let mut forwards = JoinSet::new();
    loop {
        let received = batch.receive(&socket);
        if stop.load(Ordering::Acquire) {
            return;
        }
        while forwards.try_join_next().is_some() {}
        match received {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!("DNS server: receive: {e}");
                // An error that persists must not spin the thread.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        for i in 0..batch.received {
            let Some(source) = batch.source(i) else {
                continue;
            };
            let (query, reply) = batch.slot(i);
            match responder.answer_into(query, source, Transport::Udp, reply) {
                Outcome::Answered => batch.answered(i),
                Outcome::Dropped => {}
                Outcome::Forward(pending) => {
                    let to = batch.peer(i);
                    let socket = Arc::downgrade(&socket);
                    let responder = responder.clone();
                    forwards.spawn_on(
                        async move {
                            let bytes = responder.forward(pending).await;
                            send_one(&socket, &bytes, &to);
                        },
                        runtime,
                    );
                }
            }
        }
        batch.send(&socket);
    }
}

/// A client's address as the kernel gave it, to answer to.
#[derive(Clone, Copy)]
struct Peer {
    address: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// Buffers for one recvmmsg and the sendmmsg of its answers, allocated
/// once per thread. The kernel's headers point into them, so they are
/// filled in right before each call.
struct Batch {
    queries: Box<[[u8; SLOT]]>,
    lengths: [usize; BATCH],
    peers: [Peer; BATCH],
    received: usize,
    /// The answer to each query, written in place: the buffers grow to
    /// the largest answer once and are reused.
    replies: Box<[Vec<u8>]>,
    /// The queries whose answer is to be sent.
    answered: Vec<usize>,
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

impl Batch {
    fn new() -> Batch {
        Batch {
            queries: vec![[0u8; SLOT]; BATCH].into_boxed_slice(),
            lengths: [0; BATCH],
            peers: [Peer {
                // SAFETY: all-zero bytes are a valid sockaddr_storage.
                address: unsafe { zeroed() },
                len: 0,
            }; BATCH],
            received: 0,
            replies: vec![Vec::new(); BATCH].into_boxed_slice(),
            answered: Vec::with_capacity(BATCH),
            // SAFETY: all-zero bytes are valid for these plain C structs; the
            // pointers in them are set before each call.
            iovecs: unsafe { zeroed() },
            // SAFETY: as above.
            headers: unsafe { zeroed() },
        }
    }

    /// Waits for a query (up to IDLE_CHECK), then takes it and whatever
    /// else is queued, up to BATCH.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received = 0;
        self.answered.clear();
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.queries[i].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            let header = &mut self.headers[i];
            header.msg_hdr.msg_name =
                (&mut self.peers[i].address as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: each header points at a buffer, an address and an iovec
        // of `self`, alive and unmoved for the duration of the call.
        // MSG_WAITFORONE: block for the first datagram only.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        for i in 0..self.received {
            self.lengths[i] = (self.headers[i].msg_len as usize).min(SLOT);
            self.peers[i].len = self.headers[i].msg_hdr.msg_namelen;
        }
        Ok(self.received)
    }

    /// Query `i` and the buffer for its answer.
    fn slot(&mut self, i: usize) -> (&[u8], &mut Vec<u8>) {
        (&self.queries[i][..self.lengths[i]], &mut self.replies[i])
    }

    fn peer(&self, i: usize) -> Peer {
        self.peers[i]
    }

    /// The address query `i` came from.
    fn source(&self, i: usize) -> Option<IpAddr> {
        let Peer { address, len } = &self.peers[i];
        match i32::from(address.ss_family) {
            libc::AF_INET if *len as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin: &libc::sockaddr_in =
                    unsafe { &*(address as *const libc::sockaddr_storage).cast() };
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 if *len as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6: &libc::sockaddr_in6 =
                    unsafe { &*(address as *const libc::sockaddr_storage).cast() };
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }

    /// Queues the answer written for query `i`.
    fn answered(&mut self, i: usize) {
        if !self.replies[i].is_empty() {
            self.answered.push(i);
        }
    }

    /// Sends the queued answers. One the kernel refuses is skipped (and
    /// logged); a full send buffer drops the rest: the clients ask again.
    fn send(&mut self, socket: &UdpSocket) {
        let count = self.answered.len();
        for (k, &i) in self.answered.iter().enumerate() {
            let reply = &self.replies[i];
            self.iovecs[k] = libc::iovec {
                iov_base: reply.as_ptr().cast_mut().cast(),
                iov_len: reply.len(),
            };
            let header = &mut self.headers[k];
            header.msg_hdr.msg_name =
                (&mut self.peers[i].address as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = self.peers[i].len;
            header.msg_hdr.msg_iov = &mut self.iovecs[k];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
        }
        let mut at = 0;
        while at < count {
            // SAFETY: headers at..count point at answers, addresses and
            // iovecs of `self`, alive and unmoved for the duration of the
            // call; the kernel only reads the answers.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers[at..].as_mut_ptr(),
                    (count - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent > 0 {
                at += sent as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted if sent < 0 => {}
                io::ErrorKind::WouldBlock => {
                    tracing::debug!(
                        "DNS server: send buffer full, {} answers dropped",
                        count - at
                    );
                    break;
                }
                _ => {
                    tracing::debug!("DNS server: an answer was refused: {e}");
                    at += 1;
                }
            }
        }
        // An answer cut for UDP was first written whole: a buffer that
        // grew past a query slot is not kept at that size.
        for &i in &self.answered {
            if self.replies[i].capacity() > SLOT {
                self.replies[i] = Vec::new();
            }
        }
    }
}

/// Sends a forwarded query's answer, unless the server has stopped since.
fn send_one(socket: &Weak<UdpSocket>, bytes: &[u8], to: &Peer) {
    let Some(socket) = socket.upgrade() else {
        return;
    };
    if bytes.is_empty() {
        return;
    }
    // SAFETY: `bytes` and `to` are valid for the stated lengths during the
    // call; MSG_DONTWAIT keeps the runtime's thread from blocking.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT,
            (&to.address as *const libc::sockaddr_storage).cast(),
            to.len,
        )
    };
    if sent < 0 {
        tracing::debug!(
            "DNS server: a forwarded answer: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
#[path = "udp_tests.rs"]
mod tests;
