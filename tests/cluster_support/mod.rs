//! Helpers of the cluster tests: the [`Cluster`] of netd hosts on etcd, a
//! checked TCP stream between containers and a metrics scrape.

mod cluster;

pub use cluster::*;

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A TCP stream from `from` to `to_addr:port` (inside `to`): the client
/// writes a known byte pattern as fast as it can until told to stop; the
/// server checks every byte and records the longest gap between reads.
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    client: std::thread::JoinHandle<u64>,
    server: std::thread::JoinHandle<(u64, Duration, bool)>,
}

impl Stream {
    pub fn start(from: &plumb::Netns, to: &plumb::Netns, to_addr: IpAddr) -> Stream {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let addr = std::net::SocketAddr::new(to_addr, 5201);
        let listener = to
            .run(move || std::net::TcpListener::bind(addr))
            .unwrap()
            .unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let (mut total, mut gap, mut intact) = (0u64, Duration::ZERO, true);
            let mut last = Instant::now();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => panic!("stream read after {total} bytes: {e}"),
                };
                gap = gap.max(last.elapsed());
                last = Instant::now();
                for (i, b) in buf[..n].iter().enumerate() {
                    intact &= *b == ((total + i as u64) % 251) as u8;
                }
                total += n as u64;
            }
            (total, gap, intact)
        });
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut conn = from
            .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        let flag = stop.clone();
        let client = std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 16384];
            // Bounded: at most 120 s whatever the test does.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = ((sent + i as u64) % 251) as u8;
                }
                conn.write_all(&chunk).unwrap();
                sent += chunk.len() as u64;
                // About 16 MB/s: enough to see any stall, light on 2 shared cores.
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        });
        Stream {
            stop,
            client,
            server,
        }
    }

    /// Stops the client; returns (sent, received, longest gap, intact).
    pub fn finish(self) -> (u64, u64, Duration, bool) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.client.join().unwrap();
        let (received, gap, intact) = self.server.join().unwrap();
        (sent, received, gap, intact)
    }
}

/// `GET /metrics` from netd's listener inside the host's namespace.
pub fn scrape(netns: &plumb::Netns) -> String {
    world::scrape_metrics(netns, "127.0.0.1:9590".parse().unwrap())
}
