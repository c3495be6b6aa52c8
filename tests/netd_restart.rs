//! netd killed or restarted: containers are fully attached or not at all,
//! nothing leaks, a restarted netd adopts what it attached, and the periodic
//! check repairs or removes what changed behind its back.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

mod netd_support;

use std::net::IpAddr;
use std::time::Duration;

use netd_support::{
    addresses, default_args, eventually, links_with_prefix, result_ip, Netd, TestDir,
};
use world::{ip_json, ping, require_root, tcp_exchange, World};

/// netd's nftables table, as `nft` lists it.
fn nft_table(netns: &plumb::Netns) -> String {
    let out = world::run_in(
        netns,
        "nft",
        &["list", "table", "inet", "weft"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    out.stdout
}

/// For each step of an attach, netd is killed with SIGKILL while paused right
/// after it; the restarted netd rolls the attach back completely.
#[tokio::test]
async fn kill_9_during_an_attach_leaves_all_or_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let args = default_args("10.66.4.0/24");
    for (round, step) in ["reserved", "veth", "addressed"].into_iter().enumerate() {
        let mut netd = Netd::start_with_env(
            &world,
            &host,
            &dir.0,
            &args,
            &[("WEFT_DEBUG_PAUSE_ATTACH", step)],
        )
        .unwrap();
        let c = host.container(&format!("k{round}")).unwrap();
        // The attach blocks at the pause; run it from a thread.
        let client = {
            let (netns_name, name) = (c.netns_name.clone(), c.name.clone());
            let socket = netd.socket.clone();
            let host_ns = host.netns.clone();
            std::thread::spawn(move || {
                world::run_in(
                    &host_ns,
                    world::workspace_bin("netd").to_str().unwrap(),
                    &[
                        "attach",
                        &netns_name,
                        "--name",
                        &name,
                        "--socket",
                        socket.to_str().unwrap(),
                    ],
                    Duration::from_secs(60),
                )
                .unwrap()
            })
        };
        // Wait until the attach is in flight at the step.
        assert!(
            eventually(Duration::from_secs(10), || {
                let eps = netd.endpoints().unwrap_or_default();
                let recorded = eps.iter().any(|e| e["phase"] == "attaching");
                let linked = !links_with_prefix(&host.netns, "wv").is_empty();
                let addressed = !addresses(&c.netns, "eth0").is_empty();
                recorded
                    && match step {
                        "reserved" => true,
                        "veth" => linked,
                        _ => addressed,
                    }
            }),
            "attach never reached step {step}:\n{}",
            netd.log_text()
        );
        netd.kill9().unwrap();
        let out = client.join().unwrap();
        assert!(
            !out.success,
            "the attach reported success although netd died"
        );

        netd.restart().unwrap();
        // Start-up reconciliation rolled it back: no link, no address, no record.
        assert!(
            links_with_prefix(&host.netns, "wv").is_empty(),
            "step {step}: host link left"
        );
        assert!(
            links_with_prefix(&c.netns, "eth0").is_empty(),
            "step {step}: eth0 left"
        );
        assert!(
            netd.endpoints().unwrap().is_empty(),
            "step {step}: endpoint left"
        );
        let status = netd.json(&["status"]).unwrap();
        assert_eq!(
            status["ipam"][0]["in_use"], 1,
            "step {step}: address leaked"
        );
        assert!(netd
            .log_text()
            .contains("rolled back the interrupted attach"));
        // And the same container attaches cleanly afterwards.
        let r = netd.attach(&c.netns_name, &c.name, &[]).unwrap();
        assert!(ping(&c.netns, "10.66.4.1".parse().unwrap()).unwrap());
        assert!(ping(&host.netns, result_ip(&r)).unwrap());
        netd.json(&["detach", &c.name]).unwrap();
        netd.terminate().unwrap();
    }
}

/// A detach answers once the container is cut off; the veth pair is deleted
/// in the background. Killed before that, netd finishes the detach on restart.
#[tokio::test]
async fn kill_9_before_a_detach_finished_in_the_background() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let args = default_args("10.66.9.0/24");
    let mut netd = Netd::start_with_env(
        &world,
        &host,
        &dir.0,
        &args,
        &[("WEFT_DEBUG_PAUSE_ATTACH", "reap")],
    )
    .unwrap();
    let c = host.container("c1").unwrap();
    netd.attach(&c.netns_name, "c1", &["-p", "8080:80"])
        .unwrap();
    let report = netd.json(&["detach", "c1"]).unwrap();
    assert_eq!(report["found"], true);
    assert_eq!(report["released"][0], "10.66.9.2");
    // Cut off, not yet deleted: the host end is down, the record says so,
    // the port is withdrawn, the address still reserved.
    let eps = netd.endpoints().unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["phase"], "detaching");
    let host_link = ip_json(&host.netns, &["link", "show", "master", "weft0"]).unwrap();
    assert_eq!(host_link.as_array().unwrap().len(), 1);
    assert!(
        !host_link[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "{host_link}"
    );
    assert!(!nft_table(&host.netns).contains("8080"));
    assert_eq!(netd.json(&["status"]).unwrap()["ipam"][0]["in_use"], 2);

    netd.kill9().unwrap();
    netd.restart().unwrap();
    assert!(links_with_prefix(&host.netns, "wv").is_empty());
    assert!(links_with_prefix(&c.netns, "eth0").is_empty());
    assert!(netd.endpoints().unwrap().is_empty());
    assert_eq!(netd.json(&["status"]).unwrap()["ipam"][0]["in_use"], 1);
}

