//! `weft` with a delegated IPAM (host-local with routes and its own gateway):
//! netd, not the plugin, puts the IPAM's routes in the container and its
//! gateway on the bridge, and so netd's CHECK sees them missing, its
//! reconciliation puts them back, and DEL removes the routes with the
//! interface and the gateway address with the last endpoint needing it. In
//! standalone mode (netd's library on the plugin's state directory) and
//! through a daemon (`netd reconcile`).

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;
mod netd_support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use world::{ip_json, require_root, run_in, Container, Host, World};

use cni::{exec_in, Call, Scratch};
use netd_support::{Netd, TestDir};

/// The extra route without a gateway (host-local's gateway is used) and the
/// one with its own.
const VIA_GATEWAY: &str = "192.0.2.0/24";
const VIA_OWN: &str = "198.51.100.0/24";

fn call(command: &str, c: &Container, config: &Value) -> Call {
    Call {
        command: command.into(),
        container_id: Some(format!("ctr-{}", c.name)),
        netns: Some(format!("/run/netns/{}", c.netns_name)),
        ifname: Some("eth0".into()),
        cni_args: None,
        cni_path: Some("/usr/lib/cni".into()),
        stdin: config.to_string().into_bytes(),
    }
}

fn with_prev(config: &Value, prev: &Value) -> Value {
    let mut c = config.clone();
    c["prevResult"] = prev.clone();
    c
}

/// host-local on `subnet` (a /24) with its gateway at .254, a default
/// route and the two extra routes.
fn host_local(dir: &Path, subnet: &str) -> Value {
    let net: ipnetwork::Ipv4Network = subnet.parse().unwrap();
    let gateway = net.nth(254).unwrap().to_string();
    let own_gw = net.nth(253).unwrap().to_string();
    json!({"type": "host-local", "dataDir": dir.join("ipam"),
           "ranges": [[{"subnet": subnet, "gateway": gateway,
                        "rangeStart": net.nth(50).unwrap().to_string(),
                        "rangeEnd": net.nth(59).unwrap().to_string()}]],
           "routes": [{"dst": "0.0.0.0/0"}, {"dst": VIA_GATEWAY},
                      {"dst": VIA_OWN, "gw": own_gw}]})
}

