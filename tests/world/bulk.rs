//! Bulk TCP through whatever lies between two namespaces: a known stream of
//! pseudo-random bytes, checked at the far end by length and hash.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plumb::Netns;

/// Sends `bytes` from `client` to a server on `addr` inside `server`, which
/// answers with the length and FNV-1a hash of what it read; both must match.
/// Every read and write is bounded by `timeout`. Returns how long it took.
pub fn tcp_bulk(
    server: &Netns,
    addr: SocketAddr,
    client: &Netns,
    bytes: usize,
    timeout: Duration,
) -> Result<Duration> {
    let listener = server
        .run(move || TcpListener::bind(addr))?
        .with_context(|| format!("listen on {addr} in {}", server.label()))?;
    let target = SocketAddr::new(addr.ip(), listener.local_addr()?.port());
    let sink = std::thread::spawn(move || -> Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut hash) = (0u64, FNV_OFFSET);
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash = fnv(hash, &buf[..n]);
            total += n as u64;
        }
        conn.write_all(&total.to_le_bytes())?;
        conn.write_all(&hash.to_le_bytes())?;
        Ok(())
    });
    let started = Instant::now();
    let result = (|| -> Result<()> {
        let mut stream = client
            .run(move || TcpStream::connect_timeout(&target, timeout))?
            .with_context(|| format!("connect to {target} from {}", client.label()))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        let (mut state, mut hash) = (0x5eed_cafe_f00d_d00du64, FNV_OFFSET);
        let mut chunk = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            for b in &mut chunk[..n] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            hash = fnv(hash, &chunk[..n]);
            stream
                .write_all(&chunk[..n])
                .with_context(|| format!("send to {target} after {sent} bytes"))?;
            sent += n;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut answer = [0u8; 16];
        stream
            .read_exact(&mut answer)
            .with_context(|| format!("read the verdict from {target}"))?;
        let total = u64::from_le_bytes(answer[..8].try_into()?);
        let digest = u64::from_le_bytes(answer[8..].try_into()?);
        if total != bytes as u64 {
            bail!("{target} received {total} of {bytes} bytes");
        }
        if digest != hash {
            bail!("the bytes arrived at {target} changed");
        }
        Ok(())
    })();
    let served = sink
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))?;
    result?;
    served.with_context(|| format!("receive at {target}"))?;
    Ok(started.elapsed())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, data: &[u8]) -> u64 {
    for b in data {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}
