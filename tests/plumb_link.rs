//! plumb's library primitives against the real kernel: bridges, veths created
//! straight into another namespace, MAC/MTU/rename, addresses, routes, vxlan.

use std::net::IpAddr;

use plumb::{LinkChange, LinkOptions, Netlink, Route, VxlanSpec};
use world::{ip_json, ping, require_root, tcp_exchange, World};

fn up() -> LinkOptions {
    LinkOptions {
        up: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn bridge_and_veth_pass_traffic_between_containers() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    nl.add_bridge("br0", &up()).await.unwrap();
    for (c, ip) in [(&c1, "10.9.0.2/24"), (&c2, "10.9.0.3/24")] {
        let port = format!("v-{}", c.name);
        nl.add_veth(
            &port,
            &up(),
            "eth1",
            &LinkOptions {
                netns: Some(c.netns.clone()),
                up: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        nl.attach_to_bridge(&port, "br0").await.unwrap();
        let cnl = Netlink::open(&c.netns).await.unwrap();
        cnl.add_address("eth1", ip.parse().unwrap(), false)
            .await
            .unwrap();
    }
    // What the kernel holds, seen through iproute2 rather than plumb.
    let links = ip_json(&host.netns, &["-d", "link", "show", "master", "br0"]).unwrap();
    let ports: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["v-c1", "v-c2"]);
    let eth1 = ip_json(&c1.netns, &["-d", "link", "show", "eth1"]).unwrap();
    assert_eq!(eth1[0]["linkinfo"]["info_kind"], "veth");
    assert!(ping(&c1.netns, "10.9.0.3".parse().unwrap()).unwrap());
    tcp_exchange(&c2.netns, "10.9.0.3:7001".parse().unwrap(), &c1.netns).unwrap();
}

#[tokio::test]
async fn mac_mtu_rename_and_state_changes_reach_the_kernel() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    let mac = "02:aa:bb:cc:dd:01".parse().unwrap();
    nl.add_veth(
        "v1",
        &LinkOptions {
            mtu: Some(1400),
            mac: Some(mac),
            ..Default::default()
        },
        "eth1",
        &LinkOptions {
            netns: Some(c1.netns.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let link = nl.require_link("v1").await.unwrap();
    assert_eq!((link.mtu, link.mac, link.up), (1400, Some(mac), false));
    nl.set_link(
        "v1",
        &LinkChange {
            up: Some(true),
            mtu: Some(1300),
            rename: Some("v1-renamed".into()),
            mac: Some("02:aa:bb:cc:dd:02".parse().unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let shown = ip_json(&host.netns, &["link", "show", "v1-renamed"]).unwrap();
    assert_eq!(shown[0]["mtu"], 1300);
    assert_eq!(shown[0]["address"], "02:aa:bb:cc:dd:02");
    assert!(shown[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "UP"));
    assert!(nl.link("v1").await.unwrap().is_none());
    // The peer landed in the container, not here.
    assert!(nl.link("eth1").await.unwrap().is_none());
    let cnl = Netlink::open(&c1.netns).await.unwrap();
    assert!(cnl.link("eth1").await.unwrap().unwrap().is_kind("veth"));
    // Deleting one end removes both.
    nl.delete_link("v1-renamed").await.unwrap();
    assert!(cnl.link("eth1").await.unwrap().is_none());
}

#[tokio::test]
async fn errors_name_the_object_and_namespace() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    nl.add_bridge("br0", &up()).await.unwrap();
    let err = nl.add_bridge("br0", &up()).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("link br0 already exists in namespace {}", host.netns_name)
    );
    let err = nl.delete_link("nope0").await.unwrap_err().to_string();
    assert!(err.contains("link nope0 does not exist"), "{err}");
    let err = nl
        .add_bridge("sixteen-bytes-xx", &up())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 15"), "{err}");
    assert!(nl.link("sixteen-bytes-xx").await.is_err());
}

#[tokio::test]
async fn several_addresses_ipv6_and_routes() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    nl.add_veth(
        "v1",
        &up(),
        "eth1",
        &LinkOptions {
            netns: Some(c1.netns.clone()),
            up: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    nl.add_address("v1", "10.7.0.1/24".parse().unwrap(), false)
        .await
        .unwrap();
    nl.add_address("v1", "fd07::1/64".parse().unwrap(), true)
        .await
        .unwrap();
    let cnl = Netlink::open(&c1.netns).await.unwrap();
    for a in ["10.7.0.2/24", "10.7.1.2/24", "fd07::2/64", "fd07::3/64"] {
        cnl.add_address("eth1", a.parse().unwrap(), true)
            .await
            .unwrap();
    }
    let mut got: Vec<String> = cnl
        .link_addresses("eth1")
        .await
        .unwrap()
        .iter()
        .filter(|n| !n.ip().to_string().starts_with("fe80"))
        .map(|n| n.to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["10.7.0.2/24", "10.7.1.2/24", "fd07::2/64", "fd07::3/64"]
    );

    // default via a gateway, an extra prefix with a metric, an on-link gateway.
    let default_v4 = Route {
        gateway: Some("10.7.0.1".parse().unwrap()),
        ..Default::default()
    };
    cnl.add_route(&default_v4).await.unwrap();
    cnl.add_route(&Route {
        destination: Some("10.99.0.0/16".parse().unwrap()),
        gateway: Some("10.7.0.1".parse().unwrap()),
        metric: Some(50),
        ..Default::default()
    })
    .await
    .unwrap();
    cnl.add_route(&Route {
        destination: Some("10.98.0.0/16".parse().unwrap()),
        gateway: Some("192.0.2.1".parse().unwrap()),
        dev: Some("eth1".into()),
        onlink: true,
        ..Default::default()
    })
    .await
    .unwrap();
    cnl.add_route(&Route {
        gateway: Some("fd07::1".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let routes = ip_json(&c1.netns, &["route", "show"]).unwrap();
    let find = |dst: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .cloned()
            .unwrap_or_else(|| panic!("no route {dst} in {routes}"))
    };
    assert_eq!(find("default")["gateway"], "10.7.0.1");
    assert_eq!(find("10.99.0.0/16")["metric"], 50);
    assert!(find("10.98.0.0/16")["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "onlink"));
    let v6 = ip_json(&c1.netns, &["-6", "route", "show", "default"]).unwrap();
    assert_eq!(v6[0]["gateway"], "fd07::1");
    // plumb reads them back the same way.
    let ours = cnl.routes(false, false).await.unwrap();
    assert!(ours.iter().any(
        |r| r.destination.is_none() && r.gateway == Some("10.7.0.1".parse::<IpAddr>().unwrap())
    ));
    // Traffic over both families, through the default routes.
    assert!(ping(&c1.netns, "10.7.0.1".parse().unwrap()).unwrap());
    assert!(ping(&c1.netns, "fd07::1".parse().unwrap()).unwrap());
    cnl.delete_route(&default_v4).await.unwrap();
    let routes = ip_json(&c1.netns, &["route", "show", "default"]).unwrap();
    assert!(routes.as_array().unwrap().is_empty(), "{routes}");
    let err = cnl.delete_route(&default_v4).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn vxlan_carries_traffic_between_hosts() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    for (h, peer, inner) in [(&a, b.ip, "10.200.0.1/24"), (&b, a.ip, "10.200.0.2/24")] {
        let nl = Netlink::open(&h.netns).await.unwrap();
        nl.add_vxlan(
            "vx0",
            &VxlanSpec {
                vni: 42,
                underlay: Some("eth0".into()),
                local: Some(IpAddr::V4(h.ip)),
                remote: Some(IpAddr::V4(peer)),
                port: None,
                learning: true,
            },
            &up(),
        )
        .await
        .unwrap();
        nl.add_address("vx0", inner.parse().unwrap(), false)
            .await
            .unwrap();
        let link = nl.require_link("vx0").await.unwrap();
        assert_eq!(
            (link.kind.as_deref(), link.vxlan_id),
            (Some("vxlan"), Some(42))
        );
    }
    assert!(ping(&a.netns, "10.200.0.2".parse().unwrap()).unwrap());
}

#[tokio::test]
async fn sysctls_are_per_namespace() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    plumb::sysctl::write(&a.netns, "net.ipv4.ip_forward", "1").unwrap();
    plumb::sysctl::write(&b.netns, "net.ipv4.ip_forward", "0").unwrap();
    assert_eq!(
        plumb::sysctl::read(&a.netns, "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    assert_eq!(
        plumb::sysctl::read(&b.netns, "net.ipv4.ip_forward").unwrap(),
        "0"
    );
    // Slash form for keys whose parts contain dots, checked through procfs in the namespace.
    plumb::sysctl::write(&a.netns, "net/ipv6/conf/eth0/disable_ipv6", "1").unwrap();
    let out = world::run_in(
        &a.netns,
        "cat",
        &["/proc/sys/net/ipv6/conf/eth0/disable_ipv6"],
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(out.stdout.trim(), "1");
    let err = plumb::sysctl::write(&a.netns, "net.ipv4.no_such_key", "1").unwrap_err();
    assert!(err.to_string().contains("net.ipv4.no_such_key"), "{err}");
}

#[tokio::test]
async fn namespaces_by_name_path_and_pid_are_one_namespace() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let c1 = a.container("c1").unwrap();
    let by_path = plumb::Netns::path(format!("/run/netns/{}", c1.netns_name)).unwrap();
    let pid = world
        .spawn(&c1.netns, {
            let mut sleep = std::process::Command::new("sleep");
            sleep.arg("30");
            sleep
        })
        .unwrap();
    let by_pid = plumb::Netns::resolve(&pid.to_string()).unwrap();
    assert!(by_path.is_same(&c1.netns));
    assert!(by_pid.is_same(&c1.netns));
    assert!(!by_pid.is_same(&a.netns));
    // A vanished namespace is reported as such, not as an I/O error.
    let gone = format!("{}-gone", world.prefix());
    plumb::Netns::create(&gone).unwrap();
    plumb::Netns::delete(&gone).unwrap();
    let err = plumb::Netns::named(&gone).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string().contains("is the container still running"),
        "{err}"
    );
}

#[tokio::test]
async fn hairpin_on_a_bridge_port() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    nl.add_bridge("br0", &up()).await.unwrap();
    nl.add_veth(
        "v1",
        &up(),
        "eth0",
        &LinkOptions {
            netns: Some(c1.netns.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    nl.attach_to_bridge("v1", "br0").await.unwrap();
    let hairpin = |netns: &plumb::Netns| {
        ip_json(netns, &["-d", "link", "show", "v1"]).unwrap()[0]["linkinfo"]["info_slave_data"]
            ["hairpin"]
            .clone()
    };
    assert_eq!(hairpin(&host.netns), false);
    nl.set_hairpin("v1", true).await.unwrap();
    assert_eq!(hairpin(&host.netns), true);
    nl.set_hairpin("v1", false).await.unwrap();
    assert_eq!(hairpin(&host.netns), false);
}

#[tokio::test]
async fn one_connection_serves_concurrent_dumps() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    // Enough links that a dump spans several messages and stays open a while.
    for i in 0..100 {
        nl.add_veth(&format!("d{i}"), &up(), &format!("d{i}p"), &up())
            .await
            .unwrap();
    }
    // 32 dumps at once on one socket, each seeing the whole, consistent table.
    let dumps = (0..32).map(|_| {
        let nl = nl.clone();
        tokio::spawn(async move { (nl.links().await, nl.addresses(None).await) })
    });
    for dump in dumps {
        let (links, addrs) = dump.await.unwrap();
        assert_eq!(links.unwrap().len(), 202, "lo, eth0 and 100 veth pairs");
        assert!(!addrs.unwrap().is_empty());
    }
}
