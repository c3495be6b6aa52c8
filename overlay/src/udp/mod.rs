//! The device's one UDP socket, with batched I/O (recvmmsg/sendmmsg) into
//! buffers allocated once, and receive/send buffers sized past the
//! namespace's `rmem_max` with SO_RCVBUFFORCE/SO_SNDBUFFORCE.
//!
//! Where the kernel has them, UDP GSO and GRO cut the system calls further:
//! a run of equal-sized datagrams to one endpoint leaves as one message with
//! a UDP_SEGMENT control message (the kernel cuts it, or hands it whole to a
//! receiver on the same host), and with UDP_GRO on, one received message may
//! hold many datagrams of the size its UDP_GRO control message gives.
//!
//! The socket is dual-stack (`[::]`, IPV6_V6ONLY off) when IPv6 is available:
//! IPv4 peers then appear as v4-mapped addresses, which this module converts
//! in both directions so callers only ever see plain IPv4 endpoints.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Room for one control message carrying an int (aligned to cmsghdr).
const CMSG_BUF: usize = 32;

mod batch;
pub use batch::{Flushed, RecvBatch, SendBatch};

/// Why the device's UDP socket could not be made or set up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// socket(2) failed.
    #[error("create the UDP socket: {0}")]
    Socket(#[source] io::Error),
    /// The port could not be bound.
    #[error("bind UDP port {port}: {source} (is another WireGuard listening there?)")]
    Bind {
        /// The port asked for.
        port: u16,
        /// bind(2)'s error.
        #[source]
        source: io::Error,
    },
    /// A socket option could not be set.
    #[error("set {option} on the UDP socket: {source}")]
    Option {
        /// The option, e.g. `SO_RCVBUF` or `UDP_GRO`.
        option: &'static str,
        /// setsockopt(2)'s error.
        #[source]
        source: io::Error,
    },
}

/// A non-blocking UDP socket, bound in the namespace it was created in.
#[derive(Debug)]
pub struct UdpSocket {
    fd: OwnedFd,
    /// True for a dual-stack IPv6 socket (IPv4 peers use mapped addresses).
    v6: bool,
    port: u16,
    /// UDP_SEGMENT works (cleared when the kernel refuses a GSO send).
    gso: AtomicBool,
    /// UDP_GRO is on: received messages may hold several datagrams.
    gro: bool,
}

impl UdpSocket {
    /// Binds `port` (0: any) on all addresses, dual-stack when the kernel has
    /// IPv6, with `buffer` bytes of receive and send buffer.
    pub fn bind(port: u16, buffer: usize) -> Result<UdpSocket, UdpError> {
        let (fd, v6) = match new_socket(libc::AF_INET6) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                (new_socket(libc::AF_INET).map_err(UdpError::Socket)?, false)
            }
            Err(e) => return Err(UdpError::Socket(e)),
        };
        let raw = fd.as_raw_fd();
        if v6 {
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0, "IPV6_V6ONLY")?;
        }
        set_buffer(
            raw,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            buffer,
            "SO_RCVBUF",
        )?;
        set_buffer(
            raw,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            buffer,
            "SO_SNDBUF",
        )?;
        let any: SocketAddr = if v6 {
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
        } else {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
        };
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = write_sockaddr(any, v6, &mut storage);
        // SAFETY: `storage` holds a sockaddr of `len` bytes matching the socket's family.
        let rc =
            unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if rc < 0 {
            return Err(UdpError::Bind {
                port,
                source: io::Error::last_os_error(),
            });
        }
        let bound = local_port(raw).map_err(|source| UdpError::Option {
            option: "getsockname",
            source,
        })?;
        // Probes: both options exist since Linux 5.0; older kernels say ENOPROTOOPT.
        let gso = set_int(raw, libc::SOL_UDP, libc::UDP_SEGMENT, 0, "UDP_SEGMENT").is_ok();
        let gro = set_int(raw, libc::SOL_UDP, libc::UDP_GRO, 1, "UDP_GRO").is_ok();
        Ok(UdpSocket {
            fd,
            v6,
            port: bound,
            gso: AtomicBool::new(gso),
            gro,
        })
    }

    /// Whether sends may carry several datagrams (UDP GSO).
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether receives may carry several datagrams (UDP GRO).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// The port actually bound (useful when binding port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one datagram (for the rare paths: handshakes, cookies, timers).
    pub fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = write_sockaddr(to, self.v6, &mut storage);
        loop {
            // SAFETY: `data` is valid for its length; `storage` holds `len` bytes of sockaddr.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&storage as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    wait_writable(self.fd.as_raw_fd())?;
                    continue;
                }
                _ => return Err(err),
            }
        }
    }

    /// The receive buffer the kernel granted, in bytes (it doubles what was asked
    /// for, to account for its bookkeeping).
    pub fn receive_buffer(&self) -> io::Result<usize> {
        get_int(self.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).map(|v| v as usize)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn new_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    option: &'static str,
) -> Result<(), UdpError> {
    // SAFETY: the option value is a c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(UdpError::Option {
            option,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The FORCE variant passes `rmem_max`/`wmem_max` with CAP_NET_ADMIN; without
/// it, fall back to the plain option (capped by the sysctl).
fn set_buffer(
    fd: RawFd,
    force: libc::c_int,
    plain: libc::c_int,
    bytes: usize,
    option: &'static str,
) -> Result<(), UdpError> {
    let value = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    match set_int(fd, libc::SOL_SOCKET, force, value, option) {
        Ok(()) => Ok(()),
        Err(UdpError::Option { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
            tracing::warn!(
                "{option}: no CAP_NET_ADMIN, the buffer stays capped by net.core.*mem_max"
            );
            set_int(fd, libc::SOL_SOCKET, plain, value, option)
        }
        Err(e) => Err(e),
    }
}

fn local_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    read_sockaddr(&storage, len)
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("getsockname returned an unknown address family"))
}

