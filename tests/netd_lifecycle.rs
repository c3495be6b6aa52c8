//! An attach netd has taken is netd's to finish: clients that hang up
//! half-way leave no container stuck `attaching`, a detach racing an attach
//! succeeds, a standalone attach whose process is killed half-way is rolled
//! back by the daemon's periodic check, reconcile publishes no port of a
//! container that is not attached; the host's namespace and ids the kernel
//! cannot hold are refused before anything is reserved.
//!
//! Needs the netd and weft binaries: `cargo build -p netd -p weft-cni`.

mod lifecycle_support;
mod netd_support;

use std::process::Command;
use std::time::Duration;

use lifecycle_support::{
    attaching, call, host_link, request, ruleset, send_and_hang_up, settled, state, Seeded,
};
use netd_support::{default_args, eventually, Netd, TestDir};
use serde_json::{json, Value};
use world::{require_root, World};

const CLIENTS: usize = 20;

#[tokio::test]
async fn clients_that_hang_up_mid_attach_leave_nothing_stuck() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.67.0.0/24")).unwrap();
    let containers: Vec<_> = (0..CLIENTS)
        .map(|i| host.container(&format!("h{i}")).unwrap())
        .collect();
    let mut rng = Seeded::new(0x5eed_0016);
    let delays: Vec<u64> = (0..CLIENTS).map(|_| rng.below(21)).collect();
    std::thread::scope(|s| {
        for (i, c) in containers.iter().enumerate() {
            let socket = netd.socket.clone();
            let body = json!({
                "netns": format!("/run/netns/{}", c.netns_name),
                "name": format!("h{i}"),
                "ports": [format!("{}:80", 47000 + i)],
            })
            .to_string();
            let delay = Duration::from_millis(delays[i]);
            s.spawn(move || {
                send_and_hang_up(&socket, &request("POST", "/v1/containers", &body), delay).unwrap()
            });
        }
    });
    // Every attach ends, attached or rolled back; none waits for a restart.
    let quiet = settled(&netd.socket, &netd.state_dir, Duration::from_secs(30));
    assert!(
        quiet,
        "still attaching 30 s after their clients hung up: {:?}\n{}",
        attaching(&netd.state_dir),
        netd.log_text()
    );
    let mut attached = 0;
    for (i, c) in containers.iter().enumerate() {
        let name = format!("h{i}");
        let known = state(&netd.state_dir).endpoints.contains_key(&name);
        if known {
            attached += 1;
            let phase = state(&netd.state_dir).endpoints.get(&name).map(|e| e.phase);
            assert_eq!(
                host_link(&host.netns, &name),
                (true, true),
                "{name} ({phase:?}): {}",
                world::ip_json(&host.netns, &["link", "show"]).unwrap()
            );
            netd.json(&["detach", &name]).unwrap();
        }
        // Detached (the reaper finishes in the background), or never
        // attached: nothing of it is left.
        let left = || {
            let s = state(&netd.state_dir);
            s.endpoints.contains_key(&name)
                || s.ipam.owners().contains(&name)
                || host_link(&host.netns, &name).0
        };
        assert!(
            eventually(Duration::from_secs(10), || !left()),
            "{name} is left: {:?}\n{}",
            state(&netd.state_dir).endpoints.get(&name),
            netd.log_text()
        );
        let inside = world::ip_json(&c.netns, &["link", "show"]).unwrap();
        assert!(
            !inside.to_string().contains("\"eth0\""),
            "{name} keeps an eth0: {inside}"
        );
    }
    let ruleset = ruleset(&host.netns);
    for i in 0..CLIENTS {
        assert!(
            !ruleset.contains(&format!("{}", 47000 + i)),
            "port {} still published:\n{ruleset}",
            47000 + i
        );
    }
    eprintln!("{attached} of {CLIENTS} ended attached; delays {delays:?} ms");
}