#[tokio::test]
async fn a_restarted_netd_adopts_twenty_containers_without_duplicates() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.5.0/24")).unwrap();
    let mut containers = Vec::new();
    for i in 0..20 {
        let c = host.container(&format!("r{i}")).unwrap();
        let port = format!("{}:80", 10000 + i);
        let r = netd.attach(&c.netns_name, &c.name, &["-p", &port]).unwrap();
        containers.push((c, result_ip(&r)));
    }
    let links_before = links_with_prefix(&host.netns, "wv");
    assert_eq!(links_before.len(), 20);
    let state_before = netd.state_text();
    let rules_before = nft_table(&host.netns);
    assert!(rules_before.contains("10019"), "{rules_before}");

    // SIGTERM stops netd without touching the containers' networking.
    netd.terminate().unwrap();
    assert!(!netd.socket.exists(), "the socket outlived netd");
    assert_eq!(links_with_prefix(&host.netns, "wv"), links_before);
    let (c0, ip0) = &containers[0];
    assert!(ping(&c0.netns, containers[19].1).unwrap());

    netd.restart().unwrap();
    let report = netd.json(&["reconcile"]).unwrap();
    assert!(report["actions"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(netd.state_text(), state_before);
    assert_eq!(links_with_prefix(&host.netns, "wv"), links_before);
    let ports = ip_json(&host.netns, &["link", "show", "master", "weft0"]).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 20);
    assert_eq!(
        addresses(&host.netns, "weft0"),
        ["10.66.5.1/24"],
        "gateway duplicated"
    );
    assert_eq!(
        nft_table(&host.netns),
        rules_before,
        "a restart changed the rules"
    );
    world::tcp_via(
        &containers[3].0.netns,
        "0.0.0.0:80".parse().unwrap(),
        &c0.netns,
        "198.18.0.1:10003".parse().unwrap(),
    )
    .unwrap();
    for (c, _) in &containers {
        assert_eq!(addresses(&c.netns, "eth0").len(), 1);
        let routes = ip_json(&c.netns, &["route", "show", "default"]).unwrap();
        assert_eq!(routes.as_array().unwrap().len(), 1);
        assert!(
            ping(&c.netns, "10.66.5.1".parse().unwrap()).unwrap(),
            "{}",
            c.name
        );
    }
    tcp_exchange(
        &containers[7].0.netns,
        (containers[7].1, 7200).into(),
        &c0.netns,
    )
    .unwrap();
    assert!(ping(&containers[19].0.netns, *ip0).unwrap());
    // A new container after the restart gets a fresh address.
    let c = host.container("late").unwrap();
    let r = netd.attach(&c.netns_name, "late", &[]).unwrap();
    let late = result_ip(&r);
    assert!(containers.iter().all(|(_, ip)| *ip != late));
}

#[tokio::test]
async fn the_periodic_check_repairs_links_and_forgets_dead_containers() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.6.0/24")).unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    let r1 = netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    let r2 = netd.attach(&c2.netns_name, "c2", &[]).unwrap();
    let host_if1 = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let ip1: IpAddr = result_ip(&r1);
    let mac1 = r1["mac"].clone();

    // Someone deletes c1's veth: netd re-creates it with the same address and MAC.
    let nl = plumb::Netlink::open(&host.netns).await.unwrap();
    nl.delete_link(&host_if1).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || addresses(&c1.netns, "eth0")
            == ["10.66.6.2/24"]),
        "c1 was not repaired:\n{}",
        netd.log_text()
    );
    let eth0 = ip_json(&c1.netns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(eth0[0]["address"], mac1);
    assert!(ping(&c2.netns, ip1).unwrap());

    // Someone deletes the bridge: it comes back with its gateway and ports.
    nl.delete_link("weft0").await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            ip_json(&host.netns, &["link", "show", "master", "weft0"])
                .map(|p| p.as_array().unwrap().len() == 2)
                .unwrap_or(false)
        }),
        "the bridge was not rebuilt:\n{}",
        netd.log_text()
    );
    assert!(ping(&c1.netns, result_ip(&r2)).unwrap());
    assert!(ping(&c1.netns, "10.66.6.1".parse().unwrap()).unwrap());
    // A new container joins the rebuilt bridge, not the one netd saw first.
    let c3 = host.container("c3").unwrap();
    netd.attach(&c3.netns_name, "c3", &[]).unwrap();
    assert!(ping(&c3.netns, ip1).unwrap(), "{}", netd.log_text());
    netd.json(&["detach", "c3"]).unwrap();

    // c2's namespace disappears (the container died without a detach).
    plumb::Netns::delete(&c2.netns_name).unwrap();
    drop(c2);
    assert!(
        eventually(Duration::from_secs(10), || netd.endpoints().unwrap().len()
            == 1),
        "the dead container was not forgotten:\n{}",
        netd.log_text()
    );
    assert_eq!(netd.json(&["status"]).unwrap()["ipam"][0]["in_use"], 2);
    let metrics_log = netd.log_text();
    assert!(metrics_log.contains("its namespace"), "{metrics_log}");
}

