//! Ports published through netd: reached from another host via the host's
//! fabric address, from the host's own localhost and from containers on the
//! bridge (hairpin, the container itself too); TCP, UDP, SCTP where the kernel
//! has it, and a range; host ports claimed once; withdrawal; a flushed
//! ruleset re-applied (periodic check, `netd reconcile`, SIGHUP); a restart
//! that does not duplicate a rule; the iptables backend.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

mod netd_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use netd_support::{default_args, eventually, Netd, TestDir};
use world::{require_root, run_in, sctp_available, sctp_part, sctp_via, tcp_via, udp_via, World};

fn sa(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn flush_ruleset(netns: &plumb::Netns) {
    let out = run_in(netns, "nft", &["flush", "ruleset"], Duration::from_secs(10)).unwrap();
    assert!(out.success, "{}", out.stderr);
}

fn weft_table(netns: &plumb::Netns) -> String {
    let out = run_in(
        netns,
        "nft",
        &["list", "table", "inet", "weft"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    out.stdout
}

/// GET /metrics from inside `netns`.
fn scrape(netns: &plumb::Netns, addr: SocketAddr) -> String {
    let stream = netns
        .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn published_ports_are_reached_from_outside_localhost_and_the_bridge() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.66.9.0/24");
    args.extend(["--metrics-addr".into(), "127.0.0.1:9588".into()]);
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    let r1 = netd
        .attach(
            &c1.netns_name,
            "c1",
            &[
                "-p",
                "8080:80",
                "-p",
                "5353:53/udp",
                "-p",
                "8000-8002:9000-9002",
            ],
        )
        .unwrap();
    assert_eq!(r1["ports"].as_array().unwrap().len(), 3);
    netd.attach(&c2.netns_name, "c2", &[]).unwrap();
    let hairpin = world::ip_json(
        &a.netns,
        &[
            "-d",
            "link",
            "show",
            r1["interfaces"][0]["name"].as_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(hairpin[0]["linkinfo"]["info_slave_data"]["hairpin"], true);

    // From another host, through a's fabric address: TCP, UDP and a range.
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).unwrap();
    udp_via(&c1.netns, sa("0.0.0.0:53"), &b.netns, sa("198.18.0.1:5353")).unwrap();
    tcp_via(
        &c1.netns,
        sa("0.0.0.0:9001"),
        &b.netns,
        sa("198.18.0.1:8001"),
    )
    .unwrap();
    tcp_via(
        &c1.netns,
        sa("0.0.0.0:9002"),
        &b.netns,
        sa("198.18.0.1:8002"),
    )
    .unwrap();
    // From the host's own localhost.
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &a.netns, sa("127.0.0.1:8080")).unwrap();
    // Hairpin: a neighbour on the bridge, and the container itself.
    tcp_via(
        &c1.netns,
        sa("0.0.0.0:80"),
        &c2.netns,
        sa("198.18.0.1:8080"),
    )
    .unwrap();
    tcp_via(
        &c1.netns,
        sa("0.0.0.0:80"),
        &c1.netns,
        sa("198.18.0.1:8080"),
    )
    .unwrap();
    if sctp_part("publishing an SCTP port") {
        netd.json(&["publish", "c2", "-p", "7000:7000/sctp"])
            .unwrap();
        sctp_via(
            &c2.netns,
            sa("0.0.0.0:7000"),
            &b.netns,
            sa("198.18.0.1:7000"),
        )
        .unwrap();
        netd.json(&["unpublish", "c2", "-p", "7000:7000/sctp"])
            .unwrap();
    }

    // A host port is claimed once; the refusal changes nothing.
    let before = weft_table(&a.netns);
    let err = netd.fails(&["publish", "c2", "-p", "8080:81"]).unwrap();
    assert!(
        err.contains("host port 8080 (tcp) is already published by container c1"),
        "{err}"
    );
    let err = netd.fails(&["publish", "c2", "-p", "8001:81"]).unwrap();
    assert!(err.contains("already published by container c1"), "{err}");
    let err = netd
        .fails(&[
            "attach",
            &a.container("c3").unwrap().netns_name,
            "--name",
            "c3",
            "-p",
            "5353:1/udp",
        ])
        .unwrap();
    assert!(err.contains("already published"), "{err}");
    // The CLI parses `-p` itself: a bad mapping never reaches the daemon.
    let err = netd.fails(&["publish", "c2", "-p", "80:81:82"]).unwrap();
    assert!(
        err.contains("invalid port mapping \"80:81:82\": \"80\" is not an IP address"),
        "{err}"
    );
    assert_eq!(weft_table(&a.netns), before);
    assert_eq!(netd.endpoints().unwrap().len(), 2);

    // Publish and withdraw on a running container.
    let published = netd.json(&["publish", "c2", "-p", "8081:81"]).unwrap();
    assert_eq!(published[0]["host_ports"]["start"], 8081);
    tcp_via(&c2.netns, sa("0.0.0.0:81"), &b.netns, sa("198.18.0.1:8081")).unwrap();
    let metrics = scrape(&a.netns, sa("127.0.0.1:9588"));
    assert!(
        metrics.contains("weft_netd_published_ports 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_netd_containers 2\n"), "{metrics}");
    assert!(
        metrics.contains("weft_netd_ipam_addresses_in_use{subnet=\"10.66.9.0/24\"} 3\n"),
        "{metrics}"
    );
    netd.json(&["unpublish", "c2", "-p", "8081:81"]).unwrap();
    assert!(tcp_via(&c2.netns, sa("0.0.0.0:81"), &b.netns, sa("198.18.0.1:8081")).is_err());
    // Detach withdraws the container's ports.
    netd.json(&["detach", "c1"]).unwrap();
    assert!(
        !weft_table(&a.netns).contains("8080"),
        "c1's ports outlived it"
    );
}

#[tokio::test]
async fn a_flushed_ruleset_comes_back_and_a_restart_duplicates_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    // No periodic check in the first part: reconcile and SIGHUP do the work.
    let mut args = vec![
        "--subnet".to_string(),
        "10.66.10.0/24".into(),
        "--reconcile-interval-secs".into(),
        "3600".into(),
    ];
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let c1 = a.container("c1").unwrap();
    netd.attach(&c1.netns_name, "c1", &["-p", "8080:80"])
        .unwrap();
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).unwrap();
    let table = weft_table(&a.netns);

    flush_ruleset(&a.netns);
    assert!(tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).is_err());
    let report = netd.json(&["reconcile"]).unwrap();
    assert!(
        report["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "firewall_reapplied"),
        "{report}"
    );
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).unwrap();
    assert_eq!(weft_table(&a.netns), table);

    flush_ruleset(&a.netns);
    netd.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || run_in(
            &a.netns,
            "nft",
            &["list", "table", "inet", "weft"],
            Duration::from_secs(5)
        )
        .map(|o| o.success)
        .unwrap_or(false)),
        "SIGHUP did not re-apply:\n{}",
        netd.log_text()
    );
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).unwrap();

    // The periodic check notices within seconds.
    netd.terminate().unwrap();
    args[3] = "1".into();
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    assert_eq!(weft_table(&a.netns), table, "a restart changed the rules");
    flush_ruleset(&a.netns);
    assert!(
        eventually(Duration::from_secs(6), || tcp_via(
            &c1.netns,
            sa("0.0.0.0:80"),
            &b.netns,
            sa("198.18.0.1:8080")
        )
        .is_ok()),
        "the flushed ruleset was not re-applied:\n{}",
        netd.log_text()
    );
    assert_eq!(weft_table(&a.netns), table);
}

