//! How fast one core encrypts and decrypts WireGuard data messages through
//! `NoiseSession` (boringtun's `Tunn`), with no I/O, and how fast it copies
//! 64 KiB blocks through memory: the two costs no userspace tunnel on
//! boringtun can avoid (every byte is sealed, opened, and crosses the
//! user/kernel boundary four times). `scripts/bench-overlay` prints the floor
//! they set beside the throughput figures, measured in the same run.
//!
//! ```text
//! cargo run --release -p overlay --example session_speed [-- --bytes 1420 --seconds 2 --json]
//! ```

use std::error::Error;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use overlay::session::HandshakeGuard;
use overlay::{NoiseSession, PeerSession, PrivateKey, SessionOutput};

struct Args {
    bytes: usize,
    seconds: f64,
    json: bool,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        bytes: 1420,
        seconds: 2.0,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--bytes" => args.bytes = it.next().ok_or("--bytes needs a value")?.parse()?,
            "--seconds" => args.seconds = it.next().ok_or("--seconds needs a value")?.parse()?,
            "--json" => args.json = true,
            "-h" | "--help" => {
                println!(
                    "session_speed [--bytes N (IP packet size, default 1420)] \
                     [--seconds S (per direction, default 2)] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !(20..=65_000).contains(&args.bytes) {
        return Err(format!("--bytes {}: want 20..=65000", args.bytes).into());
    }
    if !(args.seconds > 0.0 && args.seconds <= 60.0) {
        return Err(format!("--seconds {}: want (0, 60]", args.seconds).into());
    }
    Ok(args)
}

/// Runs the handshake between `a` and `b` (a starts it with a packet).
fn handshake(a: &mut NoiseSession, b: &mut NoiseSession, packet: &[u8]) -> Result<(), String> {
    let from: IpAddr = "198.18.0.1".parse().expect("an address");
    let (mut buf_a, mut buf_b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    let init = match a.encapsulate(packet, &mut buf_a) {
        SessionOutput::ToNetwork(m) => m.to_vec(),
        other => return Err(format!("expected an initiation, got {other:?}")),
    };
    let response = match b.decapsulate(Some(from), &init, &mut buf_b) {
        SessionOutput::ToNetwork(m) => m.to_vec(),
        other => return Err(format!("expected a response, got {other:?}")),
    };
    let keepalive = match a.decapsulate(Some(from), &response, &mut buf_a) {
        SessionOutput::ToNetwork(m) => m.to_vec(),
        other => return Err(format!("expected a keepalive, got {other:?}")),
    };
    match b.decapsulate(Some(from), &keepalive, &mut buf_b) {
        SessionOutput::Done => Ok(()),
        other => Err(format!("expected the keepalive to be taken, got {other:?}")),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = args()?;
    let (ka, kb) = (PrivateKey::generate()?, PrivateKey::generate()?);
    let (ga, gb) = (HandshakeGuard::new(&ka, 100), HandshakeGuard::new(&kb, 100));
    let mut a = NoiseSession::new(&ka, kb.public_key(), None, None, 1, ga.session_limiter())?;
    let mut b = NoiseSession::new(&kb, ka.public_key(), None, None, 2, gb.session_limiter())?;

    // An IPv4 header of the right length; the rest is payload to the session.
    let mut packet = vec![0xa5u8; args.bytes];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(args.bytes as u16).to_be_bytes());
    handshake(&mut a, &mut b, &packet)?;
    // The packet that started the handshake is still queued in a.
    let mut out = vec![0u8; args.bytes + 64];
    while let SessionOutput::ToNetwork(_) = a.next_queued(&mut out) {}

    // Encrypt for the time given; keep a sample of messages to decrypt.
    let window = Duration::from_secs_f64(args.seconds);
    const SAMPLE: usize = 4096;
    let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(SAMPLE);
    let (mut packets, start) = (0u64, Instant::now());
    while start.elapsed() < window {
        for _ in 0..256 {
            match a.encapsulate(&packet, &mut out) {
                SessionOutput::ToNetwork(m) => {
                    if sealed.len() < SAMPLE {
                        sealed.push(m.to_vec());
                    }
                }
                other => return Err(format!("encrypt: {other:?}").into()),
            }
            packets += 1;
        }
    }
    let seal = rate(packets, args.bytes, start.elapsed());

    // Decrypt: a fresh session on b's side would refuse replays, so each
    // round uses new messages; the sample is re-made between rounds (not timed).
    let (mut opened, mut busy) = (0u64, Duration::ZERO);
    let from: IpAddr = "198.18.0.1".parse()?;
    while busy < window {
        let round = Instant::now();
        for message in &sealed {
            match b.decapsulate(Some(from), message, &mut out) {
                SessionOutput::ToTunnel(p) if p.len() == args.bytes => {}
                other => return Err(format!("decrypt: {other:?}").into()),
            }
        }
        busy += round.elapsed();
        opened += sealed.len() as u64;
        for message in sealed.iter_mut() {
            match a.encapsulate(&packet, &mut out) {
                SessionOutput::ToNetwork(m) => {
                    message.clear();
                    message.extend_from_slice(m);
                }
                other => return Err(format!("encrypt: {other:?}").into()),
            }
        }
    }
    let open = rate(opened, args.bytes, busy);
    let copy = copy_rate(window);
    // Cores a tunnel needs for its crypto at G Gbit/s: G/seal + G/open.
    let cores_per_gbit = 1.0 / seal + 1.0 / open;
    if args.json {
        println!(
            "{{\"bytes\":{},\"seal_gbits\":{seal:.2},\"open_gbits\":{open:.2},\
             \"cores_per_gbit\":{cores_per_gbit:.4},\"copy_gbits\":{copy:.2}}}",
            args.bytes
        );
    } else {
        println!(
            "{}-byte packets, one core: encrypt {seal:.2} Gbit/s, decrypt {open:.2} Gbit/s; \
             both ends of a tunnel: {cores_per_gbit:.3} cores per Gbit/s; \
             64 KiB copies: {copy:.1} Gbit/s",
            args.bytes
        );
    }
    Ok(())
}

/// Gbit/s one core copies in 64 KiB blocks (what one TUN or socket call
/// moves) between two 32 MiB rings, so the data comes from and goes to
/// memory rather than staying in the caches, as a tunnel's does.
fn copy_rate(window: Duration) -> f64 {
    const BLOCK: usize = 64 * 1024;
    const RING: usize = 32 << 20;
    let source = vec![0x5au8; RING];
    let mut target = vec![0u8; RING];
    let (mut copied, mut offset, start) = (0u64, 0usize, Instant::now());
    while start.elapsed() < window {
        for _ in 0..64 {
            target[offset..offset + BLOCK].copy_from_slice(&source[offset..offset + BLOCK]);
            offset = (offset + BLOCK) % RING;
            copied += BLOCK as u64;
        }
    }
    std::hint::black_box(&target);
    copied as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}

/// Gbit/s of IP packets (`bytes` each) for `packets` in `took`.
fn rate(packets: u64, bytes: usize, took: Duration) -> f64 {
    packets as f64 * bytes as f64 * 8.0 / took.as_secs_f64() / 1e9
}