#[tokio::test]
async fn an_attach_right_after_the_bridge_was_deleted_makes_it_again() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    // No periodic check in this test's minutes: the attach itself must notice.
    let args = [
        "--subnet",
        "10.66.9.0/24",
        "--reconcile-interval-secs",
        "3600",
    ];
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let c1 = host.container("c1").unwrap();
    netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    let nl = plumb::Netlink::open(&host.netns).await.unwrap();
    let before = nl.require_link("weft0").await.unwrap().index;
    nl.delete_link("weft0").await.unwrap();

    let c2 = host.container("c2").unwrap();
    let r2 = netd
        .attach(&c2.netns_name, "c2", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", netd.log_text()));
    let bridge = nl.require_link("weft0").await.unwrap();
    assert_ne!(bridge.index, before, "the bridge was not made again");
    let host_if2 = r2["interfaces"][0]["name"].as_str().unwrap();
    let port = nl.require_link(host_if2).await.unwrap();
    assert_eq!(port.controller, Some(bridge.index), "{port:?}");
    assert!(ping(&c2.netns, "10.66.9.1".parse().unwrap()).unwrap());
    // A reconcile plugs c1 back in.
    netd.json(&["reconcile"]).unwrap();
    assert!(
        ping(&c1.netns, result_ip(&r2)).unwrap(),
        "{}",
        netd.log_text()
    );
}

#[tokio::test]
async fn reconcile_removes_links_and_reservations_nobody_owns() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.66.7.0/24");
    args[3] = "3600".into();
    let mut netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let c1 = host.container("c1").unwrap();
    netd.attach(&c1.netns_name, "c1", &[]).unwrap();

    // A veth carrying netd's alias for a container netd does not know, and
    // an unrelated link that must be left alone.
    let nl = plumb::Netlink::open(&host.netns).await.unwrap();
    let ghost = plumb::LinkOptions {
        alias: Some("weft:ghost".into()),
        ..Default::default()
    };
    nl.add_veth("wvghost", &ghost, "wvghost-p", &Default::default())
        .await
        .unwrap();
    nl.add_veth("other0", &Default::default(), "other1", &Default::default())
        .await
        .unwrap();
    let report = netd.json(&["reconcile"]).unwrap();
    let kinds: Vec<&str> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stale_link_removed"], "{report}");
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 1);
    assert_eq!(links_with_prefix(&host.netns, "other").len(), 2);

    // `netd check` sees a removed link; `netd reconcile` puts it back.
    assert!(netd.cli(&["check", "c1"]).unwrap().success);
    let host_if = netd.endpoints().unwrap()[0]["host_ifname"]
        .as_str()
        .unwrap()
        .to_string();
    nl.delete_link(&host_if).await.unwrap();
    let err = netd.fails(&["check", "c1"]).unwrap();
    assert!(
        err.contains(&format!("host link {host_if} is missing")),
        "{err}"
    );
    let report = netd.json(&["reconcile"]).unwrap();
    assert_eq!(report["actions"][0]["kind"], "repaired", "{report}");
    assert!(netd.cli(&["check", "c1"]).unwrap().success);
    assert!(ping(&c1.netns, "10.66.7.1".parse().unwrap()).unwrap());

    // A reservation without an endpoint (written while netd is stopped).
    netd.terminate().unwrap();
    netd::Store::open(&netd.state_dir)
        .unwrap()
        .update(|s| -> Result<(), netd::state::StoreError> {
            let pool = s.ipam.pools.get_mut("10.66.7.0/24").expect("the pool");
            pool.reserve("10.66.7.77".parse().unwrap(), "ghost".into());
            Ok(())
        })
        .unwrap();
    netd.restart().unwrap();
    assert_eq!(netd.json(&["status"]).unwrap()["ipam"][0]["in_use"], 2);
    assert!(netd.log_text().contains("released the addresses of ghost"));
    assert!(ping(&c1.netns, "10.66.7.1".parse().unwrap()).unwrap());
}