#[tokio::test]
async fn the_iptables_backend_publishes_too() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.66.11.0/24");
    args.extend(["--firewall".into(), "iptables".into()]);
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    netd.attach(
        &c1.netns_name,
        "c1",
        &["-p", "8080:80", "-p", "5353:53/udp"],
    )
    .unwrap();
    netd.attach(&c2.netns_name, "c2", &[]).unwrap();
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).unwrap();
    udp_via(&c1.netns, sa("0.0.0.0:53"), &b.netns, sa("198.18.0.1:5353")).unwrap();
    tcp_via(
        &c1.netns,
        sa("0.0.0.0:80"),
        &c2.netns,
        sa("198.18.0.1:8080"),
    )
    .unwrap();
    let rules = run_in(
        &a.netns,
        "iptables-save",
        &["-t", "nat"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(rules.stdout.contains("WEFT-"), "{}", rules.stdout);
    netd.json(&["detach", "c1"]).unwrap();
    assert!(tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).is_err());
}

/// A world for the SCTP tests: netd on host a (`firewall_args` choose the
/// backend) with c1 publishing SCTP 7000 and the range 7100-7101 → 7200-7201,
/// and c2 beside it; every way in checked to reach c1.
struct SctpPorts {
    _world: World,
    a: world::Host,
    b: world::Host,
    _dir: TestDir,
    netd: Netd,
    c1: world::Container,
    c2: world::Container,
}

const SCTP_SERVED: &str = "0.0.0.0:7000";

