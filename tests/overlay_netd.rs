//! netd runs the WireGuard overlay from a static peer list: two and three
//! simulated hosts, each with netd, its own /24 of the cluster /16 and the
//! others' public keys (`netd pubkey`), and containers attached with
//! `netd attach` on every host. Containers reach each other across hosts
//! with their real addresses, the fabric carries only WireGuard, a peer
//! removed from one host's list (and reloaded) is cut off from that host
//! only, and `netd peers` counts it all.
//!
//! Build the daemon first: `cargo build -p netd`.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use world::{
    classify_frame, contains, ip_json, ping, require_root, tcp_via, Capture, Container, Frame,
    NetdHost, World,
};

const CLUSTER: &str = "10.66.0.0/16";

/// A directory per test, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Hosts `a`, `b`, … each with netd (subnet 10.66.<n>.0/24, every other host
/// as a static peer) and one container `c1` attached through netd.
struct Cluster {
    netds: Vec<NetdHost>,
    containers: Vec<(Container, IpAddr)>,
    // Dropped last: netd is killed before its directory goes.
    world: World,
    _dir: Dir,
}

impl Cluster {
    async fn new(hosts: usize, extra_config: &str) -> Cluster {
        let world = World::new().await.unwrap();
        let dir = Dir(std::env::temp_dir().join(format!("weft-overlay-{}", world.prefix())));
        let mut netds = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().take(hosts).enumerate() {
            let host = world.host(name).await.unwrap();
            let subnet = format!("10.66.{}.0/24", i + 1);
            netds.push(NetdHost::prepare(&host, &dir.0.join(name), &subnet).unwrap());
        }
        for (i, netd) in netds.iter().enumerate() {
            let others: Vec<&NetdHost> = netds
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n)
                .collect();
            netd.write_config(CLUSTER, &others, extra_config).unwrap();
        }
        for netd in &mut netds {
            netd.start().unwrap();
        }
        let mut containers = Vec::new();
        for netd in &netds {
            let c = netd.host.container("c1").unwrap();
            let ip = netd.attach(&c, &[]).unwrap();
            containers.push((c, ip));
        }
        Cluster {
            netds,
            containers,
            world,
            _dir: dir,
        }
    }

    fn ns(&self, i: usize) -> &plumb::Netns {
        &self.containers[i].0.netns
    }

    fn ip(&self, i: usize) -> IpAddr {
        self.containers[i].1
    }

    /// Writes host `i`'s config with the peers `peers` (host indexes).
    fn set_peers(&self, i: usize, peers: &[usize], extra: &str) {
        let list: Vec<&NetdHost> = peers.iter().map(|j| &self.netds[*j]).collect();
        self.netds[i].write_config(CLUSTER, &list, extra).unwrap();
    }

    fn peer<'a>(peers: &'a [Value], key: &str) -> Option<&'a Value> {
        peers.iter().find(|p| p["public_key"] == key)
    }
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// `GET /metrics` inside `netns` (netd's metrics listener there).
fn scrape(netns: &plumb::Netns, addr: SocketAddr) -> String {
    world::scrape_metrics(netns, addr)
}

