//! The overlay benchmark (`scripts/bench-overlay` runs it): iperf3 between
//! two simulated hosts over the raw fabric, weft's overlay, wireguard-go,
//! boringtun-cli and kernel VXLAN — same world, same run — with the CPU the
//! tunnel processes used and weft's ratio to each.
//!
//! ```text
//! cargo build --release -p overlay --example node
//! WEFT_BORINGTUN=target/bench-tools/boringtun/bin/boringtun-cli \
//!   cargo test --release --test overlay_bench -- --ignored --nocapture
//! ```
//!
//! weft's overlay runs as its own process (`overlay/examples/node.rs`), so
//! its CPU time is measured like the others': utime + stime from
//! /proc/<pid>/stat over each iperf3 run. Kernel tunnels have no process.
//! For a profile, a run can be narrowed: `WEFT_BENCH_TUNNELS=weft` (a comma
//! list of the tunnel names), `WEFT_BENCH_TESTS=tcp1` (tcp1,tcp4,udp) and
//! `WEFT_BENCH_SECONDS=20`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use overlay::PrivateKey;
use world::{ip_json, require_root, run_in, Host, World};

/// One iperf3 run: `-t` seconds (`WEFT_BENCH_SECONDS` for a longer look),
/// bounded by `IPERF_TIMEOUT`.
const SECONDS: u32 = 5;
const IPERF_TIMEOUT: Duration = Duration::from_secs(90);
/// UDP payload that fits every tunnel's MTU without fragments (1420 − 28 and less).
const UDP_LEN: &str = "1372";

#[derive(Clone, Copy, Debug)]
enum Test {
    Tcp1,
    Tcp4,
    Udp,
}

impl Test {
    const ALL: [Test; 3] = [Test::Tcp1, Test::Tcp4, Test::Udp];
    /// The name `WEFT_BENCH_TESTS` (a comma list: tcp1,tcp4,udp) knows it by.
    fn key(self) -> &'static str {
        match self {
            Test::Tcp1 => "tcp1",
            Test::Tcp4 => "tcp4",
            Test::Udp => "udp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP 1 stream",
            Test::Tcp4 => "TCP 4 streams",
            Test::Udp => "UDP",
        }
    }
}

/// What one run measured: Gbit/s received, cores the tunnel processes used,
/// and cores the two iperf3 ends used (their own figure: client + server).
#[derive(Clone, Copy, Debug, Default)]
struct Figure {
    gbits: f64,
    cores: Option<f64>,
    ends: f64,
}

/// What no tunnel on boringtun gets below on this machine, from the
/// `session_speed` example run at the start: crypto cores per Gbit/s (seal
/// on one side, open on the other) and the rate one core copies 64 KiB blocks.
#[derive(Clone, Copy, Debug)]
struct Floor {
    crypto_cores_per_gbit: f64,
    copy_gbits: f64,
}

/// Userspace tunnels copy every byte across the user/kernel boundary this
/// many times: TUN read, UDP send, UDP receive, TUN write.
const COPIES: f64 = 4.0;
/// The issue's goal: this many times each userspace reference.
const GOAL: f64 = 10.0;

struct Tunnel {
    name: &'static str,
    /// Where iperf3 on host a listens.
    server_ip: IpAddr,
    /// Processes that carry the tunnel (empty for the kernel's).
    pids: Vec<u32>,
}

#[tokio::test]
#[ignore = "the benchmark: scripts/bench-overlay runs it (release build)"]
async fn bench_overlay() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let keys = std::env::temp_dir().join(format!("{}-keys", world.prefix()));
    std::fs::create_dir_all(&keys).unwrap();

    let floor = floor();
    let mut results: Vec<(&'static str, Vec<Figure>)> = Vec::new();
    let setups: [&str; 5] = ["raw veth", "weft", "wireguard-go", "boringtun-cli", "VXLAN"];
    // WEFT_BENCH_TUNNELS="weft,raw veth" narrows a run (profiling one tunnel).
    let only = std::env::var("WEFT_BENCH_TUNNELS").ok();
    let chosen = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    for name in setups.into_iter().filter(|n| chosen(n)) {
        let tunnel = match name {
            "raw veth" => Some(Tunnel {
                name,
                server_ip: a.ip_addr(),
                pids: Vec::new(),
            }),
            "weft" => Some(weft(&world, &a, &b, &keys)),
            "wireguard-go" => Some(wireguard(&world, &a, &b, &keys, Userspace::WireguardGo)),
            "boringtun-cli" => match boringtun_binary() {
                Some(bin) => Some(wireguard(&world, &a, &b, &keys, Userspace::Boringtun(bin))),
                None => {
                    eprintln!("boringtun-cli: not built (set WEFT_BORINGTUN); skipped");
                    None
                }
            },
            "VXLAN" => Some(vxlan(&a, &b)),
            _ => unreachable!(),
        };
        let Some(tunnel) = tunnel else { continue };
        let mut figures = Vec::new();
        for test in Test::ALL.into_iter().filter(|t| chosen_test(*t)) {
            let f = iperf(&world, &a, &b, &tunnel, test);
            eprintln!(
                "  {:<14} {:<14} {:>6.2} Gbit/s{}",
                tunnel.name,
                test.label(),
                f.gbits,
                f.cores
                    .map(|c| format!(" at {c:.2} cores"))
                    .unwrap_or_default()
            );
            figures.push(f);
        }
        for pid in &tunnel.pids {
            // SAFETY: plain kill(2) of a process this benchmark started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
        }
        results.push((tunnel.name, figures));
    }
    let _ = std::fs::remove_dir_all(&keys);
    // On a line of its own: the test harness has just printed "test … ".
    println!("\n{}", report(&results));
    if let Some(floor) = floor {
        println!("{}", floor_report(&results, floor));
    }
    if let Some((_, weft)) = results.iter().find(|(n, _)| *n == "weft") {
        assert!(weft.iter().all(|f| f.gbits > 0.0), "weft carried nothing");
    }
}