async fn sctp_ports_published(subnet: &str, firewall_args: &[&str]) -> SctpPorts {
    assert!(sctp_available(), "the VM's kernel should have SCTP");
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args(subnet);
    args.extend(firewall_args.iter().map(|a| a.to_string()));
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    netd.attach(
        &c1.netns_name,
        "c1",
        &["-p", "7000:7000/sctp", "-p", "7100-7101:7200-7201/sctp"],
    )
    .unwrap();
    netd.attach(&c2.netns_name, "c2", &[]).unwrap();
    let served = sa(SCTP_SERVED);

    // From another host, from the host's localhost, from a neighbour and
    // from the container itself (hairpin), and the last port of a range.
    sctp_via(&c1.netns, served, &b.netns, sa("198.18.0.1:7000")).unwrap();
    sctp_via(&c1.netns, served, &a.netns, sa("127.0.0.1:7000")).unwrap();
    sctp_via(&c1.netns, served, &c2.netns, sa("198.18.0.1:7000")).unwrap();
    sctp_via(&c1.netns, served, &c1.netns, sa("198.18.0.1:7000")).unwrap();
    sctp_via(
        &c1.netns,
        sa("0.0.0.0:7201"),
        &b.netns,
        sa("198.18.0.1:7101"),
    )
    .unwrap();
    SctpPorts {
        _world: world,
        a,
        b,
        _dir: dir,
        netd,
        c1,
        c2,
    }
}

/// This machine's kernel has no SCTP, so the SCTP part of the first test is
/// skipped here; scripts/vm-test runs this one in a VM with Debian's kernel.
#[tokio::test]
#[ignore = "needs SCTP: run by scripts/vm-test"]
async fn vm_sctp_ports_are_published_like_tcp() {
    require_root!();
    let ports = sctp_ports_published("10.66.12.0/24", &[]).await;
    // Bound by reference: the world and its files live as long as `ports`.
    let SctpPorts {
        a, b, netd, c1, c2, ..
    } = &ports;
    let served = sa(SCTP_SERVED);

    // TCP on the same number is a different port.
    netd.json(&["publish", "c2", "-p", "7000:7000/tcp"])
        .unwrap();
    tcp_via(&c2.netns, served, &b.netns, sa("198.18.0.1:7000")).unwrap();
    sctp_via(&c1.netns, served, &b.netns, sa("198.18.0.1:7000")).unwrap();

    // nft names the protocol only where /etc/protocols exists (not in the VM).
    let sctp_7000 = |table: &str| table.contains("sctp . 7000") || table.contains("132 . 7000");
    let table = weft_table(&a.netns);
    assert!(sctp_7000(&table), "{table}");
    netd.json(&["unpublish", "c1", "-p", "7000:7000/sctp"])
        .unwrap();
    assert!(sctp_via(&c1.netns, served, &b.netns, sa("198.18.0.1:7000")).is_err());
    let table = weft_table(&a.netns);
    assert!(!sctp_7000(&table), "{table}");
}

/// The iptables backend's SCTP ports (WEFT-* chains, `-p sctp`), reached the
/// same ways, and withdrawn on unpublish. Needs SCTP: run by scripts/vm-test.
#[tokio::test]
#[ignore = "needs SCTP: run by scripts/vm-test"]
async fn vm_sctp_ports_are_published_by_the_iptables_backend() {
    require_root!();
    let ports = sctp_ports_published("10.66.13.0/24", &["--firewall", "iptables"]).await;
    // Bound by reference: the world and its files live as long as `ports`.
    let SctpPorts { a, b, netd, c1, .. } = &ports;
    let nat = || {
        run_in(
            &a.netns,
            "iptables-save",
            &["-t", "nat"],
            Duration::from_secs(10),
        )
        .unwrap()
        .stdout
    };
    let rules = nat();
    assert!(
        rules.contains("-p sctp") && rules.contains("--dport 7000"),
        "{rules}"
    );
    netd.json(&["unpublish", "c1", "-p", "7000:7000/sctp"])
        .unwrap();
    assert!(sctp_via(&c1.netns, sa(SCTP_SERVED), &b.netns, sa("198.18.0.1:7000")).is_err());
    let rules = nat();
    assert!(!rules.contains("--dport 7000 "), "{rules}");
}

/// `WEFT_NFT_EXEC=1`: the nft binary instead of libnftables, and port map
/// elements as nft text instead of nfnetlink messages. Both fallbacks publish
/// (a port, a UDP port, a range) and withdraw like the default paths.
#[tokio::test]
async fn the_nft_binary_and_text_fallbacks_publish_and_withdraw() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start_with_env(
        &world,
        &a,
        &dir.0,
        &default_args("10.66.14.0/24"),
        &[("WEFT_NFT_EXEC", "1"), ("RUST_LOG", "debug")],
    )
    .unwrap();
    let c1 = a.container("c1").unwrap();
    netd.attach(
        &c1.netns_name,
        "c1",
        &[
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "-p",
            "9000-9001:90-91",
        ],
    )
    .unwrap();
    tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).unwrap();
    udp_via(&c1.netns, sa("0.0.0.0:53"), &b.netns, sa("198.18.0.1:5353")).unwrap();
    tcp_via(&c1.netns, sa("0.0.0.0:91"), &b.netns, sa("198.18.0.1:9001")).unwrap();
    let table = weft_table(&a.netns);
    assert!(table.contains(". 8080 :"), "{table}");
    netd.json(&["unpublish", "c1", "-p", "8080:80"]).unwrap();
    assert!(tcp_via(&c1.netns, sa("0.0.0.0:80"), &b.netns, sa("198.18.0.1:8080")).is_err());
    let table = weft_table(&a.netns);
    assert!(!table.contains(". 8080 :"), "{table}");
    // The elements went as text (nft's `add element`), not over nfnetlink.
    let log = netd.log_text();
    assert!(log.contains("add element inet weft"), "{log}");
    assert!(!log.contains("(nfnetlink)"), "{log}");
}

