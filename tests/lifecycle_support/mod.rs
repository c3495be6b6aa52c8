//! Shared by the lifecycle, API-limit and fault-matrix tests: raw requests on
//! netd's socket (clients that hang up, send too much or too little), a
//! seeded random source, and what the state and the kernel say about a
//! container.

#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// A small seeded generator (xorshift64*): the same seed, the same run.
pub struct Seeded(u64);

impl Seeded {
    /// The seed comes from WEFT_TEST_SEED when set, else `default`; printed,
    /// so that a failing run can be repeated.
    pub fn new(default: u64) -> Seeded {
        let seed = std::env::var("WEFT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        eprintln!("seed {seed} (set WEFT_TEST_SEED to repeat)");
        Seeded(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// An HTTP/1.1 request with a JSON body, as bytes.
pub fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: netd\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends a whole request, waits `after`, and hangs up without reading.
pub fn send_and_hang_up(socket: &Path, bytes: &[u8], after: Duration) -> Result<()> {
    let mut stream = UnixStream::connect(socket).context("connect to netd")?;
    stream.write_all(bytes)?;
    std::thread::sleep(after);
    drop(stream);
    Ok(())
}

/// Sends a request and reads the answer: (status, body).
pub fn call(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket).context("connect to netd")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(&request(method, path, body))?;
    read_answer(&mut stream)
}

/// Reads an answer to the end of the connection: (status, body).
pub fn read_answer(stream: &mut UnixStream) -> Result<(u16, String)> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("read the answer")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// netd's state as its store reads it.
pub fn state(dir: &Path) -> netd::state::State {
    netd::Store::open(dir)
        .and_then(|s| s.read())
        .expect("read netd's state")
}

/// Ids of endpoints still `attaching`.
pub fn attaching(dir: &Path) -> Vec<String> {
    state(dir)
        .endpoints
        .values()
        .filter(|e| matches!(e.phase, netd::Phase::Attaching { .. }))
        .map(|e| e.id.clone())
        .collect()
}

/// The host link of container `id`: (exists, up).
pub fn host_link(host: &plumb::Netns, id: &str) -> (bool, bool) {
    let name = netd::endpoints::host_ifname(id);
    match world::ip_json(host, &["link", "show", "dev", &name]) {
        Ok(links) => match links.as_array().and_then(|l| l.first()) {
            Some(link) => (
                true,
                link["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "UP")),
            ),
            None => (false, false),
        },
        Err(_) => (false, false),
    }
}

/// Operations netd has taken and not finished (`netd status`).
pub fn in_flight(socket: &Path) -> Option<u64> {
    let (status, body) = call(socket, "GET", "/v1/status", "").ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&body).ok()?["operations_in_flight"].as_u64()
}

/// Waits (bounded) until netd has nothing under way and no endpoint is
/// `attaching`, twice a second apart (a request a client just sent may not
/// have reached netd's operations yet at the first look). False on timeout.
pub fn settled(socket: &Path, state_dir: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let quiet = || in_flight(socket) == Some(0) && attaching(state_dir).is_empty();
    while std::time::Instant::now() < deadline {
        if quiet() {
            std::thread::sleep(Duration::from_secs(1));
            if quiet() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The firewall ruleset of `netns`, as `nft list ruleset` prints it.
pub fn ruleset(netns: &plumb::Netns) -> String {
    world::run_in(netns, "nft", &["list", "ruleset"], Duration::from_secs(10))
        .expect("nft list ruleset")
        .stdout
}
