//! netd on one simulated host: containers attached through the CLI reach each
//! other and the gateway, detach leaves nothing behind, and bad input is
//! refused with a clear error and no change.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

mod netd_support;

use std::net::IpAddr;
use std::time::Duration;

use netd_support::{
    addresses, default_args, eventually, links_with_prefix, result_ip, Netd, TestDir,
};
use world::{ip_json, ping, ping6, require_root, tcp_exchange, World};

#[tokio::test]
async fn two_containers_reach_each_other_and_the_gateway_and_detach_leaves_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.0.0/24")).unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();

    // The bridge carries the gateway; forwarding is on.
    assert_eq!(addresses(&host.netns, "weft0"), ["10.66.0.1/24"]);
    assert_eq!(
        plumb::sysctl::read(&host.netns, "net.ipv4.ip_forward").unwrap(),
        "1"
    );

    let bridge_mac =
        || ip_json(&host.netns, &["link", "show", "weft0"]).unwrap()[0]["address"].clone();
    let gateway_mac = bridge_mac();

    let r1 = netd
        .attach(&c1.netns_name, "c1", &["--mac", "02:aa:00:00:00:01"])
        .unwrap();
    let r2 = netd.attach(&c2.netns_name, "c2", &[]).unwrap();
    // The bridge keeps its own MAC: the gateway's MAC does not change under
    // the containers' ARP caches as ports come and go.
    assert_eq!(bridge_mac(), gateway_mac);
    assert_eq!(r1["ips"][0]["address"], "10.66.0.2/24");
    assert_eq!(r2["ips"][0]["address"], "10.66.0.3/24");
    assert_eq!(r1["ips"][0]["gateway"], "10.66.0.1");
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r1["mac"], "02:aa:00:00:00:01");
    let host_if1 = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(
        host_if1.starts_with("wv") && host_if1.len() <= 15,
        "{host_if1}"
    );

    // The kernel, seen through iproute2: both host ends are ports of weft0,
    // the container ends are veths in the containers with address and route.
    let ports = ip_json(&host.netns, &["link", "show", "master", "weft0"]).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 2);
    // One MAC for every host end: the bridge keeps one permanent forwarding
    // entry for them, not one per container.
    assert_eq!(ports[0]["address"], ports[1]["address"]);
    assert_ne!(ports[0]["address"], gateway_mac);
    let eth0 = ip_json(&c1.netns, &["-d", "link", "show", "eth0"]).unwrap();
    assert_eq!(eth0[0]["linkinfo"]["info_kind"], "veth");
    assert_eq!(eth0[0]["address"], "02:aa:00:00:00:01");
    assert_eq!(addresses(&c1.netns, "eth0"), ["10.66.0.2/24"]);
    let routes = ip_json(&c1.netns, &["route", "show", "default"]).unwrap();
    assert_eq!(routes[0]["gateway"], "10.66.0.1");
    // An IPv4-only network: no IPv6 link-local address on the container's
    // interface, so nothing of it is flooded to every port; no multicast
    // snooping on the bridge (the default).
    // (A link-local address would appear as soon as the link has a carrier.)
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !link_local6(&c1.netns, "eth0"),
        "eth0 of an IPv4-only network has no fe80:: address"
    );
    let bridge = ip_json(&host.netns, &["-d", "link", "show", "weft0"]).unwrap();
    assert_eq!(bridge[0]["linkinfo"]["info_data"]["mcast_snooping"], 0);

    let (ip1, ip2) = (result_ip(&r1), result_ip(&r2));
    assert!(ping(&c1.netns, ip2).unwrap());
    assert!(ping(&c2.netns, ip1).unwrap());
    assert!(ping(&c1.netns, "10.66.0.1".parse().unwrap()).unwrap());
    tcp_exchange(&c2.netns, (ip2, 7100).into(), &c1.netns).unwrap();

    let ls = netd.endpoints().unwrap();
    assert_eq!(ls.len(), 2);
    assert!(ls.iter().all(|e| e["phase"] == "attached"));
    let status = netd.json(&["status"]).unwrap();
    assert_eq!(status["containers"], 2);
    assert_eq!(status["ipam"][0]["in_use"], 3);

    // Detach by name, waiting for the veth pair's deletion: no link,
    // address or state is left.
    let report = netd.json(&["detach", "c1", "--wait"]).unwrap();
    assert_eq!(report["found"], true);
    assert_eq!(report["released"][0], "10.66.0.2");
    assert!(links_with_prefix(&host.netns, &host_if1).is_empty());
    assert!(links_with_prefix(&c1.netns, "eth0").is_empty());
    let ls = netd.endpoints().unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["name"], "c2");
    assert_eq!(netd.json(&["status"]).unwrap()["ipam"][0]["in_use"], 2);
    let state = netd.state_text();
    assert!(!state.contains("10.66.0.2"), "{state}");
    // Detach is idempotent.
    let again = netd.json(&["detach", "c1"]).unwrap();
    assert_eq!(again["found"], false);
    assert!(ping(&c2.netns, "10.66.0.1".parse().unwrap()).unwrap());

    // A container whose namespace is already gone detaches cleanly (a
    // runtime's DEL after the container died).
    let c3 = host.container("c3").unwrap();
    netd.attach(&c3.netns_name, "c3", &[]).unwrap();
    plumb::Netns::delete(&c3.netns_name).unwrap();
    // Without --wait netd answers once the container is cut off and
    // finishes in the background: the record and address go shortly after.
    let report = netd.json(&["detach", "c3"]).unwrap();
    assert_eq!(report["found"], true);
    assert!(
        eventually(Duration::from_secs(5), || netd.endpoints().unwrap().len()
            == 1),
        "c3's record is forgotten once its link is gone"
    );
    assert_eq!(netd.json(&["status"]).unwrap()["ipam"][0]["in_use"], 2);
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 1);
}

