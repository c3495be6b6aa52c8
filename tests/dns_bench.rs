//! The DNS benchmark `scripts/bench-dns` runs (ignored in ordinary test
//! runs): netd's DNS server against aardvark-dns (Debian's, as podman runs
//! it) and dnsmasq, answering the same 100 names on the same machine in the
//! same run, asked by dnsperf from a container attached to netd.
//!
//! The world: host `a` runs netd (the release binary from
//! WEFT_BENCH_NETD; the per-source rate limit raised so that it does not
//! cap the benchmark) with 100 named interfaces attached in one namespace,
//! and aardvark-dns and dnsmasq on addresses of the host's loopback: the
//! client's queries take the same path (bridge, host namespace) to all
//! three. Per server: dnsperf's queries/s, the CPU the server used per 1000
//! queries (/proc/PID/stat before and after), and p50/p99 of sequential
//! round trips from the client (p99 also until the answer reached the
//! client's socket, without the client's own wait to be scheduled). Each
//! server runs in a session of its own. The servers take turns, one second of
//! dnsperf (and a quarter of the round trips) each, so that a change in
//! the machine's load during the run (other builds come and go) falls on
//! all three alike rather than on whichever ran at that moment.

mod netd_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netd_support::TestDir;
use plumb::{Netlink, Netns};
use world::{require_root, run_in, World};

const NAMES: usize = 100;
const SUBNET: &str = "10.66.7.0/24";
const GATEWAY: &str = "10.66.7.1";
const AARDVARK: &str = "172.31.7.1";
const DNSMASQ: &str = "172.31.7.2";
const AARDVARK_BIN: &str = "/usr/lib/podman/aardvark-dns";
const ROUND_TRIPS: usize = 2000;
/// The round trips are measured in this many turns per server.
const ROUND_TRIP_TURNS: usize = 4;

/// aardvark-dns detaches from its parent; it is ours (the PID its pid file
/// names), killed by that PID when the benchmark ends however it ends.
struct Daemonized(Option<u32>);

impl Drop for Daemonized {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) takes no pointers; the PID is the aardvark-dns
            // this benchmark started, read from its pid file moments ago.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
}

/// Starts `command` in a session of its own, as aardvark-dns puts itself
/// and as a service manager starts a daemon. With the kernel's autogroups
/// a session shares the CPU as one: a server left in the benchmark's
/// session would share its part with dnsperf, and aardvark-dns would not.
fn own_session(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid(2) is async-signal-safe, as pre_exec requires, and
    // touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// CPU time (user + system) of `pid` so far, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server runs");
    let after = &stat[stat.rfind(')').expect("stat has a comm") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the first after the comm is field 3.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

/// A query for `name` A IN with ID `id`, in DNS's wire format.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// One answer's round trip, in µs: as the client program saw it, and until
/// the answer reached the client's socket (the kernel's receive timestamp),
/// which leaves out how long the client itself waited to be scheduled.
#[derive(Clone, Copy)]
struct RoundTrip {
    seen: f64,
    at_socket: f64,
}

/// `count` sequential round trips from `netns` to `server`, each answer
/// checked (same ID, NOERROR, one answer at least).
fn round_trips(netns: &Netns, server: IpAddr, names: &[String], count: usize) -> Vec<RoundTrip> {
    let names = names.to_vec();
    netns
        .run(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect(SocketAddr::new(server, 53)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let on: libc::c_int = 1;
            // SAFETY: setsockopt(2) reads an int from a live local.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
            let mut buf = [0u8; 512];
            let mut took = Vec::with_capacity(count);
            for i in 0..count {
                let id = i as u16;
                let q = query(id, &names[i % names.len()]);
                let sent_at = SystemTime::now();
                let start = Instant::now();
                socket.send(&q).unwrap();
                let (n, arrived) = recv_with_timestamp(&socket, &mut buf);
                let seen = start.elapsed().as_secs_f64() * 1e6;
                let at_socket = arrived
                    .duration_since(sent_at)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e6);
                took.push(RoundTrip { seen, at_socket });
                assert!(n >= 12 && buf[..2] == id.to_be_bytes(), "answer {i}");
                assert_eq!(buf[3] & 0x0f, 0, "answer {i} is not NOERROR");
                assert!(
                    u16::from_be_bytes([buf[6], buf[7]]) >= 1,
                    "answer {i} is empty"
                );
            }
            took
        })
        .unwrap()
}

/// Receives one datagram and the time the kernel took it in (SO_TIMESTAMPNS).
fn recv_with_timestamp(socket: &UdpSocket, buf: &mut [u8]) -> (usize, SystemTime) {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: all-zero bytes are a valid msghdr; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `buf` and `control`, alive for the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    assert!(
        n >= 0,
        "an answer within 2 s: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in,
    // bounded by msg_controllen.
    let stamp = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(
            !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS,
            "no receive timestamp"
        );
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>())
    };
    let since_epoch = Duration::new(stamp.tv_sec as u64, stamp.tv_nsec as u32);
    (n as usize, UNIX_EPOCH + since_epoch)
}