fn chosen_test(test: Test) -> bool {
    std::env::var("WEFT_BENCH_TESTS")
        .map(|o| o.split(',').any(|k| k == test.key()))
        .unwrap_or(true)
}

/// The table and the ratios, as docs/overlay.md shows them.
fn report(results: &[(&'static str, Vec<Figure>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| tunnel | TCP 1 stream Gbit/s (cores) | TCP 4 streams Gbit/s (cores) | UDP Gbit/s (cores) |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for (name, figures) in results {
        let cells: Vec<String> = figures
            .iter()
            .map(|f| match f.cores {
                Some(c) => format!("{:.2} ({c:.2})", f.gbits),
                None => format!("{:.2} (kernel)", f.gbits),
            })
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    let Some((_, weft)) = results.iter().find(|(n, _)| *n == "weft") else {
        return out;
    };
    let _ = writeln!(out, "\n| ratio | TCP 1 stream | TCP 4 streams | UDP |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (name, figures) in results.iter().filter(|(n, _)| *n != "weft") {
        let cells: Vec<String> = weft
            .iter()
            .zip(figures)
            .map(|(w, o)| {
                if o.gbits > 0.0 {
                    format!("{:.2}×", w.gbits / o.gbits)
                } else {
                    "-".to_string()
                }
            })
            .collect();
        let _ = writeln!(out, "| weft / {name} | {} |", cells.join(" | "));
    }
    out
}

/// iperf3 from b to a over `tunnel`, with the tunnel processes' CPU.
fn iperf(world: &World, a: &Host, b: &Host, tunnel: &Tunnel, test: Test) -> Figure {
    let ip = tunnel.server_ip.to_string();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-1", "-B", &ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    world.spawn(&a.netns, server).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let seconds = std::env::var("WEFT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| (1..=60).contains(s))
        .unwrap_or(SECONDS)
        .to_string();
    let mut args = vec!["-c", &ip, "-t", &seconds, "-J"];
    match test {
        Test::Tcp1 => {}
        Test::Tcp4 => args.extend(["-P", "4"]),
        Test::Udp => args.extend(["-u", "-b", "0", "-l", UDP_LEN]),
    }
    let before = cpu_ticks(&tunnel.pids);
    let start = Instant::now();
    let out = run_in(&b.netns, "iperf3", &args, IPERF_TIMEOUT).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let after = cpu_ticks(&tunnel.pids);
    if !out.success {
        eprintln!(
            "  {} {}: iperf3 failed: {}",
            tunnel.name,
            test.label(),
            out.stdout
        );
        return Figure::default();
    }
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let end = &report["end"];
    let bits = match test {
        Test::Udp => {
            // The client's summary carries the server's loss count.
            let sum = &end["sum"];
            let sent = sum["bits_per_second"].as_f64().unwrap_or(0.0);
            let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
            sent * (1.0 - lost / 100.0)
        }
        _ => end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0),
    };
    let cores = match (before, after) {
        (Some(b), Some(a)) if !tunnel.pids.is_empty() => {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            Some((a - b) as f64 / hz / elapsed)
        }
        _ => None,
    };
    let cpu = &end["cpu_utilization_percent"];
    let ends = (cpu["host_total"].as_f64().unwrap_or(0.0)
        + cpu["remote_total"].as_f64().unwrap_or(0.0))
        / 100.0;
    Figure {
        gbits: bits / 1e9,
        cores,
        ends,
    }
}

