//! The API's limits: an oversized body is refused with 413 without netd
//! holding it in memory, a request that stops half-way is answered 408 or
//! closed once its timeout passes, and connections beyond the cap are
//! refused at once (503) instead of piling up.
//!
//! Needs the netd binary: `cargo build -p netd`.

mod lifecycle_support;
mod netd_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use lifecycle_support::{call, read_answer};
use netd_support::{default_args, Netd, TestDir};
use world::{require_root, World};

/// VmRSS of a process in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Sends headers announcing `declared` bytes (or chunked, when None), then
/// up to `send` bytes of body until netd stops reading; returns the answer.
fn push_body(socket: &Path, declared: Option<u64>, send: usize) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let length = match declared {
        Some(n) => format!("content-length: {n}\r\n"),
        None => "transfer-encoding: chunked\r\n".into(),
    };
    let head = format!("POST /v1/containers HTTP/1.1\r\nhost: netd\r\n{length}\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < send {
        let piece: Vec<u8> = match declared {
            Some(_) => chunk.clone(),
            None => [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat(),
        };
        // netd answered and closed: it read no further.
        if stream.write_all(&piece).is_err() {
            break;
        }
        sent += chunk.len();
    }
    read_answer(&mut stream).unwrap()
}

#[tokio::test]
async fn oversized_bodies_get_413_and_netd_does_not_keep_them() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.68.0.0/24")).unwrap();
    let before = rss_kb(netd.pid);
    std::thread::scope(|s| {
        let mut clients = Vec::new();
        for i in 0..3 {
            let socket = netd.socket.clone();
            clients.push(s.spawn(move || {
                if i == 0 {
                    // Chunked: no length to refuse up front, cut at the limit.
                    push_body(&socket, None, 100 << 20)
                } else {
                    push_body(&socket, Some(100 << 20), 100 << 20)
                }
            }));
        }
        for client in clients {
            let (status, body) = client.join().unwrap();
            assert_eq!(status, 413, "{body}");
            assert!(body.contains("max_body_bytes"), "{body}");
            assert!(body.contains("\"kind\""), "{body}");
        }
    });
    let after = rss_kb(netd.pid);
    eprintln!("netd VmRSS {before} kB before, {after} kB after three 100 MB bodies");
    // Generous: a body held in memory would be 100 MB each.
    assert!(
        after < before + 64 * 1024,
        "netd grew from {before} to {after} kB"
    );
    // A body just under the limit is read (and its namespace refused, 400).
    let big = format!("{{\"netns\": \"{}\"}}", "x".repeat((1 << 20) - 64));
    let (status, body) = call(&netd.socket, "POST", "/v1/containers", &big).unwrap();
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn partial_requests_are_timed_out() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.68.1.0/24");
    args.extend(
        [
            "--api-header-timeout-ms",
            "500",
            "--api-body-timeout-ms",
            "500",
        ]
        .map(String::from),
    );
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    // Headers that never end: closed without an answer once the time is up.
    let mut headers = UnixStream::connect(&netd.socket).unwrap();
    headers
        .write_all(b"POST /v1/containers HTTP/1.1\r\nhost: netd\r\n")
        .unwrap();
    headers
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = headers.read_to_end(&mut rest);
    assert!(read.is_ok(), "not closed within 20 s: {read:?}");
    eprintln!("partial headers closed after {:?}", started.elapsed());
    // A connection that sends nothing at all is closed too.
    let mut silent = UnixStream::connect(&netd.socket).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let read = silent.read_to_end(&mut rest);
    assert!(
        read.is_ok(),
        "a silent connection is not closed within 20 s: {read:?}"
    );
    eprintln!("silent connection closed after {:?}", started.elapsed());
    // A body that stops half-way: 408, then closed.
    let mut body = UnixStream::connect(&netd.socket).unwrap();
    body.write_all(
        b"POST /v1/containers HTTP/1.1\r\nhost: netd\r\ncontent-length: 100\r\n\r\n{\"netns\"",
    )
    .unwrap();
    body.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (status, answer) = read_answer(&mut body).unwrap();
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("body_timeout_ms"), "{answer}");
    // netd still answers.
    assert_eq!(call(&netd.socket, "GET", "/v1/status", "").unwrap().0, 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_at_once() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.68.2.0/24");
    args.extend(
        [
            "--api-max-connections",
            "8",
            "--api-header-timeout-ms",
            "60000",
        ]
        .map(String::from),
    );
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    // 8 idle connections hold every slot; 200 more are turned away.
    let idle: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&netd.socket).unwrap())
        .collect();
    // The listener takes them in order; give it a moment to have taken all 8.
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for _ in 0..200 {
        let mut extra = UnixStream::connect(&netd.socket).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        // Refused: a 503 (or nothing) and the close, without waiting.
        if extra.read_to_string(&mut answer).is_ok() {
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
                "{answer}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 200);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", netd.pid))
        .unwrap()
        .count();
    eprintln!("netd holds {fds} descriptors with 8 idle connections and 200 refused");
    drop(idle);
    // The slots come back once the idle clients are gone.
    let served = netd_support::eventually(Duration::from_secs(10), || {
        call(&netd.socket, "GET", "/v1/status", "").is_ok_and(|(s, _)| s == 200)
    });
    assert!(
        served,
        "netd does not serve again after the idle clients left"
    );
}