/// The container's routes as `dst via gw` (or `dst`) lines.
fn routes(c: &Container) -> Vec<String> {
    match ip_json(&c.netns, &["route", "show"]) {
        Ok(Value::Array(routes)) => routes
            .iter()
            .map(|r| {
                let dst = r["dst"].as_str().unwrap_or_default();
                match r["gateway"].as_str() {
                    Some(gw) => format!("{dst} via {gw}"),
                    None => dst.to_string(),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The bridge's addresses as `ip/prefix`.
fn bridge_addresses(host: &Host, bridge: &str) -> Vec<String> {
    let json = ip_json(&host.netns, &["addr", "show", "dev", bridge]).unwrap();
    json[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

fn ip(netns: &plumb::Netns, args: &[&str]) {
    let out = run_in(netns, "ip", args, Duration::from_secs(10)).unwrap();
    assert!(out.success, "ip {}: {}", args.join(" "), out.stderr);
}

/// Everything both modes check: the routes and the gateway in place after
/// ADD; each taken away, CHECK names it and `reconcile` restores it; DEL
/// takes the routes and, with the last endpoint, the gateway address.
async fn routes_and_gateway_are_netds<F, Fut>(
    a: &Host,
    bridge: &str,
    subnet: &str,
    config: &Value,
    reconcile: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let net: ipnetwork::Ipv4Network = subnet.parse().unwrap();
    let gateway = net.nth(254).unwrap();
    let gateway_on_bridge = format!("{gateway}/24");
    let plugin = world::workspace_bin("weft");
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    let add = |c: &Container| {
        exec_in(a, &plugin, &call("ADD", c, config))
            .unwrap()
            .result()
            .unwrap()
    };
    let (r1, r2) = (add(&c1), add(&c2));
    let via_gateway = format!("{VIA_GATEWAY} via {gateway}");
    let via_own = format!("{VIA_OWN} via {}", net.nth(253).unwrap());
    for c in [&c1, &c2] {
        let routes = routes(c);
        assert!(
            routes.contains(&via_gateway)
                && routes.contains(&via_own)
                && routes.contains(&format!("default via {gateway}")),
            "{}: {routes:?}",
            c.name
        );
    }
    assert!(
        bridge_addresses(a, bridge).contains(&gateway_on_bridge),
        "{:?}",
        bridge_addresses(a, bridge)
    );
    // The result's interfaces carry what netd reported of the host side.
    for i in 0..3 {
        assert!(r1["interfaces"][i]["mac"].is_string(), "{r1}");
    }
    assert!(r1["interfaces"][2]["mtu"].is_u64(), "{r1}");
    let check = with_prev(config, &r1);
    exec_in(a, &plugin, &call("CHECK", &c1, &check))
        .unwrap()
        .ok()
        .unwrap();

    // The route taken away: CHECK names it, reconciliation puts it back.
    ip(&c1.netns, &["route", "del", VIA_GATEWAY]);
    let err = exec_in(a, &plugin, &call("CHECK", &c1, &check))
        .unwrap()
        .error()
        .unwrap();
    assert!(err.to_string().contains(VIA_GATEWAY), "{err}");
    reconcile().await;
    assert!(routes(&c1).contains(&via_gateway), "{:?}", routes(&c1));
    exec_in(a, &plugin, &call("CHECK", &c1, &check))
        .unwrap()
        .ok()
        .unwrap();

    // The gateway taken off the bridge: the same.
    ip(
        &a.netns,
        &["addr", "del", &gateway_on_bridge, "dev", bridge],
    );
    let err = exec_in(a, &plugin, &call("CHECK", &c1, &check))
        .unwrap()
        .error()
        .unwrap();
    assert!(err.to_string().contains(&gateway.to_string()), "{err}");
    reconcile().await;
    assert!(
        bridge_addresses(a, bridge).contains(&gateway_on_bridge),
        "{:?}",
        bridge_addresses(a, bridge)
    );
    exec_in(a, &plugin, &call("CHECK", &c1, &check))
        .unwrap()
        .ok()
        .unwrap();

    // DEL: the routes go with c1's interface; c2 still needs the gateway.
    exec_in(a, &plugin, &call("DEL", &c1, &with_prev(config, &r1)))
        .unwrap()
        .ok()
        .unwrap();
    assert!(
        !routes(&c1)
            .iter()
            .any(|r| r.starts_with(VIA_GATEWAY) || r.starts_with(VIA_OWN)),
        "{:?}",
        routes(&c1)
    );
    assert!(
        bridge_addresses(a, bridge).contains(&gateway_on_bridge),
        "c2 still needs the gateway: {:?}",
        bridge_addresses(a, bridge)
    );
    exec_in(a, &plugin, &call("DEL", &c2, &with_prev(config, &r2)))
        .unwrap()
        .ok()
        .unwrap();
    let left = bridge_addresses(a, bridge);
    assert!(
        !left.contains(&gateway_on_bridge),
        "the gateway outlived its last endpoint: {left:?}"
    );
    assert!(routes(&c2).is_empty(), "{:?}", routes(&c2));
}

#[tokio::test]
async fn standalone_netd_owns_the_delegated_routes_and_gateway() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let scratch = Scratch::new(&format!("{}-dr", world.prefix())).unwrap();
    let (bridge, subnet) = ("weftdr0", "10.86.0.0/24");
    let state_dir = scratch.0.join("weft");
    let config = json!({
        "cniVersion": "1.1.0", "name": "delegated", "type": "weft", "mode": "standalone",
        "bridge": bridge, "isGateway": true, "stateDir": state_dir,
        "ipam": host_local(&scratch.0, subnet),
    });
    // What the plugin opens, minus its choice of namespace: the host's.
    let netd_config = netd::Config {
        bridge: bridge.into(),
        state_dir: state_dir.clone(),
        subnet: subnet.parse().unwrap(),
        masquerade: false,
        ..netd::Config::default()
    };
    let host_netns = a.netns.clone();
    let reconcile = || {
        let (config, netns) = (netd_config.clone(), host_netns.clone());
        async move {
            let network = netd::Network::open_in(config, netns, None).unwrap();
            let report = network.reconcile().await.unwrap();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
        }
    };
    routes_and_gateway_are_netds(&a, bridge, subnet, &config, reconcile).await;
    // netd's own gateway of the network stays.
    assert!(bridge_addresses(&a, bridge).contains(&"10.86.0.1/24".to_string()));
}

#[tokio::test]
async fn the_daemon_owns_the_delegated_routes_and_gateway() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let bridge = "weftdr1";
    // No periodic repair: what is taken away stays away until `netd reconcile`.
    let args = [
        "--subnet",
        "10.87.0.0/24",
        "--bridge",
        bridge,
        "--reconcile-interval-secs",
        "3600",
    ];
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let config = json!({
        "cniVersion": "1.1.0", "name": "delegated", "type": "weft", "mode": "daemon",
        "bridge": bridge, "isGateway": true, "socket": netd.socket,
        "ipam": host_local(&dir.0, "10.88.0.0/24"),
    });
    let reconcile = || async {
        netd.json(&["reconcile"]).unwrap();
    };
    routes_and_gateway_are_netds(&a, bridge, "10.88.0.0/24", &config, reconcile).await;
    assert!(bridge_addresses(&a, bridge).contains(&"10.87.0.1/24".to_string()));
    assert!(cni::netd_state(&netd.state_dir).unwrap().0.is_empty());
}

/// A route the kernel refuses (its gateway is not reachable) fails the
/// attach and undoes all of it: no veth, no record, and the bridge address
/// it brought goes unless another endpoint needs it.
#[tokio::test]
async fn a_refused_route_undoes_the_whole_attach() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let bridge = "weftrb0";
    let config = netd::Config {
        bridge: bridge.into(),
        state_dir: dir.0.join("state"),
        subnet: "10.90.0.0/24".parse().unwrap(),
        ..netd::Config::default()
    };
    let network = netd::Network::open_in(config, a.netns.clone(), None).unwrap();
    let request =
        |c: &Container, address: &str, routes: Vec<netd::ContainerRoute>| netd::AttachRequest {
            netns: format!("/run/netns/{}", c.netns_name),
            id: Some(c.name.clone()),
            assigned: Some(netd::AssignedAddresses {
                ips: vec![address.parse().unwrap()],
                gateways: vec!["10.89.0.254".parse().unwrap()],
            }),
            bridge_addresses: vec!["10.89.0.254/24".parse().unwrap()],
            routes,
            ..Default::default()
        };
    let unreachable = netd::ContainerRoute {
        dst: "192.0.2.0/24".parse().unwrap(),
        gw: Some("203.0.113.1".parse().unwrap()),
        metric: None,
        table: None,
    };
    let veths = || -> Vec<String> {
        ip_json(&a.netns, &["-d", "link", "show"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["linkinfo"]["info_kind"] == "veth")
            .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
            // The host's own uplink is a veth too.
            .filter(|name| name.starts_with(netd::endpoints::HOST_IFNAME_PREFIX))
            .collect()
    };

    let c1 = a.container("c1").unwrap();
    let err = network
        .attach(request(&c1, "10.89.0.5/24", vec![unreachable]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), netd::ErrorKind::Kernel, "{err}");
    assert!(err.to_string().contains("192.0.2.0/24"), "{err}");
    assert!(veths().is_empty(), "{:?}", veths());
    assert!(ip_json(&c1.netns, &["link", "show", "eth0"]).is_err());
    assert!(network.list().unwrap().is_empty());
    let left = bridge_addresses(&a, bridge);
    assert!(!left.contains(&"10.89.0.254/24".to_string()), "{left:?}");

    // With c2 attached and needing the same gateway, c1's failure keeps it.
    let c2 = a.container("c2").unwrap();
    network
        .attach(request(&c2, "10.89.0.6/24", vec![]))
        .await
        .unwrap();
    network
        .attach(request(&c1, "10.89.0.5/24", vec![unreachable]))
        .await
        .unwrap_err();
    let left = bridge_addresses(&a, bridge);
    assert!(left.contains(&"10.89.0.254/24".to_string()), "{left:?}");
    assert_eq!(network.list().unwrap().len(), 1);
    network.detach("c2").await.unwrap();
    let left = bridge_addresses(&a, bridge);
    assert!(!left.contains(&"10.89.0.254/24".to_string()), "{left:?}");
    assert!(veths().is_empty(), "{:?}", veths());
}
