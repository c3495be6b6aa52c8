//! netd in a cluster: three simulated hosts and a real etcd (Debian's 3.4)
//! in the world's fabric namespace; nothing by hand — `netd cluster init`,
//! then `netd run` with `[cluster] store` on every host, containers attached
//! with `netd attach`. Subnets, keys and peers come from the store.
//!
//! Build the daemon first: `cargo build -p netd`.

use std::time::{Duration, Instant};

use cluster_support::{host, scrape, store, Cluster, Stream};
use serde_json::Value;
use world::{ip_json, ping, require_root, NetdHost};

mod cluster_support;
mod overlay_support;

#[tokio::test]
async fn three_hosts_join_by_themselves_and_every_pair_of_containers_talks_v4_and_v6() {
    require_root!();
    let cl = Cluster::new(&["a", "b", "c"]).await;
    cl.wait_all_alive();
    // Distinct subnets from the ranges; each container has both families.
    let subnets: std::collections::HashSet<&str> =
        cl.netds.iter().map(|n| n.subnet.as_str()).collect();
    assert_eq!(subnets.len(), 3, "{subnets:?}");
    for i in 0..3 {
        let addrs = cl.addrs(i);
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert!(addrs[0].to_string().starts_with("10.96."), "{addrs:?}");
        assert!(addrs[1].to_string().starts_with("fd96:"), "{addrs:?}");
    }
    // The others' subnets, both families, are routed through the overlay.
    let routes6 = ip_json(
        &cl.netds[0].host.netns,
        &["-6", "route", "show", "dev", "weft-wg0"],
    )
    .unwrap();
    let overlay6 = routes6
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dst"].as_str().is_some_and(|d| d.starts_with("fd96:")))
        .count();
    assert_eq!(overlay6, 2, "{routes6}");
    cl.all_pairs_reach(&[]);

    // `netd peers` names the hosts, their source and state.
    let peers = cl.netds[0].peers().unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for p in &peers {
        assert_eq!(p["source"], "store", "{p}");
        assert_eq!(p["host"]["alive"], true, "{p}");
        assert_eq!(p["allowed_ips"].as_array().unwrap().len(), 2, "{p}");
    }
    let status = cl.netds[1].json(&["cluster", "status"]).unwrap();
    assert_eq!(status["store_up"], true, "{status}");
    assert_eq!(status["hosts_alive"], 3, "{status}");
    let metrics = scrape(&cl.netds[1].host.netns);
    for line in [
        "weft_netd_cluster_hosts{state=\"alive\"} 3",
        "weft_netd_cluster_hosts{state=\"dead\"} 0",
        "weft_netd_cluster_store_up 1",
        "weft_netd_cluster_subnets_in_use 6",
        "weft_netd_cluster_subnet_capacity 65792",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    assert!(!cl.netds[1].log_text().contains("apply when netd restarts"));

    // A second init with another range is refused, naming both configs.
    let out = cl.netds[0]
        .run(&[
            "cluster",
            "init",
            "--store",
            &store(),
            "--range",
            "10.97.0.0/16",
        ])
        .unwrap();
    assert!(!out.success);
    assert!(
        out.stderr.contains("10.96.0.0/16") && out.stderr.contains("10.97.0.0/16"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_killed_host_shows_dead_keeps_its_route_and_comes_back_with_its_subnet_and_key() {
    require_root!();
    let mut cl = Cluster::new(&["a", "b", "c"]).await;
    cl.wait_all_alive();
    cl.all_pairs_reach(&[]);
    let (subnet, key) = (cl.netds[2].subnet.clone(), cl.netds[2].public_key.clone());

    cl.netds[2].signal(libc::SIGKILL).unwrap();
    for i in 0..2 {
        let took = cl.wait_hosts(i, Duration::from_secs(15), "c shown dead", |h| {
            host(h, "c").is_some_and(|c| c["alive"] == false)
        });
        eprintln!("c shown dead on {} after {took:?}", cl.netds[i].host.name);
        // Its peer and route stay.
        let peers = cl.netds[i].peers().unwrap();
        let c = peers.iter().find(|p| p["public_key"] == key.as_str());
        assert!(c.is_some_and(|c| c["host"]["alive"] == false), "{peers:?}");
        let routes = ip_json(&cl.netds[i].host.netns, &["route", "show", &subnet]).unwrap();
        assert_eq!(routes[0]["dev"], "weft-wg0", "{routes}");
    }

    cl.start(2);
    let status = cl.netds[2].json(&["cluster", "status"]).unwrap();
    assert_eq!(status["subnets"][0], subnet.as_str(), "{status}");
    assert_eq!(status["key_epoch"], 1, "same key, same epoch: {status}");
    let pubkey = cl.netds[2]
        .run(&[
            "pubkey",
            "--state-dir",
            cl.netds[2].state_dir().to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(pubkey.stdout.trim(), key);
    for i in 0..2 {
        cl.wait_hosts(i, Duration::from_secs(10), "c alive again", |h| {
            host(h, "c").is_some_and(|c| c["alive"] == true)
        });
    }
    cl.all_pairs_reach(&[]);
}

#[tokio::test]
async fn leave_frees_the_subnet_at_once_and_forget_removes_a_dead_host() {
    require_root!();
    let mut cl = Cluster::new(&["a", "b", "c"]).await;
    cl.wait_hosts(0, Duration::from_secs(10), "all three", |h| h.len() == 3);
    let c_subnet = cl.netds[2].subnet.clone();

    let out = cl.netds[2].cli(&["cluster", "leave"]).unwrap();
    assert!(out.success, "{}", out.stderr);
    for i in 0..2 {
        cl.wait_hosts(i, Duration::from_secs(5), "c gone", |h| {
            h.len() == 2 && host(h, "c").is_none()
        });
        let routes = ip_json(&cl.netds[i].host.netns, &["route", "show", &c_subnet]).unwrap();
        assert!(routes.as_array().unwrap().is_empty(), "{routes}");
        assert_eq!(cl.netds[i].peers().unwrap().len(), 1);
    }

    // A new host finds the range's subnets; c's is free again for it (the
    // pick starts at a random index, so fill the /16's 256 is not needed:
    // check the store instead: no subnet key names c any more).
    let keys = cl
        .etcd
        .etcdctl(&["get", "--prefix", "/weft/v1/subnets/", "--keys-only"])
        .unwrap();
    let c_key = format!("/weft/v1/subnets/{}", c_subnet.replace('/', "-"));
    assert!(!keys.stdout.contains(&c_key), "{}", keys.stdout);
    let d = cl.add_host("d").await;
    cl.start(d);
    cl.wait_hosts(0, Duration::from_secs(10), "d seen", |h| {
        host(h, "d").is_some_and(|d| d["alive"] == true)
    });
    cl.all_pairs_reach(&[2]);

    // forget: refused while alive, then d is killed and forgotten.
    let out = cl.netds[0].cli(&["cluster", "forget", "d"]).unwrap();
    assert!(
        !out.success && out.stderr.contains("alive"),
        "{}",
        out.stderr
    );
    cl.netds[d].signal(libc::SIGKILL).unwrap();
    cl.wait_hosts(0, Duration::from_secs(15), "d dead", |h| {
        host(h, "d").is_some_and(|d| d["alive"] == false)
    });
    let out = cl.netds[0].cli(&["cluster", "forget", "d"]).unwrap();
    assert!(out.success, "{}", out.stderr);
    cl.wait_hosts(1, Duration::from_secs(5), "d forgotten", |h| {
        host(h, "d").is_none()
    });
    assert_eq!(cl.netds[1].peers().unwrap().len(), 1);
}

#[tokio::test]
async fn etcd_down_for_30_s_under_a_stream_loses_nothing_and_a_host_joined_after_is_seen() {
    require_root!();
    let mut cl = Cluster::new(&["a", "b", "c"]).await;
    cl.wait_all_alive();
    let stream = Stream::start(
        &cl.containers[0].netns,
        &cl.containers[1].netns,
        cl.addrs(1)[0],
    );
    std::thread::sleep(Duration::from_secs(2));
    cl.etcd.stop();
    let down = Instant::now();
    // The store shows down, the peers and routes stay.
    let status = loop {
        let s = cl.netds[0].json(&["cluster", "status"]).unwrap();
        if s["store_up"] == false || down.elapsed() > Duration::from_secs(20) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status["store_up"], false, "{status}");
    assert!(status["store_last_error"].is_string(), "{status}");
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(cl.netds[0].peers().unwrap().len(), 2);
    cl.all_pairs_reach(&[]);
    cl.etcd.restart().unwrap();

    let d = cl.add_host("d").await;
    cl.start(d);
    for i in 0..3 {
        let took = cl.wait_hosts(
            i,
            Duration::from_secs(20),
            "d seen after etcd is back",
            |h| host(h, "d").is_some_and(|d| d["alive"] == true),
        );
        eprintln!("d seen on {} after {took:?}", cl.netds[i].host.name);
    }
    cl.all_pairs_reach(&[]);
    let (sent, received, gap, intact) = stream.finish();
    eprintln!("stream: {sent} bytes sent, {received} received, longest gap {gap:?}");
    assert_eq!(sent, received, "bytes lost");
    assert!(intact, "the stream's bytes arrived changed");
    assert!(gap < Duration::from_secs(1), "a stall of {gap:?}");
    let status = cl.netds[0].json(&["cluster", "status"]).unwrap();
    assert_eq!(status["store_up"], true, "{status}");
    assert!(status["watch_relists"].as_u64().unwrap() >= 1, "{status}");
}

#[tokio::test]
async fn bad_data_in_the_store_is_ignored_counted_and_the_cluster_keeps_working() {
    require_root!();
    let cl = Cluster::new(&["a", "b"]).await;
    cl.wait_hosts(1, Duration::from_secs(10), "both", |h| h.len() == 2);
    let a_id = cl.netds[0].json(&["cluster", "status"]).unwrap()["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = &cl.netds[1].public_key;
    let record = |id: &str, public_key: &str, endpoint: &str, subnet: &str| {
        format!(
            r#"{{"id":"{id}","name":"bad","public_key":"{public_key}","key_epoch":1,"endpoint":"{endpoint}","ipv4_subnet":"{subnet}","ipv6_subnet":null,"reserved_until":4000000000}}"#
        )
    };
    let ids = [
        "b0000000000000000000000000000001",
        "b0000000000000000000000000000002",
        "b0000000000000000000000000000003",
        "b0000000000000000000000000000004",
    ];
    let writes = [
        (format!("/weft/v1/hosts/{}", ids[0]), "not json".to_string()),
        (format!("/weft/v1/hosts/{}", ids[1]), record(ids[1], "not-a-key", "198.18.0.9:51820", "10.96.250.0/24")),
        (format!("/weft/v1/hosts/{}", ids[2]), record(ids[2], key, "nowhere", "10.96.251.0/24")),
        (format!("/weft/v1/hosts/{}", ids[3]), record(ids[3], key, "198.18.0.9:51820", &cl.netds[0].subnet)),
        ("/weft/v1/config".to_string(), r#"{"ipv4_range":"10.97.0.0/16","ipv4_subnet_len":24,"ipv6_range":null,"ipv6_subnet_len":null,"overlay_port":51820}"#.to_string()),
    ];
    for (k, v) in &writes {
        let out = cl.etcd.etcdctl(&["put", k, v]).unwrap();
        assert!(out.success, "etcdctl put {k}: {}", out.stderr);
    }
    let start = Instant::now();
    let status = loop {
        let s = cl.netds[1].json(&["cluster", "status"]).unwrap();
        let bad = &s["bad_data"];
        let all = [
            "not_json",
            "bad_key",
            "bad_endpoint",
            "overlapping_subnet",
            "config_changed",
        ]
        .iter()
        .all(|r| bad[*r].as_u64().unwrap_or(0) >= 1);
        if all {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "bad data not counted: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("bad data counted: {}", status["bad_data"]);
    // Nothing of it applied: the same two hosts, one peer each, and a's
    // subnet still routed to a.
    assert_eq!(
        cl.netds[1]
            .json(&["cluster", "hosts"])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let peers = cl.netds[1].peers().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["host"]["id"], a_id.as_str());
    cl.all_pairs_reach(&[]);
}

#[tokio::test]
async fn a_subnet_key_other_than_the_reservation_is_refused_at_start_naming_both() {
    require_root!();
    let mut cl = Cluster::new(&["a"]).await;
    let e = cl.add_host("e").await;
    let config = cl.netds[e].config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("subnet = \"10.96.250.0/24\"\n{text}")).unwrap();
    let err = cl.netds[e].start().unwrap_err().to_string();
    assert!(
        err.contains("say 10.96.250.0/24") && err.contains("holds no reservation yet"),
        "{err}"
    );
    // Nothing written: no reservation file, no record in the store.
    let reserved =
        std::fs::read_to_string(cl.netds[e].state_dir().join("cluster-reservation.json"));
    assert!(reserved.is_err(), "{reserved:?}");
    let hosts = cl
        .etcd
        .etcdctl(&["get", "--prefix", "/weft/v1/hosts/", "--keys-only"])
        .unwrap();
    assert_eq!(
        hosts.stdout.lines().filter(|l| !l.is_empty()).count(),
        1,
        "{}",
        hosts.stdout
    );

    // Joined, then restarted with a `subnet` key that names another subnet:
    // refused, naming both; with the reserved one: fine.
    std::fs::write(&config, &text).unwrap();
    cl.start(e);
    let reserved = cl.netds[e].subnet.clone();
    cl.netds[e].signal(libc::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&config, format!("subnet = \"10.96.250.0/24\"\n{text}")).unwrap();
    let err = cl.netds[e].start().unwrap_err().to_string();
    assert!(
        err.contains("`subnet` key says 10.96.250.0/24") && err.contains(&reserved),
        "{err}"
    );
    std::fs::write(&config, format!("subnet = \"{reserved}\"\n{text}")).unwrap();
    cl.netds[e].start().unwrap();
}

fn unknown_key_drops(netd: &NetdHost) -> u64 {
    let status = netd.json(&["status"]).unwrap();
    status["overlay"]["drops"]["unknown_key"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn rotate_key_under_a_stream_pauses_under_2_s_and_the_old_key_is_refused_after() {
    require_root!();
    let cl = Cluster::new(&["a", "b", "c"]).await;
    cl.wait_all_alive();
    cl.all_pairs_reach(&[]);
    let key_file = cl.netds[0].state_dir().join("overlay.key");
    let old_private = overlay::PrivateKey::read_file(&key_file).unwrap();
    let old_key = cl.netds[0].public_key.clone();
    assert_eq!(old_private.public_key().to_base64(), old_key);
    let epoch = cl.netds[0].json(&["cluster", "status"]).unwrap()["key_epoch"]
        .as_u64()
        .unwrap();

    let stream = Stream::start(
        &cl.containers[0].netns,
        &cl.containers[1].netns,
        cl.addrs(1)[0],
    );
    std::thread::sleep(Duration::from_secs(2));
    let rotated = cl.netds[0].json(&["cluster", "rotate-key"]).unwrap();
    let new_key = rotated["public_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key, "{rotated}");
    assert_eq!(rotated["key_epoch"], epoch + 1, "{rotated}");
    // The key file holds the new key, still 0600.
    let on_disk = overlay::PrivateKey::read_file(&key_file).unwrap();
    assert_eq!(on_disk.public_key().to_base64(), new_key);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    assert!(
        !cl.netds[0].log_text().contains(&on_disk.to_base64()),
        "the new private key is in the log"
    );
    let status = cl.netds[0].json(&["cluster", "status"]).unwrap();
    assert_eq!(status["key_epoch"], epoch + 1, "{status}");

    // The others replace a's peer: the new key, the old one gone.
    for i in 1..3 {
        let start = Instant::now();
        loop {
            let peers = cl.netds[i].peers().unwrap();
            let has = |k: &str| peers.iter().any(|p| p["public_key"] == k);
            if has(&new_key) && !has(&old_key) {
                let a = peers.iter().find(|p| p["public_key"] == new_key.as_str());
                assert_eq!(a.unwrap()["host"]["key_epoch"], epoch + 1, "{peers:?}");
                eprintln!(
                    "{} took a's new key after {:?}",
                    cl.netds[i].host.name,
                    start.elapsed()
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} still has a's old key or lacks the new one: {peers:?}\n{}",
                cl.netds[i].host.name,
                cl.netds[i].log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let (sent, received, gap, intact) = stream.finish();
    eprintln!(
        "rotation under a stream: {sent} bytes sent, {received} received, longest gap {gap:?}"
    );
    assert_eq!(sent, received, "bytes lost");
    assert!(intact, "the stream's bytes arrived changed");
    assert!(gap < Duration::from_secs(2), "a pause of {gap:?}");
    cl.all_pairs_reach(&[]);

    // A handshake under the old key is refused: b drops it as from an unknown key.
    let hosts = cl.netds[1].json(&["cluster", "hosts"]).unwrap();
    let b_endpoint: std::net::SocketAddr = host(hosts.as_array().unwrap(), "b").unwrap()
        ["endpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let b_key = overlay::PublicKey::from_base64(&cl.netds[1].public_key).unwrap();
    let before = unknown_key_drops(&cl.netds[1]);
    let socket = cl.netds[0]
        .host
        .netns
        .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    for message in overlay_support::initiations(&old_private, b_key, 3) {
        socket.send_to(&message, b_endpoint).unwrap();
    }
    let start = Instant::now();
    while unknown_key_drops(&cl.netds[1]) < before + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b did not drop the old key's initiations as unknown: {}",
            cl.netds[1].json(&["status"]).unwrap()["overlay"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn netd_peers_shows_failing_handshake_attempts_to_a_host_that_is_down() {
    require_root!();
    let mut cl = Cluster::new(&["a", "b"]).await;
    cl.wait_all_alive();
    // b goes down before a ever talked to it: a's first packet starts
    // handshakes that nothing answers.
    cl.netds[1].signal(libc::SIGKILL).unwrap();
    let b_key = cl.netds[1].public_key.clone();
    assert!(!ping(&cl.containers[0].netns, cl.addrs(1)[0]).unwrap());
    let peer_b = |cl: &Cluster| {
        let peers = cl.netds[0].peers().unwrap();
        peers
            .into_iter()
            .find(|p| p["public_key"] == b_key.as_str())
            .expect("b stays a peer while down")
    };
    let first = peer_b(&cl);
    assert!(
        first["handshake_attempts"].as_u64().unwrap() >= 1,
        "{first}"
    );
    assert_eq!(first["last_handshake"], Value::Null, "{first}");
    // WireGuard retries every 5 s: the count grows and says why.
    let start = Instant::now();
    let later = loop {
        let p = peer_b(&cl);
        if p["handshake_attempts"].as_u64().unwrap() >= 3 {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "attempts did not grow: {p}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("a's view of b while b is down: {later}");
    assert_eq!(
        later["handshake_last_error"], "no response to the initiation",
        "{later}"
    );
    assert!(later["handshake_last_error_age_secs"].as_u64().unwrap() < 10);
    let table = cl.netds[0].cli(&["peers"]).unwrap();
    assert!(
        table.stdout.contains("ATTEMPTS") && table.stdout.contains("no response to the initiation"),
        "{}",
        table.stdout
    );
    eprintln!("{}", table.stdout);

    // Back: a handshake succeeds and nothing is pending any more.
    cl.start(1);
    cl.wait_all_alive();
    cl.all_pairs_reach(&[]);
    let back = peer_b(&cl);
    assert_eq!(back["handshake_attempts"], 0, "{back}");
    assert!(back["last_handshake"].is_u64(), "{back}");
}