#[tokio::test]
async fn two_hosts_containers_talk_with_real_addresses_over_wireguard_only() {
    require_root!();
    let metrics: SocketAddr = "127.0.0.1:9588".parse().unwrap();
    let cl = Cluster::new(2, &format!("metrics_addr = \"{metrics}\"")).await;
    let (a, b) = (&cl.netds[0], &cl.netds[1]);
    assert_eq!(cl.ip(0).to_string(), "10.66.1.2");
    assert_eq!(cl.ip(1).to_string(), "10.66.2.2");

    // The container MTU is the overlay's: the fabric's 1500 minus 80.
    let link = ip_json(cl.ns(0), &["link", "show", "eth0"]).unwrap();
    assert_eq!(link[0]["mtu"], 1420, "{link}");
    // The peer's subnet is routed through the overlay link.
    let routes = ip_json(&a.host.netns, &["route", "show", "10.66.2.0/24"]).unwrap();
    assert_eq!(routes[0]["dev"], "weft-wg0", "{routes}");

    let capture = Capture::start(cl.world.fabric(), "h-a").unwrap();
    assert!(ping(cl.ns(0), cl.ip(1)).unwrap(), "a/c1 → b/c1");
    assert!(ping(cl.ns(1), cl.ip(0)).unwrap(), "b/c1 → a/c1");
    let seen = tcp_via(
        cl.ns(1),
        SocketAddr::new(cl.ip(1), 7000),
        cl.ns(0),
        SocketAddr::new(cl.ip(1), 7000),
    )
    .unwrap();
    // No masquerade inside the cluster: the server sees the client container.
    assert_eq!(seen.ip(), cl.ip(0));
    let frames = capture.stop();
    let mut wireguard = 0;
    for frame in &frames {
        match classify_frame(frame) {
            Frame::WireGuard => wireguard += 1,
            Frame::Neighbour => {}
            Frame::Store => panic!("the fabric carried etcd traffic in a world without etcd"),
            Frame::Other(what) => panic!("the fabric carried {what} outside WireGuard"),
        }
        assert!(
            !contains(frame, b"weft forwarded payload"),
            "plaintext on the fabric"
        );
    }
    assert!(wireguard >= 8, "only {wireguard} WireGuard frames seen");

    // Outside the cluster, containers are still masqueraded: host b sees host a.
    let seen = tcp_via(
        &b.host.netns,
        SocketAddr::new(b.host.ip_addr(), 7001),
        cl.ns(0),
        SocketAddr::new(b.host.ip_addr(), 7001),
    )
    .unwrap();
    assert_eq!(seen.ip(), a.host.ip_addr());

    let peers = a.peers().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    let p = Cluster::peer(&peers, &b.public_key).expect("b is a's peer");
    assert_eq!(p["endpoint"], format!("{}:51820", b.host.ip));
    assert_eq!(p["allowed_ips"][0], "10.66.2.0/24");
    assert!(
        u64_of(p, "rx_bytes") > 0 && u64_of(p, "tx_bytes") > 0,
        "{p}"
    );
    assert!(
        u64_of(p, "rx_packets") >= 3 && u64_of(p, "tx_packets") >= 3,
        "{p}"
    );
    assert!(u64_of(p, "handshake_age_secs") < 60, "{p}");
    assert!(p["drops"].as_object().unwrap().is_empty(), "{p}");
    let text = a.cli(&["peers"]).unwrap();
    assert!(
        text.success && text.stdout.contains(&b.public_key),
        "{}",
        text.stdout
    );

    let status = a.json(&["status"]).unwrap();
    let overlay = &status["overlay"];
    assert_eq!(overlay["public_key"], a.public_key.as_str());
    assert_eq!(overlay["listen_port"], 51820);
    assert_eq!(overlay["mtu"], 1420);
    assert_eq!(
        (
            overlay["peers"].as_u64(),
            overlay["peers_connected"].as_u64()
        ),
        (Some(1), Some(1))
    );

    let body = scrape(&a.host.netns, metrics);
    let rx_line = format!(
        "weft_netd_overlay_peer_rx_bytes_total{{peer=\"{}\"}} ",
        b.public_key
    );
    let rx: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&rx_line))
        .unwrap_or_else(|| panic!("no {rx_line} in:\n{body}"))
        .parse()
        .unwrap();
    assert!(rx > 0);
    assert!(body.contains("weft_netd_overlay_peer_handshake_age_seconds{peer="));

    // A deleted overlay route comes back with the periodic check.
    let deleted = world::run_in(
        &a.host.netns,
        "ip",
        &["route", "del", "10.66.2.0/24", "dev", "weft-wg0"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(deleted.success, "{}", deleted.stderr);
    let restored = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ip_json(&a.host.netns, &["route", "show", "10.66.2.0/24"])
            .map(|r| r[0]["dev"] == "weft-wg0")
            .unwrap_or(false)
    });
    assert!(restored, "route not restored:\n{}", a.log_text());
    assert!(a.log_text().contains("overlay route missing"));
    assert!(
        ping(cl.ns(0), cl.ip(1)).unwrap(),
        "a/c1 → b/c1 after the repair"
    );
    // `netd pubkey` reads the same key again.
    let again = a
        .run(&["pubkey", "--state-dir", a.state_dir().to_str().unwrap()])
        .unwrap();
    assert_eq!(again.stdout.trim(), a.public_key);

    // The private key: generated 0600, and nowhere in logs or answers.
    let key_file = a.state_dir().join("overlay.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let private = std::fs::read_to_string(&key_file).unwrap();
    let private = private.trim();
    assert_eq!(private.len(), 44);
    for (what, text) in [
        ("log", a.log_text()),
        ("status", status.to_string()),
        ("peers", serde_json::to_string(&peers).unwrap()),
        ("metrics", body),
    ] {
        assert!(
            !text.contains(private),
            "the private key appears in the {what}"
        );
    }
}