fn wait_writable(fd: RawFd) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a bounded wait of 100 ms.
    let rc = unsafe { libc::poll(&mut pfd, 1, 100) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// Writes `addr` as the socket's family expects; IPv4 becomes v4-mapped on a
/// dual-stack socket. Returns the length to pass to the kernel.
pub(crate) fn write_sockaddr(
    addr: SocketAddr,
    v6_socket: bool,
    out: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    let addr = match (addr, v6_socket) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (a, _) => a,
    };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a sockaddr the kernel filled in; v4-mapped IPv6 becomes plain IPv4.
pub(crate) fn read_sockaddr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

impl UdpSocket {
    /// True when IPv4 endpoints must be written v4-mapped (dual-stack socket).
    pub fn is_dual_stack(&self) -> bool {
        self.v6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_unmap() {
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut s: libc::sockaddr_storage = unsafe { zeroed() };
        for (addr, v6) in [
            ("198.18.0.2:51820", false),
            ("198.18.0.2:51820", true),
            ("[fd00::2]:51820", true),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let len = write_sockaddr(addr, v6, &mut s);
            assert_eq!(read_sockaddr(&s, len), Some(addr), "{addr} v6={v6}");
        }
        let len = write_sockaddr("1.2.3.4:5".parse().unwrap(), true, &mut s);
        assert_eq!(s.ss_family as libc::c_int, libc::AF_INET6);
        assert_eq!(len as usize, size_of::<libc::sockaddr_in6>());
    }

    #[test]
    fn batches_carry_datagrams_over_loopback() {
        let a = UdpSocket::bind(0, 1 << 20).unwrap();
        let b = UdpSocket::bind(0, 1 << 20).unwrap();
        let to: SocketAddr = format!("127.0.0.1:{}", b.port()).parse().unwrap();
        // Three equal datagrams and a shorter one: one GSO message where the
        // kernel has it; then one more for another port: a second message.
        let mut out = SendBatch::new(4, 4096);
        for i in 0..4u8 {
            let len = if i == 3 { 2 } else { 3 };
            out.next_slot()[..len].fill(i);
            out.commit(len, to, a.gso());
        }
        let other: SocketAddr = format!("127.0.0.1:{}", a.port()).parse().unwrap();
        out.next_slot()[..1].fill(9);
        out.commit(1, other, a.gso());
        assert_eq!(out.messages(), if a.gso() { 2 } else { 5 });
        assert_eq!(out.flush(&a), Flushed { sent: 5, failed: 0 });
        assert!(out.is_empty());
        let mut input = RecvBatch::new(8, 65536);
        let mut got = Vec::new();
        for _ in 0..100 {
            input.recv(&b).unwrap();
            for i in 0..input.len() {
                let (data, from, size) = input.get(i).unwrap();
                assert_eq!(from.port(), a.port());
                assert!(from.is_ipv4(), "{from}");
                got.extend(data.chunks(size).map(|d| d.to_vec()));
            }
            if got.len() == 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, vec![vec![0; 3], vec![1; 3], vec![2; 3], vec![3; 2]]);
    }
}