#[tokio::test]
async fn a_detach_racing_an_attach_succeeds() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    // Each attach waits 2 s once its address is reserved: the detach below
    // arrives while the container is `attaching`.
    let netd = Netd::start_with_env(
        &world,
        &host,
        &dir.0,
        &default_args("10.67.1.0/24"),
        &[(netd::endpoints::PAUSE_ENV, "reserved:2")],
    )
    .unwrap();
    let c1 = host.container("c1").unwrap();
    std::thread::scope(|s| {
        let attach = s.spawn(|| netd.attach(&c1.netns_name, "c1", &["-p", "47100:80"]));
        assert!(
            eventually(Duration::from_secs(10), || attaching(&netd.state_dir)
                == ["c1"]),
            "c1 never showed up as attaching"
        );
        let detached = netd.json(&["detach", "c1"]);
        assert!(detached.is_ok(), "detach refused: {detached:?}");
        assert_eq!(detached.unwrap()["found"], true);
        attach.join().unwrap().expect("the attach itself succeeded");
    });
    // The reaper deletes the links and forgets the container in the background.
    let gone = eventually(Duration::from_secs(10), || {
        let s = state(&netd.state_dir);
        s.endpoints.is_empty() && s.ipam.owners().is_empty() && !host_link(&host.netns, "c1").0
    });
    assert!(gone, "{:?}", state(&netd.state_dir));
}

#[tokio::test]
async fn a_standalone_attach_killed_midway_is_rolled_back_by_the_daemon() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut args = default_args("10.67.2.0/24");
    args.extend(["--bridge".into(), "weftlc0".into()]);
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let c1 = host.container("c1").unwrap();
    // The plugin in standalone mode, on the daemon's own state and bridge.
    let config = json!({
        "cniVersion": "1.0.0", "name": "lifecycle", "type": "weft", "mode": "standalone",
        "bridge": "weftlc0", "subnet": "10.67.2.0/24",
        "stateDir": netd.state_dir,
    });
    let config_file = dir.0.join("add.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let mut add = Command::new(world::workspace_bin("weft"));
    add.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "ctr-c1")
        .env("CNI_NETNS", format!("/run/netns/{}", c1.netns_name))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(netd::endpoints::PAUSE_ENV, "reserved:60")
        .stdin(std::fs::File::open(&config_file).unwrap())
        .stdout(std::fs::File::create(dir.0.join("add.out")).unwrap())
        .stderr(std::fs::File::create(dir.0.join("add.err")).unwrap());
    let plugin = host.spawn(add).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || attaching(&netd.state_dir).len()
            == 1),
        "the plugin never reserved: {:?}\n{}{}",
        state(&netd.state_dir),
        std::fs::read_to_string(dir.0.join("add.out")).unwrap_or_default(),
        std::fs::read_to_string(dir.0.join("add.err")).unwrap_or_default()
    );
    // SAFETY: kill(2) with the PID of a child this test started (the world
    // reaps it only when it drops).
    unsafe {
        libc::kill(plugin as i32, libc::SIGKILL);
    }
    // The daemon checks every second; a few checks are allowed for.
    let rolled_back = eventually(Duration::from_secs(20), || {
        let s = state(&netd.state_dir);
        s.endpoints.is_empty() && s.ipam.owners().is_empty()
    });
    assert!(
        rolled_back,
        "the killed plugin's attach is still recorded: {:?}\n{}",
        state(&netd.state_dir),
        netd.log_text()
    );
    let links = world::ip_json(&host.netns, &["link", "show"])
        .unwrap()
        .to_string();
    assert!(!links.contains("\"wv"), "a host link is left: {links}");
}