/// A detach answers before the veth pair is deleted; attaching the same
/// container again at once waits for that instead of colliding with it.
#[tokio::test]
async fn reattaching_right_after_a_detach_waits_for_the_old_link() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.7.0/24")).unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    netd.attach(&c2.netns_name, "c2", &[]).unwrap();
    for round in 0..3 {
        let r = netd
            .attach(&c1.netns_name, "c1", &["-p", "8080:80"])
            .unwrap();
        let report = netd.json(&["detach", "c1"]).unwrap();
        assert_eq!(report["found"], true, "round {round}");
        assert_eq!(
            report["released"][0],
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
        );
    }
    // Same id, name, namespace, interface and host port as the pending one.
    let r = netd
        .attach(&c1.netns_name, "c1", &["-p", "8080:80"])
        .unwrap();
    let ip = result_ip(&r);
    assert!(ping(&c2.netns, ip).unwrap());
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 2);
    assert_eq!(addresses(&c1.netns, "eth0").len(), 1);
    assert_eq!(netd.endpoints().unwrap().len(), 2);
}

/// The narrowest case of the above: the attach collides while the reaper
/// still holds the container, and the reaper is done by the time the attach
/// looks at it (made certain with pauses: the reaper sleeps 1 s before
/// deleting, the attach 2 s after the collision). netd had
/// answered "already attached" here, right after a successful detach.
#[tokio::test]
async fn an_attach_colliding_with_a_detach_that_just_finished_goes_through() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start_with_env(
        &world,
        &host,
        &dir.0,
        &default_args("10.66.18.0/24"),
        &[("WEFT_DEBUG_PAUSE_ATTACH", "reap:1,collided:2")],
    )
    .unwrap();
    let c1 = host.container("c1").unwrap();
    netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    netd.json(&["detach", "c1"]).unwrap();
    let r = netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    assert!(ping(&host.netns, result_ip(&r)).unwrap());
    let log = netd.log_text();
    assert!(
        log.contains("step=\"collided\""),
        "the attach did not collide, so this tested nothing:\n{log}"
    );
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 1);
}

