//! netd's DNS server on a network's gateway, asked by `dig` from containers:
//! neighbours by name and alias, bare and under the search domain, PTR,
//! NXDOMAIN, outside names through an upstream (dnsmasq in its own
//! namespace), SERVFAIL when the upstream is silent, nothing for the side
//! that is not the network's; and thousands of random and malformed
//! packets that leave it answering, with the counters adding up.
//!
//! The world: host `a` with bridge weft0 (10.66.0.1/24, fd66::1/64), three
//! containers on it, and namespace `up` behind a veth (172.31.0.0/24) where
//! the upstream resolver runs. The server runs in this test process, its
//! sockets opened in the host's namespace.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netd::names::{ContainerNames, DnsServer, DnsServerConfig, NameSource, NameTable, RateLimit};
use plumb::{LinkOptions, Netlink, Netns};
use world::{require_root, run_in, Host, World};

mod dig_support;

const GATEWAY: &str = "10.66.0.1";
const GATEWAY6: &str = "fd66::1";

/// Host `a` with the bridge, and containers c1 (.2), c2 (.3), c3 (.4).
async fn network(world: &World) -> (Host, Vec<Netns>) {
    let host = world.host("a").await.unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    let up = LinkOptions {
        up: true,
        ..Default::default()
    };
    nl.add_bridge("weft0", &up).await.unwrap();
    nl.add_address("weft0", format!("{GATEWAY}/24").parse().unwrap(), false)
        .await
        .unwrap();
    nl.add_address("weft0", format!("{GATEWAY6}/64").parse().unwrap(), true)
        .await
        .unwrap();
    let mut containers = Vec::new();
    for i in 1..=3u8 {
        let c = host.container(&format!("c{i}")).unwrap();
        let port = format!("vc{i}");
        let inside = LinkOptions {
            netns: Some(c.netns.clone()),
            ..Default::default()
        };
        nl.add_veth(&port, &up, "eth0", &inside).await.unwrap();
        nl.attach_to_bridge(&port, "weft0").await.unwrap();
        let cnl = Netlink::open(&c.netns).await.unwrap();
        let v4 = format!("10.66.0.{}/24", i + 1).parse().unwrap();
        cnl.add_address("eth0", v4, false).await.unwrap();
        let v6 = format!("fd66::{}/64", i + 1).parse().unwrap();
        cnl.add_address("eth0", v6, true).await.unwrap();
        cnl.set_up("eth0").await.unwrap();
        containers.push(c.netns);
    }
    (host, containers)
}

fn names(container: &str, name: &str, aliases: &[&str], last_octet: u8) -> ContainerNames {
    ContainerNames {
        container: container.into(),
        name: name.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ipv4: Some(format!("10.66.0.{last_octet}").parse().unwrap()),
        ipv6: Some(format!("fd66::{last_octet}").parse().unwrap()),
        host: "a".into(),
        source: NameSource::Local,
    }
}

/// What dig saw (dig_support's reading) and how long it took.
#[derive(Debug)]
struct Dig {
    status: String,
    answers: Vec<String>,
    took: Duration,
}

/// `dig @server ARGS` from `netns`, one try of five seconds (dig's default)
/// unless ARGS say `+time=N`.
async fn dig(netns: &Netns, server: &str, args: &[&str]) -> Dig {
    let netns = netns.clone();
    let time = args
        .iter()
        .find_map(|a| a.strip_prefix("+time="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    let mut full = vec![format!("@{server}"), "+nocmd".to_string()];
    full.extend(
        args.iter()
            .filter(|a| !a.starts_with("+time="))
            .map(|a| a.to_string()),
    );
    // dig blocks: off the runtime, whose workers serve the queries.
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        let start = Instant::now();
        let seen = dig_support::dig_with(&netns, "dig", &args, time);
        Dig {
            status: seen.status,
            answers: seen.answers,
            took: start.elapsed(),
        }
    })
    .await
    .unwrap()
}

