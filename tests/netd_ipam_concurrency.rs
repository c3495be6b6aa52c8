//! Many attaches at once: every container gets its own address and is
//! reachable. Each attach is a separate `netd attach` client process, so the
//! daemon serves them concurrently.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

mod netd_support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use netd_support::{default_args, eventually, links_with_prefix, result_ip, Netd, TestDir};
use world::{ping, require_root, World};

const CONTAINERS: usize = 50;

#[tokio::test]
async fn fifty_parallel_attaches_get_fifty_distinct_reachable_addresses() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.8.0/24")).unwrap();
    let containers: Vec<_> = (0..CONTAINERS)
        .map(|i| host.container(&format!("p{i}")).unwrap())
        .collect();
    let netd_ref = &netd;
    let results: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = containers
            .iter()
            .map(|c| scope.spawn(move || netd_ref.attach(&c.netns_name, &c.name, &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let ips: BTreeSet<IpAddr> = results.iter().map(result_ip).collect();
    assert_eq!(
        ips.len(),
        CONTAINERS,
        "addresses were handed out twice: {results:?}"
    );
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), CONTAINERS);
    let status = netd.json(&["status"]).unwrap();
    assert_eq!(status["ipam"][0]["in_use"], CONTAINERS + 1);
    assert_eq!(status["containers"], CONTAINERS);
    // Every container answers from the host (via the bridge), and one
    // container reaches every other.
    for ip in &ips {
        assert!(ping(&host.netns, *ip).unwrap(), "{ip} does not answer");
    }
    for ip in ips.iter().skip(1) {
        assert!(ping(&containers[0].netns, *ip).unwrap() || result_ip(&results[0]) == *ip);
    }
    // Detaching them all in parallel leaves nothing.
    std::thread::scope(|scope| {
        for c in &containers {
            scope.spawn(move || netd_ref.json(&["detach", &c.name]).unwrap());
        }
    });
    // netd answered once each was cut off; the veth pairs go in the
    // background, batched, and only then are the addresses released.
    assert!(
        eventually(Duration::from_secs(10), || links_with_prefix(
            &host.netns,
            "wv"
        )
        .is_empty()
            && netd.json(&["status"]).unwrap()["ipam"][0]["in_use"] == 1),
        "links or addresses left after detaching all 50"
    );
}

/// netd's periodic look at the host runs beside attaches and detaches. What
/// it sees mid-way (a link listed before an attach finished, a detach whose
/// veth is going) must not pass for damage: a full reconciliation holds
/// every attach up, and under a stream of them the torn view alone had netd
/// reconciling at every tick.
#[tokio::test]
async fn a_stream_of_attaches_and_detaches_is_not_taken_for_damage() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    // A check every second, and enough containers that a look takes a while.
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.9.0/24")).unwrap();
    let standing: Vec<_> = (0..30)
        .map(|i| host.container(&format!("s{i}")).unwrap())
        .collect();
    for c in &standing {
        netd.attach(&c.netns_name, &c.name, &[]).unwrap();
    }
    let churners: Vec<_> = (0..4)
        .map(|i| host.container(&format!("w{i}")).unwrap())
        .collect();
    let netd_ref = &netd;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let rounds: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = churners
            .iter()
            .map(|c| {
                scope.spawn(move || {
                    let mut rounds = 0;
                    // Bounded in time and in count.
                    while std::time::Instant::now() < until && rounds < 200 {
                        netd_ref.attach(&c.netns_name, &c.name, &[]).unwrap();
                        netd_ref.json(&["detach", &c.name]).unwrap();
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(rounds >= 8, "only {rounds} attach/detach rounds in 5 s");
    let log = netd.log_text();
    let reconciled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("periodic check"))
        .collect();
    assert!(
        reconciled.is_empty(),
        "{rounds} attach/detach rounds were taken for damage:\n{}",
        reconciled.join("\n")
    );
    // The check still sees real damage.
    let victim = netd.endpoints().unwrap()[0]["host_ifname"]
        .as_str()
        .unwrap()
        .to_string();
    world::run_in(
        &host.netns,
        "ip",
        &["link", "set", &victim, "nomaster"],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || netd
            .log_text()
            .contains("periodic check: endpoint link missing or detached")),
        "unplugging {victim} went unnoticed"
    );
}
