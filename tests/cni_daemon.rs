//! `weft` with a running netd: `mode: auto` finds the daemon's socket and
//! goes through its API (the daemon's state holds the attachments, the
//! plugin's own state directory stays empty); ports, CHECK, GC and DEL work
//! the same; `mode: daemon` without a daemon is "try again later" and STATUS
//! says unavailable.

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;
mod netd_support;

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};
use world::{require_root, tcp_exchange, tcp_via, World};

use cni::{exec_in, Call, Reply};
use netd_support::{Netd, TestDir};

fn call(command: &str, c: Option<&world::Container>, config: &Value) -> Call {
    Call {
        command: command.into(),
        container_id: c.map(|c| format!("ctr-{}", c.name)),
        netns: c.map(|c| format!("/run/netns/{}", c.netns_name)),
        ifname: c.map(|_| "eth0".into()),
        cni_args: None,
        cni_path: Some("/usr/lib/cni".into()),
        stdin: config.to_string().into_bytes(),
    }
}

fn address(result: &Value) -> IpAddr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

fn daemon_endpoints(netd: &Netd) -> Vec<String> {
    cni::netd_state(&netd.state_dir).unwrap().0
}

#[tokio::test]
async fn auto_mode_uses_the_daemon_for_add_check_gc_and_del() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    // No periodic repair during the test: CHECK must see a flushed ruleset.
    let args = [
        "--subnet",
        "10.84.0.0/24",
        "--bridge",
        "weftdm0",
        "--reconcile-interval-secs",
        "3600",
    ];
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let plugin = world::workspace_bin("weft");
    let own_state = dir.0.join("plugin-state");
    let config = json!({
        "cniVersion": "1.1.0", "name": "daemonnet", "type": "weft", "mode": "auto",
        "bridge": "weftdm0", "socket": netd.socket, "stateDir": own_state,
    });
    let mut with_port = config.clone();
    with_port["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18095, "containerPort": 8080, "protocol": "tcp"}]});
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    let r1 = exec_in(&a, &plugin, &call("ADD", Some(&c1), &with_port))
        .unwrap()
        .result()
        .unwrap();
    let r2 = exec_in(&a, &plugin, &call("ADD", Some(&c2), &config))
        .unwrap()
        .result()
        .unwrap();
    let (a1, a2) = (address(&r1), address(&r2));
    let subnet: ipnetwork::IpNetwork = "10.84.0.0/24".parse().unwrap();
    assert!(
        subnet.contains(a1) && subnet.contains(a2) && a1 != a2,
        "{a1} {a2}"
    );
    assert_eq!(daemon_endpoints(&netd).len(), 2, "the daemon holds both");
    assert!(
        cni::netd_state(&own_state).unwrap().0.is_empty(),
        "auto mode used the library instead of the daemon"
    );

    tcp_exchange(&c1.netns, SocketAddr::new(a1, 0), &c2.netns).unwrap();
    tcp_via(
        &c1.netns,
        SocketAddr::new(a1, 8080),
        &b.netns,
        SocketAddr::new(a.ip_addr(), 18095),
    )
    .unwrap();

    let mut check = config.clone();
    check["prevResult"] = r1.clone();
    exec_in(&a, &plugin, &call("CHECK", Some(&c1), &check))
        .unwrap()
        .ok()
        .unwrap();
    // CHECK through the daemon also looks at the firewall: flushed, it fails
    // naming it; reconciled, it passes again.
    world::run_in(
        &a.netns,
        "nft",
        &["flush", "ruleset"],
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let reply = exec_in(&a, &plugin, &call("CHECK", Some(&c1), &check)).unwrap();
    let err = reply.error().unwrap();
    assert!(
        err["msg"].as_str().unwrap_or_default().contains("firewall")
            || err["details"]
                .as_str()
                .unwrap_or_default()
                .contains("firewall"),
        "{err}"
    );
    netd.json(&["reconcile"]).unwrap();
    exec_in(&a, &plugin, &call("CHECK", Some(&c1), &check))
        .unwrap()
        .ok()
        .unwrap();

    // ipRanges through the daemon: netd reserves the range's first free address.
    let c3 = a.container("c3").unwrap();
    let mut ranged = config.clone();
    ranged["capabilities"] = json!({"ipRanges": true});
    ranged["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.84.0.0/24", "rangeStart": "10.84.0.200", "rangeEnd": "10.84.0.209"}]]});
    let r3 = exec_in(&a, &plugin, &call("ADD", Some(&c3), &ranged))
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(address(&r3).to_string(), "10.84.0.200");
    let mut del3 = ranged.clone();
    del3["prevResult"] = r3;
    exec_in(&a, &plugin, &call("DEL", Some(&c3), &del3))
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(daemon_endpoints(&netd).len(), 2, "c3 is gone again");

    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-c1", "ifname": "eth0"}]);
    exec_in(&a, &plugin, &call("GC", None, &gc))
        .unwrap()
        .ok()
        .unwrap();
    let left = daemon_endpoints(&netd);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("ctr-c1.eth0"), "{left:?}");
    assert!(
        world::ip_json(&c2.netns, &["link", "show", "eth0"]).is_err(),
        "GC left c2's eth0"
    );

    let mut del = config.clone();
    del["prevResult"] = r1;
    for _ in 0..2 {
        exec_in(&a, &plugin, &call("DEL", Some(&c1), &del))
            .unwrap()
            .ok()
            .unwrap();
    }
    assert!(daemon_endpoints(&netd).is_empty());
}

#[tokio::test]
async fn daemon_mode_without_a_daemon_and_with_another_bridge() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let plugin = world::workspace_bin("weft");
    let c1 = a.container("c1").unwrap();
    let config = json!({
        "cniVersion": "1.1.0", "name": "daemonnet", "type": "weft", "mode": "daemon",
        "socket": dir.0.join("nobody.sock"),
    });
    let expect = |reply: Reply, code: u64, word: &str| {
        let msg = reply.error_code(code).unwrap();
        assert!(msg.contains(word), "{msg}");
    };
    expect(
        exec_in(&a, &plugin, &call("ADD", Some(&c1), &config)).unwrap(),
        11,
        "nobody.sock",
    );
    expect(
        exec_in(&a, &plugin, &call("STATUS", None, &config)).unwrap(),
        50,
        "nobody.sock",
    );
    let args = ["--subnet", "10.85.0.0/24", "--bridge", "weftdm1"];
    let netd = Netd::start(&world, &a, &dir.0, &args).unwrap();
    let mut other = config.clone();
    other["socket"] = json!(netd.socket);
    other["bridge"] = json!("weftzz9");
    expect(
        exec_in(&a, &plugin, &call("ADD", Some(&c1), &other)).unwrap(),
        7,
        "weftdm1",
    );
    other["bridge"] = json!("weftdm1");
    exec_in(&a, &plugin, &call("STATUS", None, &other))
        .unwrap()
        .ok()
        .unwrap();
    assert!(daemon_endpoints(&netd).is_empty());
}