/// Namespace `up` behind veth vup (172.31.0.1 on the host, .2 there), with
/// a route back to the containers' subnet.
async fn upstream_namespace(world: &World, host: &Host) -> Netns {
    let (_, up) = world.namespace("up").unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    let inside = LinkOptions {
        netns: Some(up.clone()),
        ..Default::default()
    };
    let on = LinkOptions {
        up: true,
        ..Default::default()
    };
    nl.add_veth("vup", &on, "eth0", &inside).await.unwrap();
    nl.add_address("vup", "172.31.0.1/24".parse().unwrap(), false)
        .await
        .unwrap();
    let unl = Netlink::open(&up).await.unwrap();
    unl.add_address("eth0", "172.31.0.2/24".parse().unwrap(), false)
        .await
        .unwrap();
    unl.add_address("eth0", "172.31.0.3/24".parse().unwrap(), false)
        .await
        .unwrap();
    unl.set_up("eth0").await.unwrap();
    let route = run_in(
        &up,
        "ip",
        &["route", "add", "10.66.0.0/24", "via", "172.31.0.1"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(route.success, "{}", route.stderr);
    up
}

fn config(resolv_conf: &std::path::Path) -> DnsServerConfig {
    let mut config = DnsServerConfig::new(
        vec![GATEWAY.parse().unwrap(), GATEWAY6.parse().unwrap()],
        vec![
            "10.66.0.0/24".parse().unwrap(),
            "fd66::/64".parse().unwrap(),
        ],
    );
    config.resolv_conf = resolv_conf.to_path_buf();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_resolve_neighbours_ptr_and_outside_names_and_a_silent_upstream_is_servfail() {
    require_root!();
    let world = World::new().await.unwrap();
    let (host, c) = network(&world).await;
    let up = upstream_namespace(&world, &host).await;
    // The upstream: dnsmasq answering one outside name, 60 s TTL.
    let mut dnsmasq = std::process::Command::new("dnsmasq");
    dnsmasq.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--bind-interfaces",
        "--listen-address=172.31.0.2",
        "--local-ttl=60",
        "--address=/outside.example/198.51.100.7",
    ]);
    // And a TXT record too big for UDP: 8 strings of 250 bytes.
    let long = "x".repeat(250);
    dnsmasq.arg(format!(
        "--txt-record=big.outside.example,{}",
        [long.as_str(); 8].join(",")
    ));
    world.spawn(&up, dnsmasq).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    // The gateway itself first: skipped, or every query would loop.
    std::fs::write(
        &resolv_conf,
        format!("nameserver {GATEWAY}\nnameserver 172.31.0.2\n"),
    )
    .unwrap();
    let table = Arc::new(NameTable::new());
    table.insert(names("id1", "web", &["www"], 2)).unwrap();
    table.insert(names("id2", "db", &[], 3)).unwrap();
    let server = DnsServer::start(&host.netns, table.clone(), config(&resolv_conf))
        .await
        .unwrap();

    // A neighbour's name and alias, bare and under the search domain, any case.
    for name in ["web", "www", "WEB.weft.internal", "www.weft.internal."] {
        let d = dig(&c[2], GATEWAY, &[name, "A"]).await;
        assert_eq!(
            (d.status.as_str(), d.answers.clone()),
            ("NOERROR", vec!["10.66.0.2".to_string()]),
            "{name}: {d:?}"
        );
    }
    let d = dig(&c[0], GATEWAY, &["db.weft.internal", "A"]).await;
    assert_eq!(d.answers, ["10.66.0.3"], "{d:?}");
    // AAAA over IPv6 to the v6 gateway, and over TCP.
    let d = dig(&c[2], GATEWAY6, &["web", "AAAA"]).await;
    assert_eq!(d.answers, ["fd66::2"], "{d:?}");
    let d = dig(&c[2], GATEWAY, &["+tcp", "db", "A"]).await;
    assert_eq!(d.answers, ["10.66.0.3"], "{d:?}");
    // A known name without that type: NODATA.
    let d = dig(&c[2], GATEWAY, &["web", "MX"]).await;
    assert_eq!(
        (d.status.as_str(), d.answers.len()),
        ("NOERROR", 0),
        "{d:?}"
    );
    // Unknown inside the search domain: NXDOMAIN.
    let d = dig(&c[2], GATEWAY, &["nobody.weft.internal", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");
    // PTR, v4 and v6; an unknown address of the subnet is NXDOMAIN.
    let d = dig(&c[2], GATEWAY, &["-x", "10.66.0.2"]).await;
    assert_eq!(d.answers, ["web.weft.internal."], "{d:?}");
    let d = dig(&c[2], GATEWAY, &["-x", "fd66::3"]).await;
    assert_eq!(d.answers, ["db.weft.internal."], "{d:?}");
    let d = dig(&c[2], GATEWAY, &["-x", "10.66.0.99"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");

    // An outside name: answered by dnsmasq, then by the cache.
    let d = dig(&c[2], GATEWAY, &["www.outside.example", "A"]).await;
    assert_eq!(d.answers, ["198.51.100.7"], "{d:?}");
    let d = dig(&c[1], GATEWAY, &["WWW.outside.example", "A"]).await;
    assert_eq!(d.answers, ["198.51.100.7"], "{d:?}");
    let counters = server.counters();
    assert_eq!(
        (counters.forwarded, counters.cache_hits),
        (2, 1),
        "{counters:?}"
    );
    // Too big for UDP at both hops: the upstream's truncated UDP answer is
    // asked again over TCP; the client's truncated one too (dig retries
    // over TCP by itself) and gets it from the cache.
    let d = dig(&c[2], GATEWAY, &["big.outside.example", "TXT"]).await;
    assert_eq!(
        (d.status.as_str(), d.answers.len()),
        ("NOERROR", 1),
        "{d:?}"
    );
    let counters = server.counters();
    assert_eq!(
        (counters.forwarded, counters.cache_hits),
        (4, 2),
        "{counters:?}"
    );

    // A detached container's name is gone at once.
    table.remove("id2").unwrap();
    let d = dig(&c[2], GATEWAY, &["db.weft.internal", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");

    // Not served to the other side: the up namespace reaches the gateway
    // address by its route but is outside the subnets (dropped, counted),
    // and the host's address on that side has no server at all.
    let before = server.counters().dropped_outside_subnets;
    let d = dig(&up, GATEWAY, &["+time=1", "web", "A"]).await;
    assert_eq!(d.status, "no answer", "{d:?}");
    assert_eq!(server.counters().dropped_outside_subnets, before + 1);
    let d = dig(&up, "172.31.0.1", &["+time=1", "web", "A"]).await;
    assert_eq!(d.status, "no answer", "{d:?}");

    // A silent upstream (a socket that never reads, at 172.31.0.3):
    // SERVFAIL after the 2 s deadline, well within dig's 5 s.
    let silent = up
        .run(|| UdpSocket::bind("172.31.0.3:53"))
        .unwrap()
        .unwrap();
    std::fs::write(&resolv_conf, "nameserver 172.31.0.3\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // resolv.conf recheck
    let d = dig(&c[2], GATEWAY, &["other.outside.example", "A"]).await;
    assert_eq!(d.status, "SERVFAIL", "{d:?}");
    assert!(d.took < Duration::from_millis(4500), "{d:?}");
    assert_eq!(server.counters().servfail, 1);
    drop(silent);

    // Every query counted once: 19 dig queries got here, one was dropped.
    let counters = server.counters();
    assert_eq!(counters.total(), 19, "{counters:?}");
    assert_eq!(
        (counters.answered, counters.nxdomain, counters.dropped()),
        (10, 3, 1),
        "{counters:?}"
    );

    // Stopped on drop: the port is free again.
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = DnsServer::start(&host.netns, table, config(&resolv_conf)).await;
    assert!(again.is_ok(), "{:?}", again.err());
}

/// A seeded generator, so a failure can be replayed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A well-formed query for `name`/`kind` with ID `id`, by hand on purpose:
/// the fuzzer mutates these bytes.
fn query_bytes(id: u16, name: &str, kind: u16) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&kind.to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p
}

/// One hostile packet: random bytes, a mutated or cut query, an oversized
/// name, an unknown type, another opcode, a response.
fn hostile(rng: &mut SplitMix) -> Vec<u8> {
    let id = rng.next() as u16;
    match rng.below(7) {
        0 => (0..rng.below(600)).map(|_| rng.next() as u8).collect(),
        1 => {
            let mut p = query_bytes(id, "web.weft.internal", 1);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(p.len());
                p[at] = rng.next() as u8;
            }
            p
        }
        2 => {
            let p = query_bytes(id, "db.weft.internal", 28);
            p[..rng.below(p.len())].to_vec()
        }
        3 => {
            let label = "x".repeat(63);
            let name = [label.as_str(); 5].join(".");
            query_bytes(id, &name, 1)
        }
        4 => query_bytes(id, "web", rng.next() as u16),
        5 => {
            let mut p = query_bytes(id, "web", 1);
            p[2] = (rng.below(16) as u8) << 3;
            p
        }
        _ => {
            let mut p = query_bytes(id, "web", 1);
            p[2] |= 0x80;
            p
        }
    }
}

/// The host namespace's count of UDP datagrams the kernel dropped before
/// the server read them (a full receive buffer): they reach no counter.
fn udp_in_errors(netns: &Netns) -> u64 {
    let out = run_in(netns, "cat", &["/proc/net/snmp"], Duration::from_secs(5)).unwrap();
    let udp: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .collect();
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    let at = names.iter().position(|n| *n == "InErrors").unwrap();
    values[at].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_random_and_malformed_packets_and_a_flood_leave_it_answering() {
    require_root!();
    let world = World::new().await.unwrap();
    let (host, c) = network(&world).await;
    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    // No upstream: whatever the fuzzer turns into an outside name is SERVFAIL.
    std::fs::write(&resolv_conf, "").unwrap();
    let table = Arc::new(NameTable::new());
    table.insert(names("id1", "web", &["www"], 2)).unwrap();
    let mut config = config(&resolv_conf);
    config.rate_limit = RateLimit {
        per_second: 200,
        burst: 4000,
    };
    let server = DnsServer::start(&host.netns, table, config).await.unwrap();
    let errors_before = udp_in_errors(&host.netns);

    let gateway: SocketAddr = format!("{GATEWAY}:53").parse().unwrap();
    let socket_in = |netns: &Netns| {
        let socket = netns.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    };
    // c1 sends 3000 hostile packets (within its burst); c2 floods 6000
    // queries, beyond its burst. In batches of 50 every 5 ms, so that most
    // reach the server rather than a full socket buffer.
    let fuzzer = socket_in(&c[0]);
    let flooder = socket_in(&c[1]);
    let mut rng = SplitMix(0x5eed_d115);
    let mut sent = 0u64;
    for batch in 0..180u32 {
        for i in 0..50u32 {
            let (socket, packet) = if batch < 60 {
                (&fuzzer, hostile(&mut rng))
            } else {
                (&flooder, query_bytes((batch * 50 + i) as u16, "web", 1))
            };
            // An empty datagram is a datagram too: it must not stop the server.
            if socket.send_to(&packet, gateway).is_ok() {
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Neighbours are still answered at once, the flooder's neighbour too.
    let d = dig(&c[2], GATEWAY, &["www", "A"]).await;
    assert_eq!(d.answers, ["10.66.0.2"], "{d:?}");
    sent += 1;

    // Everything that arrived is counted exactly once.
    let mut counters = server.counters();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dropped_by_kernel = udp_in_errors(&host.netns) - errors_before;
        if counters.total() + dropped_by_kernel == sent || Instant::now() > deadline {
            assert_eq!(
                counters.total() + dropped_by_kernel,
                sent,
                "{counters:?}, {dropped_by_kernel} dropped by the kernel"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        counters = server.counters();
    }
    eprintln!("after {sent} packets: {counters:?}");
    assert!(counters.formerr > 0, "{counters:?}");
    assert!(counters.notimp > 0, "{counters:?}");
    assert!(counters.dropped_short > 0, "{counters:?}");
    assert!(counters.dropped_response > 0, "{counters:?}");
    assert!(counters.dropped_rate_limited > 0, "{counters:?}");
    assert!(counters.answered > 4000, "{counters:?}");

    // The flooder itself is answered again once its bucket refills.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = dig(&c[1], GATEWAY, &["web", "A"]).await;
    assert_eq!(d.answers, ["10.66.0.2"], "{d:?}");
}
