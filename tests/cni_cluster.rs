//! Cluster aware: with netd running the WireGuard overlay on two simulated
//! hosts (each its own /24 of the cluster /16, the other as a static peer),
//! `weft` in auto mode gives each container an address of its host's subnet,
//! and the containers reach each other across hosts with those addresses (no
//! masquerade between them: the server sees the client's real address).

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde_json::{json, Value};
use world::{require_root, tcp_via, NetdHost, World};

use cni::{exec_in, Call};

const CLUSTER: &str = "10.66.0.0/16";

/// A directory per test, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn add(netd: &NetdHost, c: &world::Container) -> (Value, IpAddr) {
    let config = json!({"cniVersion": "1.1.0", "name": "cluster", "type": "weft",
        "mode": "auto", "socket": netd.socket()});
    let call = Call {
        command: "ADD".into(),
        container_id: Some(format!("ctr-{}-{}", netd.host.name, c.name)),
        netns: Some(format!("/run/netns/{}", c.netns_name)),
        ifname: Some("eth0".into()),
        cni_args: None,
        cni_path: Some("/usr/lib/cni".into()),
        stdin: config.to_string().into_bytes(),
    };
    let plugin = world::workspace_bin("weft");
    let result = exec_in(&netd.host, &plugin, &call)
        .unwrap()
        .result()
        .unwrap();
    let ip: IpAddr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"));
    (result, ip)
}

#[tokio::test]
async fn containers_added_by_cni_on_two_hosts_reach_each_other_over_the_overlay() {
    require_root!();
    let world = World::new().await.unwrap();
    let dir = Dir(std::env::temp_dir().join(format!("weft-cni-cluster-{}", world.prefix())));
    let mut netds = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let host = world.host(name).await.unwrap();
        let subnet = format!("10.66.{}.0/24", i + 1);
        netds.push(NetdHost::prepare(&host, &dir.0.join(name), &subnet).unwrap());
    }
    netds[0].write_config(CLUSTER, &[&netds[1]], "").unwrap();
    netds[1].write_config(CLUSTER, &[&netds[0]], "").unwrap();
    for netd in &mut netds {
        netd.start().unwrap();
    }
    let ca = netds[0].host.container("c1").unwrap();
    let cb = netds[1].host.container("c1").unwrap();
    let (_, ip_a) = add(&netds[0], &ca);
    let (_, ip_b) = add(&netds[1], &cb);
    let subnet_a: ipnetwork::IpNetwork = "10.66.1.0/24".parse().unwrap();
    let subnet_b: ipnetwork::IpNetwork = "10.66.2.0/24".parse().unwrap();
    assert!(subnet_a.contains(ip_a), "host a's container got {ip_a}");
    assert!(subnet_b.contains(ip_b), "host b's container got {ip_b}");
    let seen = tcp_via(
        &cb.netns,
        SocketAddr::new(ip_b, 8080),
        &ca.netns,
        SocketAddr::new(ip_b, 8080),
    )
    .unwrap();
    assert_eq!(
        seen.ip(),
        ip_a,
        "host b's container saw {seen}, not a's real address"
    );
    let seen = tcp_via(
        &ca.netns,
        SocketAddr::new(ip_a, 8081),
        &cb.netns,
        SocketAddr::new(ip_a, 8081),
    )
    .unwrap();
    assert_eq!(seen.ip(), ip_b);
    drop(netds);
    drop(world);
}