/// IPv6 has no `route_localnet`: netd itself answers on `[::1]` for ports
/// published on all addresses and relays to the container (IPv4-only and
/// dual-stack), until they are withdrawn; a restarted netd answers again.
#[tokio::test]
async fn ipv6_localhost_reaches_published_ports_through_the_daemon() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir_a = TestDir::new(&world).unwrap();
    let dir_b = dir_a.0.join("b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let mut args = default_args("10.66.13.0/24");
    args.extend(["--metrics-addr".into(), "127.0.0.1:9589".into()]);
    let netd = Netd::start(&world, &a, &dir_a.0, &args).unwrap();
    let c1 = a.container("c1").unwrap();
    netd.attach(
        &c1.netns_name,
        "c1",
        &[
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "-p",
            "8000-8001:9000-9001",
            "-p",
            "127.0.0.1:8090:80",
        ],
    )
    .unwrap();
    // A host program already holds [::1]:8070: the port is published anyway.
    let holder = a
        .netns
        .run(|| std::net::TcpListener::bind("[::1]:8070"))
        .unwrap()
        .unwrap();
    netd.json(&["publish", "c1", "-p", "8070:80"]).unwrap();

    let served = sa("0.0.0.0:80");
    let peer = tcp_via(&c1.netns, served, &a.netns, sa("[::1]:8080")).unwrap();
    assert_eq!(
        peer.ip().to_string(),
        "10.66.13.1",
        "relayed from the gateway"
    );
    udp_via(&c1.netns, sa("0.0.0.0:53"), &a.netns, sa("[::1]:5353")).unwrap();
    tcp_via(&c1.netns, sa("0.0.0.0:9001"), &a.netns, sa("[::1]:8001")).unwrap();
    // Published on 127.0.0.1 only, and held by someone else: not relayed.
    assert!(tcp_via(&c1.netns, served, &a.netns, sa("[::1]:8090")).is_err());
    tcp_via(&c1.netns, served, &a.netns, sa("127.0.0.1:8070")).unwrap();
    drop(holder);
    assert!(
        netd.log_text().contains("cannot relay [::1]:8070/tcp"),
        "{}",
        netd.log_text()
    );
    let metrics = scrape(&a.netns, sa("127.0.0.1:9589"));
    assert!(
        metrics.contains("weft_netd_ipv6_localhost_relays 4\n"),
        "{metrics}"
    );

    // Withdrawn: refused. A restarted netd relays what is published, and
    // now gets the port the host program let go of.
    netd.json(&["unpublish", "c1", "-p", "8000-8001:9000-9001"])
        .unwrap();
    assert!(tcp_via(&c1.netns, sa("0.0.0.0:9001"), &a.netns, sa("[::1]:8001")).is_err());
    netd.terminate().unwrap();
    let netd = Netd::start(&world, &a, &dir_a.0, &args).unwrap();
    tcp_via(&c1.netns, served, &a.netns, sa("[::1]:8080")).unwrap();
    tcp_via(&c1.netns, served, &a.netns, sa("[::1]:8070")).unwrap();
    netd.json(&["detach", "c1"]).unwrap();
    assert!(tcp_via(&c1.netns, served, &a.netns, sa("[::1]:8080")).is_err());

    // A dual-stack container is reached over IPv6.
    let mut args6 = default_args("10.66.14.0/24");
    args6.extend(["--subnet6".into(), "fd66:14::/64".into()]);
    let netd_b = Netd::start(&world, &b, &dir_b, &args6).unwrap();
    let c2 = b.container("c2").unwrap();
    netd_b
        .attach(&c2.netns_name, "c2", &["-p", "8080:80"])
        .unwrap();
    let peer = tcp_via(&c2.netns, sa("[::]:80"), &b.netns, sa("[::1]:8080")).unwrap();
    assert_eq!(peer.ip().to_string(), "fd66:14::1", "relayed over IPv6");
}