/// Runs `examples/session_speed` (built by scripts/bench-overlay); `None`,
/// said so, if it is missing or fails, and the report goes without a floor.
fn floor() -> Option<Floor> {
    let exe = profile_dir().join("examples/session_speed");
    let out = Command::new(&exe)
        .args(["--json", "--seconds", "1"])
        .output()
        .map_err(|e| eprintln!("{}: {e}; no floor in the report", exe.display()))
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "session_speed failed: {}; no floor in the report",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let floor = Floor {
        crypto_cores_per_gbit: v["cores_per_gbit"].as_f64()?,
        copy_gbits: v["copy_gbits"].as_f64()?,
    };
    eprintln!(
        "  floor: encrypt {} Gbit/s, decrypt {} Gbit/s per core (1420-byte packets); \
         64 KiB copies {} Gbit/s",
        v["seal_gbits"], v["open_gbits"], v["copy_gbits"]
    );
    Some(floor)
}

/// What the goal (10× the faster userspace reference in each test) would
/// cost in cores that no implementation avoids: the crypto, four copies of
/// every byte, and the two iperf3 ends at what they cost per Gbit/s in
/// weft's own run. Everything else (system calls, the kernel's TUN, UDP,
/// TCP, veth and bridge work, wake-ups) comes on top.
fn floor_report(results: &[(&'static str, Vec<Figure>)], floor: Floor) -> String {
    let mut out = String::new();
    let figures = |name: &str| results.iter().find(|(n, _)| *n == name).map(|(_, f)| f);
    let (Some(weft), refs) = (
        figures("weft"),
        [figures("wireguard-go"), figures("boringtun-cli")],
    ) else {
        return out;
    };
    let machine = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "| floor at {GOAL}× the faster reference | TCP 1 stream | TCP 4 streams | UDP |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let mut rows: [Vec<String>; 6] = Default::default();
    for (i, w) in weft.iter().enumerate() {
        let reference = refs
            .iter()
            .flatten()
            .filter_map(|f| f.get(i))
            .map(|f| f.gbits)
            .fold(0.0, f64::max);
        if reference <= 0.0 || w.gbits <= 0.0 {
            rows.iter_mut().for_each(|r| r.push("-".to_string()));
            continue;
        }
        let goal = GOAL * reference;
        let crypto = goal * floor.crypto_cores_per_gbit;
        let copies = goal * COPIES / floor.copy_gbits;
        let ends = goal * w.ends / w.gbits;
        let weft_cores = w.cores.map_or(0.0, |c| goal * c / w.gbits);
        rows[0].push(format!("{goal:.2} Gbit/s"));
        rows[1].push(format!("{crypto:.2}"));
        rows[2].push(format!("{copies:.2}"));
        rows[3].push(format!("{ends:.2}"));
        rows[4].push(format!("{:.2} of {machine}", crypto + copies + ends));
        rows[5].push(format!("{:.2}", weft_cores + ends));
    }
    for (label, row) in [
        "goal",
        "crypto, cores",
        "4 copies of every byte, cores",
        "iperf3 ends (at weft's cost per Gbit/s), cores",
        "floor: the three together, cores",
        "weft and the iperf3 ends at their measured cost per Gbit/s, cores",
    ]
    .iter()
    .zip(&rows)
    {
        let _ = writeln!(out, "| {label} | {} |", row.join(" | "));
    }
    out
}

/// utime + stime of all the processes (every thread), in clock ticks.
fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        total += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// target/<profile>, from target/<profile>/deps/<this test>.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

fn key_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = PrivateKey::generate().unwrap();
    let path = dir.join(name);
    key.write_file(&path).unwrap();
    (path, key.public_key().to_base64())
}

/// weft's overlay: the `node` example in each host, 10.99.0.0/24.
fn weft(world: &World, a: &Host, b: &Host, keys: &Path) -> Tunnel {
    let node = profile_dir().join("examples/node");
    assert!(
        node.exists(),
        "{} is missing: cargo build --release -p overlay --example node",
        node.display()
    );
    let (ka, pa) = key_file(keys, "weft-a");
    let (kb, pb) = key_file(keys, "weft-b");
    let mut pids = Vec::new();
    for (host, key, address, peer, peer_host, peer_ip) in [
        (a, &ka, "10.99.0.1/24", &pb, b, "10.99.0.2/32"),
        (b, &kb, "10.99.0.2/24", &pa, a, "10.99.0.1/32"),
    ] {
        let mut command = Command::new(&node);
        command
            .arg("--private-key")
            .arg(key)
            .args(["--address", address, "--peer"])
            .arg(format!("{peer},{}:51820,{peer_ip}", peer_host.ip))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pids.push(world.spawn(&host.netns, command).unwrap());
    }
    for (host, ip) in [(a, "10.99.0.1"), (b, "10.99.0.2")] {
        wait_for_address(host, "weft-wg0", ip);
    }
    Tunnel {
        name: "weft",
        server_ip: "10.99.0.1".parse().unwrap(),
        pids,
    }
}

enum Userspace {
    WireguardGo,
    Boringtun(PathBuf),
}

fn boringtun_binary() -> Option<PathBuf> {
    let path = std::env::var_os("WEFT_BORINGTUN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("../bench-tools/boringtun/bin/boringtun-cli"));
    path.exists().then_some(path)
}

/// A userspace WireGuard from elsewhere, configured with `wg set` as its
/// users would: wireguard-go on 10.98.0.0/24, boringtun-cli on 10.96.0.0/24.
fn wireguard(world: &World, a: &Host, b: &Host, keys: &Path, which: Userspace) -> Tunnel {
    let (tag, net, port, name) = match which {
        Userspace::WireguardGo => ("g", "10.98.0", 51821, "wireguard-go"),
        Userspace::Boringtun(_) => ("t", "10.96.0", 51822, "boringtun-cli"),
    };
    let mut pids = Vec::new();
    let mut links = Vec::new();
    for host in [a, b] {
        // The UAPI socket (/var/run/wireguard/NAME.sock) is machine-wide:
        // the link name carries the world's prefix.
        let link = format!("{}{tag}{}", world.prefix(), host.name);
        assert!(link.len() <= 15, "{link}");
        let mut command = match &which {
            Userspace::WireguardGo => Command::new("wireguard-go"),
            Userspace::Boringtun(bin) => {
                let mut c = Command::new(bin);
                c.args(["--foreground", "--disable-drop-privileges"]);
                c
            }
        };
        command
            .arg(&link)
            .env("WG_PROCESS_FOREGROUND", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pids.push(world.spawn(&host.netns, command).unwrap());
        links.push(link);
    }
    let (ka, pa) = key_file(keys, &format!("{name}-a"));
    let (kb, pb) = key_file(keys, &format!("{name}-b"));
    for (i, (host, link, key, peer, peer_host)) in
        [(a, &links[0], &ka, &pb, b), (b, &links[1], &kb, &pa, a)]
            .into_iter()
            .enumerate()
    {
        wait_for_link(host, link);
        let me = i + 1;
        let other = 2 - i;
        let key = key.to_str().unwrap();
        let port = port.to_string();
        let endpoint = format!("{}:{port}", peer_host.ip);
        let allowed = format!("{net}.{other}/32");
        let address = format!("{net}.{me}/24");
        for args in [
            vec![
                "wg",
                "set",
                link,
                "private-key",
                key,
                "listen-port",
                &port,
                "peer",
                peer,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            vec!["ip", "address", "add", &address, "dev", link],
            vec!["ip", "link", "set", link, "mtu", "1420", "up"],
        ] {
            let out = run_in(&host.netns, args[0], &args[1..], Duration::from_secs(10)).unwrap();
            assert!(out.success, "{args:?}: {}", out.stderr);
        }
    }
    Tunnel {
        name,
        server_ip: format!("{net}.1").parse().unwrap(),
        pids,
    }
}

/// Kernel VXLAN (unencrypted) on 10.97.0.0/24.
fn vxlan(a: &Host, b: &Host) -> Tunnel {
    for (host, local, remote, me) in [(a, a.ip, b.ip, 1), (b, b.ip, a.ip, 2)] {
        let (local, remote, address) = (
            local.to_string(),
            remote.to_string(),
            format!("10.97.0.{me}/24"),
        );
        for args in [
            vec![
                "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", &local, "remote",
                &remote, "dstport", "4789", "dev", "eth0",
            ],
            vec!["ip", "address", "add", &address, "dev", "vx0"],
            vec!["ip", "link", "set", "vx0", "up"],
        ] {
            let out = run_in(&host.netns, args[0], &args[1..], Duration::from_secs(10)).unwrap();
            assert!(out.success, "{args:?}: {}", out.stderr);
        }
    }
    Tunnel {
        name: "VXLAN",
        server_ip: "10.97.0.1".parse().unwrap(),
        pids: Vec::new(),
    }
}

fn wait_for_link(host: &Host, link: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ip_json(&host.netns, &["link", "show", link]).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("link {link} did not appear in {}", host.name);
}

fn wait_for_address(host: &Host, link: &str, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(v) = ip_json(&host.netns, &["address", "show", link]) {
            if v.to_string().contains(&format!("\"{ip}\"")) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{ip} did not appear on {link} in {}", host.name);
}