#[tokio::test]
async fn the_hosts_namespace_and_ids_the_kernel_cannot_hold_are_refused() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let netd = Netd::start(&world, &host, &dir.0, &default_args("10.67.3.0/24")).unwrap();
    let c1 = host.container("c1").unwrap();
    let before = netd.state_text();
    let routes_before = world::ip_json(&host.netns, &["route", "show"]).unwrap();
    let links_before = world::ip_json(&host.netns, &["link", "show"]).unwrap();
    let refused = |netns: String, id: &str, words: &[&str]| {
        let body = json!({"netns": netns, "id": id}).to_string();
        let (status, answer) = call(&netd.socket, "POST", "/v1/containers", &body).unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(status, 400, "{netns} {id:?}: {answer}");
        assert_eq!(answer["kind"], "invalid_input", "{answer}");
        let message = answer["error"].as_str().unwrap();
        for word in words {
            assert!(message.contains(word), "{word:?} not in {message:?}");
        }
    };
    let pid = netd.pid.to_string();
    refused(
        format!("/proc/{pid}/ns/net"),
        "x1",
        &["host namespace netd manages"],
    );
    refused(pid.clone(), "x2", &["host namespace netd manages"]);
    refused(format!("/proc/{pid}/ns/mnt"), "x3", &["mount namespace"]);
    refused(format!("/proc/{pid}/ns/user"), "x4", &["user namespace"]);
    refused(
        format!("/proc/{pid}/status"),
        "x5",
        &["not a namespace handle"],
    );
    // PID 1's handle is readable where the test may inspect PID 1; refused
    // either way, as the initial namespace or as one that cannot be looked at.
    let initial = if plumb::Netns::kind_check("/proc/1/ns/net").is_ok() {
        "initial network namespace"
    } else {
        "/proc/1/ns/net"
    };
    refused("/proc/1/ns/net".into(), "x6", &[initial]);
    let container = format!("/run/netns/{}", c1.netns_name);
    refused(container.clone(), ".", &["'.' and '..'"]);
    refused(container.clone(), "..", &["'.' and '..'"]);
    refused(container.clone(), "a\u{0}b", &["not valid"]);
    refused(container.clone(), "a/b", &["not valid"]);
    refused(container.clone(), "a\nb", &["not valid"]);
    refused(container.clone(), &"i".repeat(250), &["250 bytes long"]);
    assert_eq!(netd.state_text(), before, "a refusal changed the state");
    assert_eq!(
        world::ip_json(&host.netns, &["route", "show"]).unwrap(),
        routes_before,
        "a refusal changed the host's routes"
    );
    assert_eq!(
        world::ip_json(&host.netns, &["link", "show"]).unwrap(),
        links_before,
        "a refusal changed the host's links"
    );
    // The longest id the kernel's alias holds attaches, and detaches.
    let longest = "i".repeat(netd::endpoints::MAX_ID_LEN);
    let body = json!({"netns": container, "id": longest, "name": "long"}).to_string();
    let (status, answer) = call(&netd.socket, "POST", "/v1/containers", &body).unwrap();
    assert_eq!(status, 200, "{answer}");
    let alias = world::ip_json(
        &host.netns,
        &[
            "link",
            "show",
            "dev",
            &netd::endpoints::host_ifname(&longest),
        ],
    )
    .unwrap()[0]["ifalias"]
        .clone();
    assert_eq!(alias, format!("weft:{longest}"));
    netd.json(&["detach", "long"]).unwrap();
}

/// The kernel's limit itself: an alias one byte longer than `weft:` plus
/// the longest id is refused by the kernel (so the limit is not too tight).
#[tokio::test]
async fn the_id_limit_is_the_kernels_alias_limit() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let fits = format!("weft:{}", "i".repeat(netd::endpoints::MAX_ID_LEN));
    let too_long = format!("{fits}i");
    let set = |alias: &str| {
        world::run_in(
            &host.netns,
            "ip",
            &["link", "set", "dev", "lo", "alias", alias],
            Duration::from_secs(10),
        )
        .unwrap()
        .success
    };
    let nl = plumb::Netlink::open(&host.netns).await.unwrap();
    let change = |alias: &str| plumb::LinkChange {
        alias: Some(alias.to_string()),
        ..Default::default()
    };
    assert!(nl.set_link("lo", &change(&fits)).await.is_ok());
    assert!(nl.set_link("lo", &change(&too_long)).await.is_err());
    // iproute2 agrees.
    assert!(set(&fits));
}

#[tokio::test]
async fn a_stopping_netd_finishes_the_attach_it_took() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut netd = Netd::start_with_env(
        &world,
        &host,
        &dir.0,
        &default_args("10.67.4.0/24"),
        &[(netd::endpoints::PAUSE_ENV, "reserved:1")],
    )
    .unwrap();
    let c1 = host.container("c1").unwrap();
    std::thread::scope(|s| {
        let attach = s.spawn(|| netd.attach(&c1.netns_name, "c1", &[]));
        assert!(
            eventually(Duration::from_secs(10), || attaching(&netd.state_dir)
                == ["c1"]),
            "c1 never showed up as attaching"
        );
        netd.terminate().unwrap();
        attach
            .join()
            .unwrap()
            .expect("the attach taken before SIGTERM succeeded");
    });
    let ep = state(&netd.state_dir).endpoints.get("c1").cloned();
    assert_eq!(ep.map(|e| e.phase), Some(netd::Phase::Attached));
    netd.restart().unwrap();
    assert_eq!(host_link(&host.netns, "c1"), (true, true));
}