#[tokio::test]
async fn three_hosts_and_a_peer_removed_from_one_host() {
    require_root!();
    let cl = Cluster::new(3, "").await;
    let (a, b, c) = (&cl.netds[0], &cl.netds[1], &cl.netds[2]);
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                assert!(ping(cl.ns(from), cl.ip(to)).unwrap(), "{from} → {to}");
            }
        }
    }
    let seen = tcp_via(
        cl.ns(2),
        SocketAddr::new(cl.ip(2), 7000),
        cl.ns(0),
        SocketAddr::new(cl.ip(2), 7000),
    )
    .unwrap();
    assert_eq!(seen.ip(), cl.ip(0));
    let before = a.peers().unwrap();
    let b_before = Cluster::peer(&before, &b.public_key).unwrap().clone();
    assert!(b_before["last_handshake"].as_u64().is_some(), "{b_before}");

    // Host a drops c from its list; `netd reconcile` re-reads it.
    cl.set_peers(0, &[1], "");
    let report = a.json(&["reconcile"]).unwrap();
    let actions = report["actions"].as_array().unwrap();
    assert!(
        actions.iter().any(|x| x["kind"] == "overlay_peer_removed"
            && x["detail"].as_str().unwrap().contains(&c.public_key)),
        "{report}"
    );
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
    let after = a.peers().unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    let routes = ip_json(&a.host.netns, &["route", "show", "10.66.3.0/24"]).unwrap();
    assert!(routes.as_array().unwrap().is_empty(), "{routes}");

    assert!(!ping(cl.ns(0), cl.ip(2)).unwrap(), "a still reaches c");
    assert!(!ping(cl.ns(2), cl.ip(0)).unwrap(), "c still reaches a");
    assert!(ping(cl.ns(0), cl.ip(1)).unwrap(), "a no longer reaches b");
    assert!(ping(cl.ns(1), cl.ip(2)).unwrap(), "b no longer reaches c");
    assert!(ping(cl.ns(2), cl.ip(1)).unwrap(), "c no longer reaches b");
    // b's session on a went on undisturbed: same handshake, counters kept.
    let after = a.peers().unwrap();
    let b_after = Cluster::peer(&after, &b.public_key).unwrap();
    assert_eq!(b_after["last_handshake"], b_before["last_handshake"]);
    assert!(
        u64_of(b_after, "rx_packets") > u64_of(&b_before, "rx_packets"),
        "{b_before} {b_after}"
    );
    // What c still sends a is dropped there, and counted by reason.
    let status = a.json(&["status"]).unwrap();
    assert_eq!(status["overlay"]["peers"], 1, "{status}");
    let drops = status["overlay"]["drops"].as_object().unwrap();
    assert!(
        drops.values().any(|n| n.as_u64().unwrap_or(0) > 0),
        "{status}"
    );

    // A broken list on reload is reported and changes nothing.
    std::fs::write(
        a.config_path(),
        format!(
            "subnet = \"10.66.1.0/24\"\n[overlay]\nenabled = true\n{}[[overlay.peer]]\npublic_key = \"{}\"\nendpoint = \"198.18.0.3:51820\"\nsubnet = \"10.66.2.128/25\"\n",
            b.peer_entry(),
            c.public_key
        ),
    )
    .unwrap();
    let report = a.json(&["reconcile"]).unwrap();
    let errors = report["errors"].to_string();
    assert!(
        errors.contains("overlaps the subnet 10.66.2.0/24")
            && errors.contains("keeping the current peers"),
        "{report}"
    );
    assert_eq!(a.peers().unwrap().len(), 1);
    assert!(
        ping(cl.ns(0), cl.ip(1)).unwrap(),
        "a → b after a broken reload"
    );

    // c back in the list, applied on SIGHUP: reachable again.
    cl.set_peers(0, &[1, 2], "");
    a.signal(libc::SIGHUP).unwrap();
    let back = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        a.peers().map(|p| p.len() == 2).unwrap_or(false)
    });
    assert!(back, "c not back in a's peers:\n{}", a.log_text());
    assert!(ping(cl.ns(0), cl.ip(2)).unwrap(), "a → c after re-adding c");
    assert!(ping(cl.ns(2), cl.ip(0)).unwrap(), "c → a after re-adding c");
    let peers = a.peers().unwrap();
    let c_peer = Cluster::peer(&peers, &c.public_key).unwrap();
    assert!(u64_of(c_peer, "handshake_age_secs") < 60, "{c_peer}");
    assert!(u64_of(c_peer, "rx_packets") > 0, "{c_peer}");
}