/// Two interfaces of one container on the same network share one default
/// route (on the first); detaching the first moves it to the second.
#[tokio::test]
async fn the_default_route_moves_to_a_second_interface_when_the_first_goes() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.8.0/24")).unwrap();
    let c1 = host.container("c1").unwrap();
    netd.attach(&c1.netns_name, "c1a", &[]).unwrap();
    netd.attach(&c1.netns_name, "c1b", &["--ifname", "eth1"])
        .unwrap();
    let routes = ip_json(&c1.netns, &["route", "show", "default"]).unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 1, "{routes}");
    assert_eq!(routes[0]["dev"], "eth0");

    netd.json(&["detach", "c1a", "--wait"]).unwrap();
    let routes = ip_json(&c1.netns, &["route", "show", "default"]).unwrap();
    assert_eq!(routes[0]["dev"], "eth1", "{routes}");
    assert_eq!(routes[0]["gateway"], "10.66.8.1");
    assert!(ping(&c1.netns, "10.66.8.1".parse().unwrap()).unwrap());
}

#[tokio::test]
async fn dual_stack_containers_get_both_families() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.66.1.0/24");
    args.extend([
        "--subnet6".into(),
        "fd66:1::/64".into(),
        "--mtu".into(),
        "1400".into(),
    ]);
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    let r1 = netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    let r2 = netd
        .attach(
            &c2.netns_name,
            "c2",
            &["--ip6", "fd66:1::99", "--ip", "10.66.1.50"],
        )
        .unwrap();
    assert_eq!(r1["ips"][1]["address"], "fd66:1::2/64");
    assert_eq!(r2["ips"][0]["address"], "10.66.1.50/24");
    assert_eq!(r2["ips"][1]["address"], "fd66:1::99/64");
    assert_eq!(r2["routes"][1]["gw"], "fd66:1::1");
    let eth0 = ip_json(&c1.netns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(eth0[0]["mtu"], 1400);
    // With IPv6 configured the container keeps its link-local address.
    assert!(
        eventually(Duration::from_secs(5), || link_local6(&c1.netns, "eth0")),
        "eth0 of a dual-stack network has a fe80:: address"
    );
    assert!(ping6(&c1.netns, "fd66:1::99").unwrap());
    assert!(ping6(&c2.netns, "fd66:1::1").unwrap());
    assert!(ping(&c1.netns, "10.66.1.50".parse().unwrap()).unwrap());

    // A port published without a host address is published for both families.
    let b = world.host("b").await.unwrap();
    let ports = netd.json(&["publish", "c2", "-p", "8080:80"]).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 2, "{ports}");
    world::tcp_via(
        &c2.netns,
        "[::]:80".parse().unwrap(),
        &b.netns,
        "[fd00:198:18::1]:8080".parse().unwrap(),
    )
    .unwrap();
    // The same container port again, over IPv4: the first exchange's
    // connection may still hold port 80 for a moment (FIN_WAIT), so retry.
    assert!(eventually(Duration::from_secs(5), || {
        world::tcp_via(
            &c2.netns,
            "0.0.0.0:80".parse().unwrap(),
            &b.netns,
            "198.18.0.1:8080".parse().unwrap(),
        )
        .is_ok()
    }));
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();

    // A broken config file: netd names the file, the line and the key.
    let config = dir.0.join("netd.toml");
    std::fs::write(&config, "bridge = \"weft0\"\nsubnet = \"10.66.2.0/40\"\n").unwrap();
    let out = world::run_in(
        &host.netns,
        world::workspace_bin("netd").to_str().unwrap(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            dir.0.join("x").to_str().unwrap(),
            "--socket",
            dir.0.join("x.sock").to_str().unwrap(),
        ],
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(!out.success);
    assert!(
        out.stderr.contains(&format!(
            "config file {}, line 2, key `subnet`",
            config.display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        links_with_prefix(&host.netns, "weft0").is_empty(),
        "a broken config created the bridge"
    );

    // A /29 holds the gateway and five containers.
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.2.0/29")).unwrap();
    let c1 = host.container("c1").unwrap();
    netd.attach(&c1.netns_name, "c1", &["--ip", "10.66.2.3"])
        .unwrap();
    let before_state = netd.state_text();
    let before_links = links_with_prefix(&host.netns, "wv");
    let c2 = host.container("c2").unwrap();

    let unchanged = |what: &str| {
        let state = netd.state_text();
        assert_eq!(state, before_state, "{what} changed the state");
        assert_eq!(
            links_with_prefix(&host.netns, "wv"),
            before_links,
            "{what} left a link"
        );
        assert!(
            links_with_prefix(&c2.netns, "eth").is_empty(),
            "{what} left eth0 in c2"
        );
    };

    let err = netd
        .fails(&["attach", "no-such-namespace-x", "--name", "x"])
        .unwrap();
    assert!(
        err.contains("namespace no-such-namespace-x not found"),
        "{err}"
    );
    unchanged("an unknown namespace");

    // Refused for c2 (a free name): each names the problem, nothing changes.
    for (args, expected, what) in [
        (
            ["--ip", "10.66.3.4"],
            "10.66.3.4 is outside subnet 10.66.2.0/29",
            "an address outside the subnet",
        ),
        (
            ["--ip-range", "10.66.9.1-10.66.9.5"],
            "range 10.66.9.1-10.66.9.5 is not inside subnet 10.66.2.0/29",
            "a range outside the subnet",
        ),
        (
            ["--ip", "10.66.2.3"],
            "10.66.2.3 is already in use by container c1",
            "a taken address",
        ),
        (
            ["--mac", "01:00:5e:00:00:01"],
            "multicast",
            "a multicast MAC",
        ),
    ] {
        let mut full = vec!["attach", c2.netns_name.as_str(), "--name", "c2"];
        full.extend(args);
        let err = netd.fails(&full).unwrap();
        assert!(err.contains(expected), "{what}: {err}");
        unchanged(what);
    }

    let err = netd
        .fails(&["attach", &c2.netns_name, "--name", "c1"])
        .unwrap();
    assert!(err.contains("container id c1 is already attached"), "{err}");
    let err = netd
        .fails(&["attach", &c2.netns_name, "--id", "other", "--name", "c1"])
        .unwrap();
    assert!(err.contains("container name c1 is already taken"), "{err}");
    unchanged("a duplicate name");

    // Through the API the same refusals keep their kinds, for callers to match on.
    let client = netd::api::client::Client::new(&netd.socket);
    let attach = |netns: &str, ip: &str| netd::AttachRequest {
        netns: netns.into(),
        name: Some("c2".into()),
        ip: Some(ip.parse().unwrap()),
        ..Default::default()
    };
    for (request, kind) in [
        (
            attach("no-such-namespace-x", "10.66.2.4"),
            netd::ErrorKind::NotFound,
        ),
        (
            attach(&c2.netns_name, "10.66.3.4"),
            netd::ErrorKind::InvalidInput,
        ),
        (
            attach(&c2.netns_name, "10.66.2.3"),
            netd::ErrorKind::Conflict,
        ),
    ] {
        let err = client
            .post::<_, netd::AttachResult>("/v1/containers", &request)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.is_remote(), "{err:?}");
    }
    let err = client
        .get::<netd::AttachResult>("/v1/containers/nobody")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), netd::ErrorKind::NotFound, "{err}");
    unchanged("refusals through the API");

    // Fill the subnet: .2, .4, .5, .6 join .3; the sixth container finds it full.
    let mut others = Vec::new();
    for i in 0..4 {
        let c = host.container(&format!("f{i}")).unwrap();
        netd.attach(&c.netns_name, &format!("f{i}"), &[]).unwrap();
        others.push(c);
    }
    let full_state = netd.state_text();
    let err = netd
        .fails(&["attach", &c2.netns_name, "--name", "c2"])
        .unwrap();
    assert!(
        err.contains("subnet 10.66.2.0/29 is full (6 addresses in use)"),
        "{err}"
    );
    assert_eq!(netd.state_text(), full_state);
    assert!(links_with_prefix(&c2.netns, "eth").is_empty());
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 5);
    let ips: Vec<IpAddr> = netd
        .endpoints()
        .unwrap()
        .iter()
        .map(|e| {
            e["ips"][0]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    for ip in ips {
        assert!(ping(&c1.netns, ip).unwrap() || ip == "10.66.2.3".parse::<IpAddr>().unwrap());
    }
}

/// A kernel failure half-way through an attach (here: the container has
/// IPv6 disabled, so its IPv6 address is refused after the veth exists) is
/// rolled back: no link, no address, no record, no reservation.
#[tokio::test]
async fn a_failed_attach_leaks_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.66.16.0/24");
    args.extend(["--subnet6".into(), "fd66:16::/64".into()]);
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let c1 = host.container("c1").unwrap();
    plumb::sysctl::write(&c1.netns, "net.ipv6.conf.default.disable_ipv6", "1").unwrap();
    let err = netd
        .fails(&["attach", &c1.netns_name, "--name", "c1", "-p", "8080:80"])
        .unwrap();
    assert!(err.contains("attach container c1: add address"), "{err}");
    assert_attach_left_nothing(&netd, &host.netns, &c1.netns);
    // Its port was never published, so another container may take it.
    plumb::sysctl::write(&c1.netns, "net.ipv6.conf.default.disable_ipv6", "0").unwrap();
    let c2 = host.container("c2").unwrap();
    netd.attach(&c2.netns_name, "c2", &["-p", "8080:80"])
        .unwrap();
    assert!(ping(&c2.netns, "10.66.16.1".parse().unwrap()).unwrap());
}

