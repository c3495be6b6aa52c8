//! Traffic checks between namespaces, each bounded in count and time.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use plumb::Netns;

use crate::exec::run_in;

/// One ICMP echo from `from` to `to` (up to 3 tries, 1 s each).
pub fn ping(from: &Netns, to: IpAddr) -> Result<bool> {
    let to = to.to_string();
    let family = if to.contains(':') { "-6" } else { "-4" };
    let out = run_in(
        from,
        "ping",
        &[family, "-c", "1", "-W", "1", "-w", "3", &to],
        Duration::from_secs(6),
    )?;
    Ok(out.success)
}

/// Like `ping`, for an IPv6 address given as text.
pub fn ping6(from: &Netns, to: &str) -> Result<bool> {
    ping(from, to.parse().context("IPv6 address")?)
}

/// Opens a TCP server on `addr` inside `server`, connects from `client`, and
/// checks a payload comes back echoed. Fails after 5 s.
pub fn tcp_exchange(server: &Netns, addr: SocketAddr, client: &Netns) -> Result<()> {
    let listener = server
        .run(move || TcpListener::bind(addr))?
        .with_context(|| format!("listen on {addr} in {}", server.label()))?;
    let port = listener.local_addr()?.port();
    let target = SocketAddr::new(addr.ip(), port);
    let echo = std::thread::spawn(move || -> Result<()> {
        listener.set_nonblocking(false)?;
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        conn.write_all(&buf[..n])?;
        Ok(())
    });
    let payload = b"weft test payload";
    let stream = client.run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))?;
    let result = (|| -> Result<()> {
        let mut stream =
            stream.with_context(|| format!("connect to {target} from {}", client.label()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(payload)?;
        let mut back = [0u8; 64];
        let n = stream.read(&mut back)?;
        if &back[..n] != payload {
            bail!("echo from {target} differs: {:?}", &back[..n]);
        }
        Ok(())
    })();
    if result.is_err() {
        // Unblock the accepting thread so it cannot outlive the test.
        let _ = client.run(move || TcpStream::connect_timeout(&target, Duration::from_millis(200)));
        let _ = server.run(move || TcpStream::connect_timeout(&target, Duration::from_millis(200)));
    }
    let served = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))?;
    result?;
    served
}

/// Sends a UDP datagram from `client` to a server on `addr` in `server` and
/// waits for the echo. Up to 3 tries, 1 s each.
pub fn udp_exchange(server: &Netns, addr: SocketAddr, client: &Netns) -> Result<()> {
    let socket = server
        .run(move || UdpSocket::bind(addr))?
        .with_context(|| format!("bind UDP {addr} in {}", server.label()))?;
    let target = SocketAddr::new(addr.ip(), socket.local_addr()?.port());
    socket.set_read_timeout(Some(Duration::from_secs(4)))?;
    let echo = std::thread::spawn(move || -> Result<()> {
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf)?;
        for _ in 0..3 {
            socket.send_to(&buf[..n], from)?;
        }
        Ok(())
    });
    let bind_any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = client.run(move || UdpSocket::bind(bind_any))??;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let payload = b"weft udp payload";
    let mut ok = false;
    for _ in 0..3 {
        sock.send_to(payload, target)?;
        let mut back = [0u8; 64];
        if let Ok((n, _)) = sock.recv_from(&mut back) {
            ok = &back[..n] == payload;
            break;
        }
    }
    let _ = echo.join();
    if !ok {
        bail!("no UDP echo from {target} to {}", client.label());
    }
    Ok(())
}