/// One server's figures, summed over its turns.
#[derive(Default)]
struct Figures {
    completed: u64,
    lost: u64,
    /// dnsperf's run time, seconds.
    run_time: f64,
    cpu_ms: f64,
    round_trips: Vec<RoundTrip>,
}

impl Figures {
    fn qps(&self) -> f64 {
        self.completed as f64 / self.run_time
    }

    fn cpu_per_1000(&self) -> f64 {
        self.cpu_ms * 1000.0 / self.completed as f64
    }

    /// The round trip at quantile `p`, µs, as `part` of it gives.
    fn round_trip(&self, p: f64, part: fn(&RoundTrip) -> f64) -> f64 {
        let mut took: Vec<f64> = self.round_trips.iter().map(part).collect();
        took.sort_by(|a, b| a.partial_cmp(b).unwrap());
        took[((took.len() as f64 * p) as usize).min(took.len() - 1)]
    }
}

fn dnsperf_field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("dnsperf printed no {key:?}:\n{out}"))
}

/// One turn of dnsperf (`-l seconds`) against `server`, added to `f`, with
/// the CPU time the server (`pid`) used meanwhile.
fn dnsperf_turn(
    client: &Netns,
    server: &str,
    pid: u32,
    data: &Path,
    seconds: u32,
    f: &mut Figures,
) {
    let before = cpu_ms(pid);
    let limit = seconds.to_string();
    let out = run_in(
        client,
        "dnsperf",
        &[
            "-s",
            server,
            "-d",
            data.to_str().unwrap(),
            "-l",
            &limit,
            "-T",
            "1",
            "-c",
            "1",
            "-q",
            "64",
        ],
        Duration::from_secs(u64::from(seconds) + 30),
    )
    .unwrap();
    f.cpu_ms += cpu_ms(pid) - before;
    assert!(out.success, "dnsperf against {server}: {}", out.stderr);
    let completed: u64 = dnsperf_field(&out.stdout, "Queries completed:")
        .parse()
        .unwrap();
    assert!(completed > 0, "{}", out.stdout);
    f.completed += completed;
    f.lost += dnsperf_field(&out.stdout, "Queries lost:")
        .parse::<u64>()
        .unwrap();
    f.run_time += dnsperf_field(&out.stdout, "Run time (s):")
        .parse::<f64>()
        .unwrap();
}