/// After a failed attach of the only container: no host link, no eth0 in
/// the container, no record, and only the gateways' addresses reserved.
fn assert_attach_left_nothing(netd: &Netd, host: &plumb::Netns, container: &plumb::Netns) {
    assert!(links_with_prefix(host, "wv").is_empty(), "host link leaked");
    assert!(
        links_with_prefix(container, "eth0").is_empty(),
        "eth0 leaked"
    );
    assert!(netd.endpoints().unwrap().is_empty());
    let status = netd.json(&["status"]).unwrap();
    for usage in status["ipam"].as_array().unwrap() {
        assert_eq!(usage["in_use"], 1, "an address leaked: {usage}");
    }
}

/// A Linux bridge takes 1023 ports (Docker's "exchange full"): an attach to
/// a full bridge says so and what to do, and leaves nothing behind.
#[tokio::test]
async fn a_full_bridge_is_named_and_the_attach_leaves_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.66.17.0/24")).unwrap();
    // Somebody else's links fill the bridge: 1023 veth ends in one batch.
    let batch = dir.0.join("fill.batch");
    let lines: String = (0..plumb::BRIDGE_MAX_PORTS)
        .map(|i| format!("link add wf{i} type veth peer name wg{i}\nlink set wf{i} master weft0\n"))
        .collect();
    std::fs::write(&batch, lines).unwrap();
    let out = world::run_in(
        &host.netns,
        "ip",
        &["-batch", batch.to_str().unwrap()],
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    let c1 = host.container("c1").unwrap();
    let err = netd
        .fails(&["attach", &c1.netns_name, "--name", "c1", "-p", "8080:80"])
        .unwrap();
    assert!(
        err.contains("bridge weft0 is full: a Linux bridge takes at most 1023 containers"),
        "{err}"
    );
    assert_attach_left_nothing(&netd, &host.netns, &c1.netns);
    // One port freed: the same attach goes through.
    let out = world::run_in(
        &host.netns,
        "ip",
        &["link", "del", "wf7"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    let c1_ip = result_ip(
        &netd
            .attach(&c1.netns_name, "c1", &["-p", "8080:80"])
            .unwrap(),
    );
    assert!(ping(&host.netns, c1_ip).unwrap());
}

/// Whether `dev` in `netns` holds an IPv6 link-local address.
fn link_local6(netns: &plumb::Netns, dev: &str) -> bool {
    let shown = ip_json(netns, &["-6", "addr", "show", "dev", dev]).unwrap();
    shown.as_array().unwrap().iter().any(|l| {
        l["addr_info"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["scope"] == "link"))
    })
}
