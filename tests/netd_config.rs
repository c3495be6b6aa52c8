//! netd's configuration sources and placement: the config file, `WEFT_*`
//! variables and flags layer in that order; `--netns` manages a namespace
//! other than netd's own; a client without a daemon says what to do.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

mod netd_support;

use std::time::Duration;

use netd_support::{addresses, links_with_prefix, result_ip, Netd, TestDir};
use world::{ip_json, ping, require_root, run_in, World};

#[tokio::test]
async fn file_then_environment_then_flags() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let config = dir.0.join("netd.toml");
    std::fs::write(
        &config,
        "# weft netd\nbridge = \"br-file\"\nsubnet = \"10.66.12.0/24\"\nmtu = 1400\nreconcile_interval_secs = 1\n",
    )
    .unwrap();
    let args = vec![
        "--config".to_string(),
        config.to_str().unwrap().into(),
        "--subnet".into(),
        "10.66.13.0/24".into(),
    ];
    let env = [("WEFT_BRIDGE", "br-env"), ("WEFT_SUBNET", "10.66.14.0/24")];
    let netd = Netd::start_with_env(&world, &host, &dir.0, &args, &env).unwrap();
    let status = netd.json(&["status"]).unwrap();
    assert_eq!(status["bridge"], "br-env", "the environment beats the file");
    assert_eq!(
        status["subnets"][0], "10.66.13.0/24",
        "a flag beats the environment"
    );
    assert!(links_with_prefix(&host.netns, "br-file").is_empty());
    let bridge = ip_json(&host.netns, &["link", "show", "br-env"]).unwrap();
    assert_eq!(bridge[0]["mtu"], 1400, "the file's MTU applies");
    assert_eq!(addresses(&host.netns, "br-env"), ["10.66.13.1/24"]);
    let c1 = host.container("c1").unwrap();
    let r = netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.66.13.2/24");
    let eth0 = ip_json(&c1.netns, &["link", "show", "eth0"]).unwrap();
    assert_eq!(eth0[0]["mtu"], 1400);
    assert!(ping(&c1.netns, "10.66.13.1".parse().unwrap()).unwrap());
}

#[tokio::test]
async fn netns_flag_manages_another_namespace() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let (_, control) = world.namespace("ctl").unwrap();
    let dir = TestDir::new(&world).unwrap();
    let args = vec![
        "--netns".to_string(),
        host.netns_name.clone(),
        "--subnet".into(),
        "10.66.15.0/24".into(),
    ];
    let netd = Netd::start_in(&world, &control, &dir.0, &args, &[]).unwrap();
    assert!(
        links_with_prefix(&control, "weft0").is_empty(),
        "netd set up its own namespace"
    );
    assert_eq!(addresses(&host.netns, "weft0"), ["10.66.15.1/24"]);
    let c1 = host.container("c1").unwrap();
    let r = netd.attach(&c1.netns_name, "c1", &[]).unwrap();
    assert!(links_with_prefix(&control, "wv").is_empty());
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 1);
    assert!(ping(&host.netns, result_ip(&r)).unwrap());
    netd.json(&["detach", "c1", "--wait"]).unwrap();
    assert!(links_with_prefix(&host.netns, "wv").is_empty());
}

#[tokio::test]
async fn a_client_without_a_daemon_says_what_to_do() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let socket = dir.0.join("none.sock");
    let out = run_in(
        &host.netns,
        world::workspace_bin("netd").to_str().unwrap(),
        &["status", "--socket", socket.to_str().unwrap()],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(!out.success);
    assert!(
        out.stderr
            .contains(&format!("cannot reach netd at {}", socket.display()))
            && out.stderr.contains("is `netd run` running?"),
        "{}",
        out.stderr
    );
}