/// `netd ARGS --socket S` in the host; panics with netd's words on failure.
fn netd_cli(bin: &Path, host: &Netns, socket: &Path, args: &[&str]) -> String {
    let mut full = args.to_vec();
    full.extend(["--socket", socket.to_str().unwrap()]);
    let out = run_in(host, bin.to_str().unwrap(), &full, Duration::from_secs(30)).unwrap();
    assert!(out.success, "netd {args:?}: {}", out.stderr);
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-dns runs it"]
async fn bench_dns() {
    require_root!();
    let seconds: u32 = std::env::var("BENCH_DNS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .clamp(1, 10);
    let netd_bin: PathBuf = std::env::var_os("WEFT_BENCH_NETD")
        .map(PathBuf::from)
        .unwrap_or_else(|| world::workspace_bin("netd"));
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let empty_resolv = dir.0.join("resolv.conf");
    std::fs::write(&empty_resolv, "").unwrap();
    let socket = dir.0.join("netd.sock");
    let mut netd = Command::new(&netd_bin);
    netd.arg("run")
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .arg("--socket")
        .arg(&socket)
        .args(["--subnet", SUBNET, "--dns-rate-limit", "100000000"])
        .arg("--dns-resolv-conf")
        .arg(&empty_resolv)
        .env_remove("WEFT_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    own_session(&mut netd);
    let netd_pid = world.spawn(&host.netns, netd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "netd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 100 names on interfaces of one namespace, and the client.
    let names_ns = host.container("names").unwrap();
    for i in 0..NAMES {
        let (id, ifname) = (format!("c{i}"), format!("e{i}"));
        netd_cli(
            &netd_bin,
            &host.netns,
            &socket,
            &[
                "attach",
                &names_ns.netns_name,
                "--id",
                &id,
                "--name",
                &id,
                "--ifname",
                &ifname,
            ],
        );
    }
    let client = host.container("client").unwrap();
    let attached = netd_cli(
        &netd_bin,
        &host.netns,
        &socket,
        &["attach", &client.netns_name, "--id", "client", "--json"],
    );
    let attached: serde_json::Value = serde_json::from_str(&attached).unwrap();
    let client_ip = attached["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let rows: serde_json::Value = serde_json::from_str(&netd_cli(
        &netd_bin,
        &host.netns,
        &socket,
        &["names", "--json"],
    ))
    .unwrap();
    let ips: BTreeMap<String, String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["ipv4"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ips.len(), NAMES, "{rows}");
    let names: Vec<String> = ips.keys().cloned().collect();

    // The same names for aardvark-dns (the client listed too, as podman
    // lists every container of the network) and dnsmasq.
    let nl = Netlink::open(&host.netns).await.unwrap();
    for ip in [AARDVARK, DNSMASQ] {
        nl.add_address("lo", format!("{ip}/32").parse().unwrap(), false)
            .await
            .unwrap();
    }
    let aardvark_dir = dir.0.join("aardvark");
    std::fs::create_dir_all(&aardvark_dir).unwrap();
    let mut config = format!("{AARDVARK}\nclient {client_ip}  client\n");
    let mut hosts = String::new();
    for (name, ip) in &ips {
        config.push_str(&format!("{name} {ip}  {name}\n"));
        hosts.push_str(&format!("{ip} {name}\n"));
    }
    std::fs::write(aardvark_dir.join("weftbench"), config).unwrap();
    let hosts_file = dir.0.join("hosts");
    std::fs::write(&hosts_file, hosts).unwrap();
    let mut aardvark = Command::new(AARDVARK_BIN);
    aardvark
        .arg("--config")
        .arg(&aardvark_dir)
        .args(["-p", "53", "run"])
        .stdin(Stdio::null());
    let launcher = world.spawn(&host.netns, aardvark).unwrap();
    let pid_file = aardvark_dir.join("aardvark.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let aardvark_pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "aardvark-dns wrote no pid file");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _aardvark = Daemonized((aardvark_pid != launcher).then_some(aardvark_pid));
    let mut dnsmasq = Command::new("dnsmasq");
    dnsmasq
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--bind-interfaces",
        ])
        .arg(format!("--listen-address={DNSMASQ}"))
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .stdin(Stdio::null());
    own_session(&mut dnsmasq);
    let dnsmasq_pid = world.spawn(&host.netns, dnsmasq).unwrap();

    // dnsperf's input: every name once, A.
    let data = dir.0.join("queries");
    let lines: String = names.iter().map(|n| format!("{n} A\n")).collect();
    std::fs::write(&data, lines).unwrap();
    // Each server answers a name before it is measured.
    for server in [GATEWAY, AARDVARK, DNSMASQ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = run_in(
                &client.netns,
                "dig",
                &[
                    &format!("@{server}"),
                    "+short",
                    "+tries=1",
                    "+time=1",
                    "c42",
                ],
                Duration::from_secs(10),
            )
            .unwrap();
            if out.stdout.trim() == ips["c42"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{server} does not answer c42: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let servers = [
        ("netd", GATEWAY, netd_pid),
        ("aardvark-dns 1.4", AARDVARK, aardvark_pid),
        ("dnsmasq", DNSMASQ, dnsmasq_pid),
    ];
    let mut results: Vec<(&str, Figures)> = servers
        .iter()
        .map(|(label, _, _)| (*label, Figures::default()))
        .collect();
    for _ in 0..seconds {
        for ((_, server, pid), (_, f)) in servers.iter().zip(&mut results) {
            dnsperf_turn(&client.netns, server, *pid, &data, 1, f);
        }
    }
    for _ in 0..ROUND_TRIP_TURNS {
        for ((_, server, _), (_, f)) in servers.iter().zip(&mut results) {
            let server = server.parse().unwrap();
            let took = round_trips(
                &client.netns,
                server,
                &names,
                ROUND_TRIPS / ROUND_TRIP_TURNS,
            );
            f.round_trips.extend(took);
        }
    }
    let netd = &results[0].1;
    println!(
        "\n{NAMES} names, per server {seconds} turns of dnsperf -l 1 -T 1 -c 1 -q 64 from a container and {ROUND_TRIPS} sequential round trips in {ROUND_TRIP_TURNS} turns, the servers taking turns\n"
    );
    println!("| server | queries/s | lost | CPU ms per 1000 queries | p50 µs | p99 µs | p99 µs at the client's socket | netd's queries/s ÷ this | this CPU ÷ netd's |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (label, f) in &results {
        println!(
            "| {label} | {:.0} | {} of {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            f.qps(),
            f.lost,
            f.completed + f.lost,
            f.cpu_per_1000(),
            f.round_trip(0.50, |t| t.seen),
            f.round_trip(0.99, |t| t.seen),
            f.round_trip(0.99, |t| t.at_socket),
            netd.qps() / f.qps(),
            f.cpu_per_1000() / netd.cpu_per_1000(),
        );
    }
}
