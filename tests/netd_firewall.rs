//! netd's firewall policy (`netd::ports::firewall`) against the kernel, both
//! backends, nftables and iptables:
//! published ports (TCP, UDP, SCTP where the kernel has it, IPv6, a port
//! range, a specific host address) reached from another host, from the host's
//! own localhost and from containers through the host address (hairpin);
//! masquerade to the outside but not to the cluster; withdrawal; recovery
//! after `nft flush ruleset`; idempotent sync; clear errors.
//!
//! World: host a with bridge weft0 (10.9.0.1/24, fd00:9::1/64) and containers
//! c1 (10.9.0.2) and c2 (10.9.0.3, fd00:9::3); host b on the fabric plays the
//! outside world and, through 10.10.0.1 on its loopback, a cluster peer.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netd::ports::firewall::{BackendKind, NetworkRules};
use netd::PublishedPort;
use plumb::{LinkOptions, Netlink, Netns, Route};
use world::{require_root, run_in, sctp_part, sctp_via, tcp_via, udp_via, Container, Host, World};

const BRIDGE: &str = "weft0";

fn up() -> LinkOptions {
    LinkOptions {
        up: true,
        ..Default::default()
    }
}

fn sa(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net() -> NetworkRules {
    NetworkRules {
        bridge: BRIDGE.into(),
        subnets: vec![
            "10.9.0.0/24".parse().unwrap(),
            "fd00:9::/64".parse().unwrap(),
        ],
        masquerade: true,
        cluster_ranges: vec![
            "10.9.0.0/16".parse().unwrap(),
            "10.10.0.0/16".parse().unwrap(),
        ],
    }
}

struct Site {
    world: World,
    a: Host,
    b: Host,
    c1: Container,
    c2: Container,
}

/// Builds the world described at the top of this file.
async fn site() -> Site {
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    plumb::sysctl::write(&a.netns, "net.ipv4.ip_forward", "1").unwrap();
    plumb::sysctl::write(&a.netns, "net.ipv6.conf.all.forwarding", "1").unwrap();
    let nl = Netlink::open(&a.netns).await.unwrap();
    nl.add_bridge(BRIDGE, &up()).await.unwrap();
    nl.add_address(BRIDGE, "10.9.0.1/24".parse().unwrap(), false)
        .await
        .unwrap();
    nl.add_address(BRIDGE, "fd00:9::1/64".parse().unwrap(), true)
        .await
        .unwrap();
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    for (c, v4, v6) in [
        (&c1, "10.9.0.2/24", "fd00:9::2/64"),
        (&c2, "10.9.0.3/24", "fd00:9::3/64"),
    ] {
        let port = format!("v-{}", c.name);
        nl.add_veth(
            &port,
            &up(),
            "eth0",
            &LinkOptions {
                netns: Some(c.netns.clone()),
                up: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        nl.attach_to_bridge(&port, BRIDGE).await.unwrap();
        // A container reaching its own published port comes back out of the
        // port it entered by: with br_netfilter (on by default in every
        // namespace) the DNAT happens at the bridge, which then needs hairpin
        // mode on the port, as the CNI bridge plugin's hairpinMode sets it.
        let out = run_in(
            &a.netns,
            "ip",
            &[
                "link",
                "set",
                "dev",
                &port,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ],
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.success, "hairpin on {port}: {}", out.stderr);
        let cnl = Netlink::open(&c.netns).await.unwrap();
        cnl.add_address("eth0", v4.parse().unwrap(), false)
            .await
            .unwrap();
        cnl.add_address("eth0", v6.parse().unwrap(), true)
            .await
            .unwrap();
        for gateway in ["10.9.0.1", "fd00:9::1"] {
            cnl.add_route(&Route {
                gateway: Some(ip(gateway)),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    // b: 10.10.0.1 stands for a container on another cluster host; the
    // overlay's routes are plain routes over the fabric here.
    let bnl = Netlink::open(&b.netns).await.unwrap();
    bnl.add_address("lo", "10.10.0.1/32".parse().unwrap(), false)
        .await
        .unwrap();
    bnl.add_route(&Route {
        destination: Some("10.9.0.0/24".parse().unwrap()),
        gateway: Some(IpAddr::V4(a.ip)),
        ..Default::default()
    })
    .await
    .unwrap();
    nl.add_route(&Route {
        destination: Some("10.10.0.0/24".parse().unwrap()),
        gateway: Some(IpAddr::V4(b.ip)),
        ..Default::default()
    })
    .await
    .unwrap();
    Site {
        world,
        a,
        b,
        c1,
        c2,
    }
}

/// Runs a tool inside `ns` and returns its stdout. Unlike `world::run_in` it
/// drains the pipes while waiting, so listings beyond a pipe's 64 KiB work.
fn tool_stdout(ns: &Netns, program: &str, args: &[&str]) -> String {
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = ns.run(move || command.spawn()).unwrap().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What the kernel publishes, read back with nft or iptables-save rather than
/// plumb: "tcp 198.18.0.1:8081 -> 10.9.0.3:81", "udp *:5353 -> 10.9.0.3:53".
fn published_in_kernel(kind: BackendKind, ns: &Netns) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    match kind {
        BackendKind::Nftables => {
            let listing = tool_stdout(ns, "nft", &["-j", "list", "table", "inet", "weft"]);
            let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
            for object in listing["nftables"].as_array().unwrap() {
                let Some(map) = object.get("map") else {
                    continue;
                };
                for elem in map["elem"].as_array().into_iter().flatten() {
                    let key = elem[0]["concat"].as_array().unwrap();
                    let value = elem[1]["concat"].as_array().unwrap();
                    let proto = key[0].as_str().unwrap();
                    let host = match key.len() {
                        3 => SocketAddr::new(
                            ip(key[1].as_str().unwrap()),
                            key[2].as_u64().unwrap() as u16,
                        )
                        .to_string(),
                        _ => format!("*:{}", key[1].as_u64().unwrap()),
                    };
                    let target = SocketAddr::new(
                        ip(value[0].as_str().unwrap()),
                        value[1].as_u64().unwrap() as u16,
                    );
                    found.insert(format!("{proto} {host} -> {target}"));
                }
            }
        }
        BackendKind::Iptables => {
            for tool in ["iptables-save", "ip6tables-save"] {
                let saved = tool_stdout(ns, tool, &["-t", "nat"]);
                for line in saved.lines().filter(|l| l.starts_with("-A WEFT-DNAT ")) {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let after =
                        |flag: &str| words.iter().position(|w| *w == flag).map(|i| words[i + 1]);
                    let port: u16 = after("--dport").unwrap().parse().unwrap();
                    let host = match after("-d") {
                        Some(d) => {
                            let addr = ip(d.split('/').next().unwrap());
                            SocketAddr::new(addr, port).to_string()
                        }
                        None => format!("*:{port}"),
                    };
                    let target: SocketAddr = after("--to-destination").unwrap().parse().unwrap();
                    found.insert(format!("{} {host} -> {target}", after("-p").unwrap()));
                }
            }
        }
    }
    found
}

/// The whole ruleset as the tools print it, for comparing before and after.
fn ruleset(kind: BackendKind, ns: &Netns) -> String {
    let tools: &[(&str, &[&str])] = match kind {
        BackendKind::Nftables => &[("nft", &["list", "ruleset"])],
        BackendKind::Iptables => &[("iptables-save", &[]), ("ip6tables-save", &[])],
    };
    let mut text = String::new();
    for (tool, args) in tools {
        for line in tool_stdout(ns, tool, args)
            .lines()
            .filter(|l| !l.starts_with('#'))
        {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn published_ports_end_to_end(kind: BackendKind) {
    let Site {
        world,
        a,
        b,
        c1,
        c2,
    } = site().await;
    let fw = kind.open(a.netns.clone());
    let net = net();
    let c1_ip = ip("10.9.0.2");
    let c2_ip = ip("10.9.0.3");
    let ports = vec![
        PublishedPort::parse("8080:80/tcp", c2_ip).unwrap(),
        PublishedPort::parse("198.18.0.1:8081:81", c2_ip).unwrap(),
        PublishedPort::parse("5353:53/udp", c2_ip).unwrap(),
        PublishedPort::parse("8000-8002:80-82", c1_ip).unwrap(),
        PublishedPort::parse("9999:9999/sctp", c2_ip).unwrap(),
        PublishedPort::parse("8443:443", ip("fd00:9::3")).unwrap(),
    ];

    // Before the network is set up, publishing says what to do first.
    let err = fw.add_ports(&ports[..1]).unwrap_err().to_string();
    assert!(err.contains("ensure or sync the network first"), "{err}");
    assert!(err.contains(&a.netns_name), "{err}");

    fw.ensure(&net).unwrap();
    fw.ensure(&net).unwrap();
    assert!(fw.is_intact(&net).unwrap());
    assert_eq!(
        plumb::sysctl::read(&a.netns, "net.ipv4.conf.all.route_localnet").unwrap(),
        "1"
    );

    let started = Instant::now();
    fw.add_ports(&ports[..1]).unwrap();
    eprintln!("{kind}: add_ports of one port took {:?}", started.elapsed());
    fw.add_ports(&ports).unwrap();
    // Publishing again is a no-op, not a duplicate.
    fw.add_ports(&ports).unwrap();
    let expected = strings(&[
        "tcp *:8080 -> 10.9.0.3:80",
        "tcp 198.18.0.1:8081 -> 10.9.0.3:81",
        "udp *:5353 -> 10.9.0.3:53",
        "tcp *:8000 -> 10.9.0.2:80",
        "tcp *:8001 -> 10.9.0.2:81",
        "tcp *:8002 -> 10.9.0.2:82",
        "sctp *:9999 -> 10.9.0.3:9999",
        "tcp *:8443 -> [fd00:9::3]:443",
    ]);
    assert_eq!(published_in_kernel(kind, &a.netns), expected);

    // From another host: the container sees the real client address.
    let via_a = |port: u16| SocketAddr::new(a.ip_addr(), port);
    let peer = tcp_via(&c2.netns, sa("10.9.0.3:80"), &b.netns, via_a(8080)).unwrap();
    assert_eq!(peer.ip(), b.ip_addr());
    tcp_via(&c2.netns, sa("10.9.0.3:81"), &b.netns, via_a(8081)).unwrap();
    let peer = udp_via(&c2.netns, sa("10.9.0.3:53"), &b.netns, via_a(5353)).unwrap();
    assert_eq!(peer.ip(), b.ip_addr());
    for (host_port, ctr_port) in [(8000, 80), (8001, 81), (8002, 82)] {
        tcp_via(
            &c1.netns,
            SocketAddr::new(c1_ip, ctr_port),
            &b.netns,
            via_a(host_port),
        )
        .unwrap();
    }
    let peer = tcp_via(
        &c2.netns,
        sa("[fd00:9::3]:443"),
        &b.netns,
        SocketAddr::new(IpAddr::V6(a.ip6), 8443),
    )
    .unwrap();
    assert_eq!(peer.ip(), IpAddr::V6(b.ip6));
    // Without SCTP sockets the SCTP rules were still checked in the kernel above.
    if sctp_part(&format!("{kind} SCTP traffic")) {
        sctp_via(&c2.netns, sa("10.9.0.3:9999"), &b.netns, via_a(9999)).unwrap();
    }

    // The host itself, through 127.0.0.1: DNATed and masqueraded to the bridge address.
    let peer = tcp_via(&c2.netns, sa("10.9.0.3:80"), &a.netns, sa("127.0.0.1:8080")).unwrap();
    assert_eq!(peer.ip(), ip("10.9.0.1"));
    tcp_via(&c2.netns, sa("10.9.0.3:80"), &a.netns, via_a(8080)).unwrap();

    // Hairpin: a neighbour and the container itself through the host address.
    let peer = tcp_via(&c2.netns, sa("10.9.0.3:80"), &c1.netns, via_a(8080)).unwrap();
    assert_eq!(peer.ip(), ip("10.9.0.1"));
    let peer = tcp_via(&c2.netns, sa("10.9.0.3:80"), &c2.netns, via_a(8080)).unwrap();
    assert_eq!(peer.ip(), ip("10.9.0.1"));
    udp_via(&c2.netns, sa("10.9.0.3:53"), &c1.netns, via_a(5353)).unwrap();

    // Masquerade: the outside world sees the host; the cluster sees the container.
    let peer = tcp_via(
        &b.netns,
        SocketAddr::new(b.ip_addr(), 7000),
        &c1.netns,
        SocketAddr::new(b.ip_addr(), 7000),
    )
    .unwrap();
    assert_eq!(peer.ip(), a.ip_addr());
    let peer = tcp_via(
        &b.netns,
        sa("10.10.0.1:7001"),
        &c1.netns,
        sa("10.10.0.1:7001"),
    )
    .unwrap();
    assert_eq!(peer.ip(), c1_ip);

    // A host port already published elsewhere is refused, naming the conflict.
    let clash = PublishedPort::parse("198.18.0.1:8081:81", c1_ip).unwrap();
    let err = fw.add_ports(&[clash]).unwrap_err().to_string();
    assert!(err.contains("already published"), "{err}");
    assert_eq!(published_in_kernel(kind, &a.netns), expected);

    // Withdrawal: unreachable at once, other ports untouched, idempotent.
    fw.remove_ports(&ports[..1]).unwrap();
    fw.remove_ports(&ports[..1]).unwrap();
    assert!(tcp_via(&c2.netns, sa("10.9.0.3:80"), &b.netns, via_a(8080)).is_err());
    tcp_via(&c2.netns, sa("10.9.0.3:81"), &b.netns, via_a(8081)).unwrap();
    let mut remaining = expected.clone();
    remaining.remove("tcp *:8080 -> 10.9.0.3:80");
    assert_eq!(published_in_kernel(kind, &a.netns), remaining);
    let kept = &ports[1..];

    // ensure repairs the network's rules but keeps the published ports.
    fw.ensure(&net).unwrap();
    assert_eq!(published_in_kernel(kind, &a.netns), remaining);

    // Someone flushes the whole ruleset: noticed, and sync brings it back.
    let out = run_in(
        &a.netns,
        "nft",
        &["flush", "ruleset"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    assert!(!fw.is_intact(&net).unwrap());
    assert!(tcp_via(&c2.netns, sa("10.9.0.3:81"), &b.netns, via_a(8081)).is_err());
    fw.sync(&net, kept).unwrap();
    assert!(fw.is_intact(&net).unwrap());
    tcp_via(&c2.netns, sa("10.9.0.3:81"), &b.netns, via_a(8081)).unwrap();
    assert_eq!(published_in_kernel(kind, &a.netns), remaining);

    // sync is idempotent: the ruleset is identical after a second run.
    let before = ruleset(kind, &a.netns);
    fw.sync(&net, kept).unwrap();
    assert_eq!(ruleset(kind, &a.netns), before);
    // A changed network is not "intact" until applied.
    let mut other = net.clone();
    other.subnets.push("10.9.1.0/24".parse().unwrap());
    assert!(!fw.is_intact(&other).unwrap());

    // Teardown removes everything weft made, and only that.
    fw.teardown().unwrap();
    fw.teardown().unwrap();
    assert!(!fw.is_intact(&net).unwrap());
    let left = ruleset(kind, &a.netns);
    assert!(!left.contains("weft") && !left.contains("WEFT-"), "{left}");
    assert!(tcp_via(&c2.netns, sa("10.9.0.3:81"), &b.netns, via_a(8081)).is_err());
    drop(world);
}

#[tokio::test]
async fn nftables_publishes_ports_masquerades_and_recovers() {
    require_root!();
    published_ports_end_to_end(BackendKind::Nftables).await;
}

#[tokio::test]
async fn iptables_publishes_ports_masquerades_and_recovers() {
    require_root!();
    published_ports_end_to_end(BackendKind::Iptables).await;
}

/// The nft table holds what weft renders, checked in nft's own JSON.
#[tokio::test]
async fn nftables_table_layout_in_the_kernel() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let fw = BackendKind::Nftables.open(a.netns.clone());
    fw.ensure(&net()).unwrap();
    let out = run_in(
        &a.netns,
        "nft",
        &["-j", "list", "table", "inet", "weft"],
        Duration::from_secs(10),
    )
    .unwrap();
    let listing: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let objects = listing["nftables"].as_array().unwrap();
    let chain = |name: &str| {
        objects
            .iter()
            .find_map(|o| o.get("chain").filter(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("chain {name} missing: {listing}"))
    };
    assert_eq!(chain("prerouting")["hook"], "prerouting");
    assert_eq!(chain("output")["hook"], "output");
    assert_eq!(chain("postrouting")["hook"], "postrouting");
    assert_eq!(chain("prerouting")["type"], "nat");
    let map = |name: &str| {
        objects
            .iter()
            .find_map(|o| o.get("map").filter(|m| m["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("map {name} missing: {listing}"))
    };
    assert_eq!(
        map("ports4")["type"],
        serde_json::json!(["inet_proto", "ipv4_addr", "inet_service"])
    );
    assert_eq!(
        map("anyports6")["type"],
        serde_json::json!(["inet_proto", "inet_service"])
    );
    assert_eq!(map("anyports6")["map"], "ipv6_addr . inet_service");
    // Cluster ranges overlapping the subnets are accepted (separate sets), and
    // nested ones collapse.
    let mut nested = net();
    nested.cluster_ranges.push("10.9.3.0/24".parse().unwrap());
    fw.ensure(&nested).unwrap();
    assert!(fw.is_intact(&nested).unwrap());
    let text = run_in(
        &a.netns,
        "nft",
        &["list", "set", "inet", "weft", "cluster4"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(
        text.stdout.contains("10.9.0.0/16, 10.10.0.0/16"),
        "{}",
        text.stdout
    );
}

/// One change is one map element whatever the maps already hold: a port
/// added and withdrawn among 2,000 published ports (a range of 2,000 ports, so
/// 2,000 elements) leaves exactly those 2,000, and costs about what it costs
/// in an empty table (both printed; the bound is loose for a shared machine).
#[tokio::test]
async fn nftables_one_change_among_thousands_of_ports() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let fw = BackendKind::Nftables.open(a.netns.clone());
    let extra = [PublishedPort::parse("30000:80", ip("10.9.0.9")).unwrap()];
    // Median time of one add_ports and of one remove_ports.
    let median_change = || {
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let started = Instant::now();
            fw.add_ports(&extra).unwrap();
            adds.push(started.elapsed());
            let started = Instant::now();
            fw.remove_ports(&extra).unwrap();
            removes.push(started.elapsed());
        }
        adds.sort();
        removes.sort();
        (adds[3], removes[3])
    };
    fw.sync(&net(), &[]).unwrap();
    let empty = median_change();
    let many = [PublishedPort::parse("20000-21999:20000-21999/udp", ip("10.9.0.5")).unwrap()];
    fw.sync(&net(), &many).unwrap();
    let full = median_change();
    eprintln!(
        "nftables: one port (add, remove): median {empty:?} in an empty table, {full:?} among 2,000 ports"
    );
    assert_eq!(
        published_in_kernel(BackendKind::Nftables, &a.netns).len(),
        2000
    );
    assert!(
        full.0 < empty.0 * 5 + Duration::from_millis(20)
            && full.1 < empty.1 * 5 + Duration::from_millis(20),
        "a change among 2,000 ports took {full:?}, against {empty:?} in an empty table"
    );
}

/// Bad input is refused before any tool runs, with the reason.
#[tokio::test]
async fn bad_input_gives_clear_errors() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    for kind in [BackendKind::Nftables, BackendKind::Iptables] {
        let fw = kind.open(a.netns.clone());
        for (spec, why) in [
            ("8000-8002:80-81", "must be the same length"),
            ("0:80", "port 0"),
            ("8080:80/icmp", "unknown protocol"),
            ("fd00::1:80:80", "brackets"),
            ("80", "expected [hostip:]"),
        ] {
            let err = PublishedPort::parse(spec, ip("10.9.0.2"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why) && err.contains(spec), "{spec}: {err}");
        }
        let mut mismatched = PublishedPort::parse("8000-8002:80-82", ip("10.9.0.2")).unwrap();
        mismatched.container_ports.end = 81;
        let err = fw.add_ports(&[mismatched]).unwrap_err().to_string();
        assert!(err.contains("must be the same length"), "{err}");
        let mut bad_net = net();
        bad_net.bridge = "bridge\"; flush ruleset".into();
        assert!(fw.ensure(&bad_net).is_err());
        // Nothing reached the kernel.
        assert!(!ruleset(kind, &a.netns).contains("weft"));
    }
}
