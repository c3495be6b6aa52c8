//! Traffic through address translation (published ports, masquerade): the
//! client connects to one address, the server listens on another, and the
//! server reports the peer address it saw. Bounded in time like traffic.rs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plumb::Netns;

const PAYLOAD: &[u8] = b"weft forwarded payload";

/// TCP: a server on `listen` inside `server`, a client in `client` connecting
/// to `connect` (e.g. a published host port). Checks the payload comes back
/// echoed and returns the peer address the server saw. Fails after ~3 s.
pub fn tcp_via(
    server: &Netns,
    listen: SocketAddr,
    client: &Netns,
    connect: SocketAddr,
) -> Result<SocketAddr> {
    let listener = server
        .run(move || TcpListener::bind(listen))?
        .with_context(|| format!("listen on {listen} in {}", server.label()))?;
    stream_via(listener, client, connect, |target| {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    })
}

/// Serves one connection on `listener` (non-blocking accept with a deadline)
/// while `connect` runs inside `client`.
fn stream_via(
    listener: TcpListener,
    client: &Netns,
    target: SocketAddr,
    connect: impl FnOnce(SocketAddr) -> std::io::Result<TcpStream> + Send,
) -> Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let served = std::thread::spawn(move || -> Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(4);
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("no connection arrived");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        conn.write_all(&buf[..n])?;
        Ok(peer)
    });
    let exchanged = client
        .run(move || -> Result<()> {
            let mut stream = connect(target).with_context(|| format!("connect to {target}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(PAYLOAD)?;
            let mut back = [0u8; 64];
            let n = stream.read(&mut back)?;
            if &back[..n] != PAYLOAD {
                bail!("echo from {target} differs: {:?}", &back[..n]);
            }
            Ok(())
        })?
        .with_context(|| format!("from {}", client.label()));
    let peer = served
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    exchanged?;
    peer
}

/// UDP: a server on `listen` inside `server` echoes one datagram that a
/// client in `client` sends to `connect`. Returns the peer address the server
/// saw. Up to 3 tries, 1 s each.
pub fn udp_via(
    server: &Netns,
    listen: SocketAddr,
    client: &Netns,
    connect: SocketAddr,
) -> Result<SocketAddr> {
    let socket = server
        .run(move || UdpSocket::bind(listen))?
        .with_context(|| format!("bind UDP {listen} in {}", server.label()))?;
    socket.set_read_timeout(Some(Duration::from_millis(3500)))?;
    let echo = std::thread::spawn(move || -> Result<SocketAddr> {
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf).context("no datagram arrived")?;
        for _ in 0..3 {
            socket.send_to(&buf[..n], from)?;
        }
        Ok(from)
    });
    let any: SocketAddr = if connect.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = client.run(move || UdpSocket::bind(any))??;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut ok = false;
    for _ in 0..3 {
        sock.send_to(PAYLOAD, connect)?;
        let mut back = [0u8; 64];
        if let Ok((n, _)) = sock.recv_from(&mut back) {
            ok = &back[..n] == PAYLOAD;
            break;
        }
    }
    let seen = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))?;
    if !ok {
        bail!("no UDP echo via {connect} to {}", client.label());
    }
    seen
}

/// True when this kernel can open SCTP sockets (CONFIG_IP_SCTP).
pub fn sctp_available() -> bool {
    sctp_socket(false).is_ok()
}

/// Whether to run a test's SCTP part (`what`). This machine's kernel may lack
/// SCTP: the part is then skipped with a message (the whole of it runs in a
/// `vm_` test under scripts/vm-test); in the test VM a missing SCTP fails.
pub fn sctp_part(what: &str) -> bool {
    if sctp_available() {
        return true;
    }
    assert!(
        !crate::in_vm(),
        "{what}: the test VM's kernel has no SCTP sockets"
    );
    eprintln!("SKIPPED {what}: this kernel has no SCTP sockets (CONFIG_IP_SCTP); the vm_ tests cover it under scripts/vm-test");
    false
}

fn sctp_socket(ipv6: bool) -> std::io::Result<OwnedFd> {
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket() takes plain integers and returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Converts `addr` into the C socket address the kernel reads.
fn raw_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// SCTP (one-to-one style sockets): like `tcp_via`. Call `sctp_available` first.
pub fn sctp_via(
    server: &Netns,
    listen: SocketAddr,
    client: &Netns,
    connect: SocketAddr,
) -> Result<SocketAddr> {
    let listener = server
        .run(move || -> std::io::Result<TcpListener> {
            let fd = sctp_socket(listen.is_ipv6())?;
            let (addr, len) = raw_sockaddr(listen);
            check(
                // SAFETY: fd is a valid socket; addr holds `len` initialised bytes.
                unsafe {
                    libc::bind(
                        std::os::fd::AsRawFd::as_raw_fd(&fd),
                        &addr as *const _ as *const libc::sockaddr,
                        len,
                    )
                },
                "bind",
            )?;
            check(
                // SAFETY: fd is a valid, bound socket.
                unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 4) },
                "listen",
            )?;
            // A one-to-one SCTP socket answers accept/read/write like TCP, the
            // only calls std's TcpListener and TcpStream make on it here.
            Ok(TcpListener::from(fd))
        })?
        .with_context(|| format!("SCTP listen on {listen} in {}", server.label()))?;
    stream_via(listener, client, connect, |target| {
        let fd = sctp_socket(target.is_ipv6())?;
        // A blocking SCTP connect retries INIT for minutes: bound it.
        let timeout = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        check(
            // SAFETY: fd is a valid socket; timeout is a timeval of the given size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    &timeout as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            },
            "set the connect timeout",
        )?;
        let (addr, len) = raw_sockaddr(target);
        check(
            // SAFETY: fd is a valid socket; addr holds `len` initialised bytes.
            unsafe {
                libc::connect(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &addr as *const _ as *const libc::sockaddr,
                    len,
                )
            },
            "connect",
        )?;
        Ok(TcpStream::from(fd))
    })
}
