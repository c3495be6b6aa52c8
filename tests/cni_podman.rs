//! podman 4.3 (Debian) with its CNI backend runs containers on a weft network:
//! runc, cgroupfs, its own root/runroot/tmpdir, `--network-config-dir` holding
//! a weft conflist, CONTAINERS_CONF a file of the test's; podman itself runs
//! inside a simulated host's namespace, so the bridge and rules land there.

#[allow(dead_code)] // the conformance runner's checks are not all used here
mod cni;
mod runtime_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use world::{require_root, World};

use cni::Scratch;
use runtime_support::{tcp_echo, Podman, IMAGE};

const LONG: Duration = Duration::from_secs(120);

fn weft_conflist(name: &str, bridge: &str, subnet: &str, state: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "weft",
            "mode": "standalone",
            "bridge": bridge,
            "subnet": subnet,
            "stateDir": state,
            "capabilities": {"portMappings": true, "ips": true, "mac": true}
        }]
    })
}

fn state_endpoints(state: &std::path::Path) -> Vec<String> {
    cni::netd_state(state).unwrap().0
}

#[tokio::test]
async fn podman_containers_on_a_weft_network_reach_each_other_and_a_published_port() {
    require_root!();
    assert!(
        std::path::Path::new("/usr/bin/podman").exists(),
        "podman missing: scripts/install-deps --test"
    );
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let scratch = Scratch::new(&format!("{}-podman", world.prefix())).unwrap();
    let state = scratch.0.join("weft");
    let podman = Podman::new(&scratch.0, &a.netns).unwrap();
    podman
        .network(
            "weftnet",
            &weft_conflist("weftnet", "weftpod0", "10.81.0.0/24", &state),
        )
        .unwrap();

    podman
        .run(
            &[
                "run",
                "-d",
                "--name",
                "srv",
                "--network",
                "weftnet",
                "-p",
                "18090:8080",
                IMAGE,
                "nc",
                "-ll",
                "-p",
                "8080",
                "-e",
                "/bin/cat",
            ],
            LONG,
        )
        .unwrap()
        .ok("podman run srv")
        .unwrap();
    let ip_text = podman
        .run(
            &[
                "inspect",
                "-f",
                "{{(index .NetworkSettings.Networks \"weftnet\").IPAddress}}",
                "srv",
            ],
            LONG,
        )
        .unwrap()
        .ok("podman inspect")
        .unwrap();
    let ip: IpAddr = ip_text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("inspect said {ip_text:?}"));
    let subnet: ipnetwork::IpNetwork = "10.81.0.0/24".parse().unwrap();
    assert!(subnet.contains(ip), "srv got {ip}, outside weft's subnet");
    let endpoints = state_endpoints(&state);
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let held = netd::Store::open(&state)
        .unwrap()
        .read()
        .unwrap()
        .ipam
        .held_by(&endpoints[0]);
    assert_eq!(held, [ip], "weft's reservation for srv");

    // A second container on the network talks to the first.
    let said = podman
        .run(
            &[
                "run",
                "--rm",
                "--network",
                "weftnet",
                IMAGE,
                "sh",
                "-c",
                &format!("echo hello-weft | nc -w 3 {ip} 8080; ip -4 addr show eth0"),
            ],
            LONG,
        )
        .unwrap()
        .ok("podman run client")
        .unwrap();
    assert!(said.contains("hello-weft"), "no echo from srv: {said:?}");
    assert!(
        said.contains("inet 10.81.0."),
        "the client had no weft address: {said:?}"
    );

    // The published port, from another simulated host.
    let back = tcp_echo(&b.netns, SocketAddr::new(a.ip_addr(), 18090), b"through -p").unwrap();
    assert_eq!(back, b"through -p");

    // --rm ran DEL for the client; rm -f runs it for srv: nothing is left.
    podman
        .run(&["rm", "-f", "-t", "0", "srv"], LONG)
        .unwrap()
        .ok("podman rm")
        .unwrap();
    let (endpoints, owners) = cni::netd_state(&state).unwrap();
    assert!(
        endpoints.is_empty() && owners.is_empty(),
        "left after podman rm: {endpoints:?} {owners:?}"
    );
    assert!(
        tcp_echo(&b.netns, SocketAddr::new(a.ip_addr(), 18090), b"x").is_err(),
        "the published port still answers after rm"
    );
}
