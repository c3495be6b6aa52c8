//! Two weft networks (two bridges, two subnets) on one host in standalone
//! mode: each keeps its NAT rules and published ports when the other adds
//! and removes containers.

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;

use std::net::SocketAddr;

use serde_json::{json, Value};
use world::{require_root, tcp_via, World};

use cni::{exec_in, Call, Scratch};

fn call(command: &str, c: &world::Container, config: &Value) -> Call {
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

fn address(result: &Value) -> std::net::IpAddr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

#[tokio::test]
async fn two_networks_on_one_host_keep_each_others_rules_and_ports() {
    require_root!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let scratch = Scratch::new(&format!("{}-two", world.prefix())).unwrap();
    let plugin = world::workspace_bin("weft");
    let net = |name: &str, bridge: &str, subnet: &str, port: u16| {
        json!({"cniVersion": "1.1.0", "name": name, "type": "weft", "mode": "standalone",
            "bridge": bridge, "subnet": subnet, "stateDir": scratch.0.join(name),
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 8080}]}})
    };
    let n1 = net("one", "weftone0", "10.61.0.0/24", 18301);
    let n2 = net("two", "wefttwo0", "10.62.0.0/24", 18302);
    let c1 = a.container("c1").unwrap();
    let c2 = a.container("c2").unwrap();
    let r1 = exec_in(&a, &plugin, &call("ADD", &c1, &n1))
        .unwrap()
        .result()
        .unwrap();
    let r2 = exec_in(&a, &plugin, &call("ADD", &c2, &n2))
        .unwrap()
        .result()
        .unwrap();
    for (c, r, port, conf) in [(&c1, &r1, 18301, &n1), (&c2, &r2, 18302, &n2)] {
        let ip = address(r);
        tcp_via(
            &c.netns,
            SocketAddr::new(ip, 8080),
            &b.netns,
            SocketAddr::new(a.ip_addr(), port),
        )
        .unwrap_or_else(|e| panic!("port {port}: {e:#}"));
        let mut check = conf.clone();
        check["prevResult"] = r.clone();
        exec_in(&a, &plugin, &call("CHECK", c, &check))
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("CHECK {port}: {e:#}"));
    }
    let mut del = n2.clone();
    del["prevResult"] = r2;
    exec_in(&a, &plugin, &call("DEL", &c2, &del))
        .unwrap()
        .ok()
        .unwrap();
    tcp_via(
        &c1.netns,
        SocketAddr::new(address(&r1), 8080),
        &b.netns,
        SocketAddr::new(a.ip_addr(), 18301),
    )
    .expect("network one's port after network two's DEL");
}
