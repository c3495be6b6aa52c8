//! Damaged state files: netd refuses to run on them (exit status 65, a
//! message naming the file and `netd recover`), leaves every live
//! container's link alone and brings back none it detached; `netd recover`
//! adopts the live containers from the kernel, and they keep working.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

mod netd_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netd_support::{addresses, default_args, links_with_prefix, result_ip, Netd, TestDir};
use serde_json::Value;
use world::{ping, require_root, Host, World};

const SUBNET: &str = "10.66.7.0/24";
const GATEWAY: &str = "10.66.7.1";

/// Runs `netd run` in `host` on `state_dir` the way the unit would, and
/// returns its exit status and output; kills it (by PID) if it is still
/// running after 20 s, which counts as having started.
fn run_netd_once(host: &Host, dir: &Path, subnet: &str) -> (Option<i32>, String) {
    let log = dir.join("once.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.netns_name])
        .arg(world::workspace_bin("netd"))
        .arg("run")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("run/once.sock"))
        .args(default_args(subnet))
        .env_remove("WEFT_CONFIG")
        .env("RUST_LOG", "netd=debug,info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// `netd recover ARGS --json` in the host, as an operator would run it.
fn recover(netd: &Netd, extra: &[&str]) -> Value {
    recover_in(netd, SUBNET, extra)
}

fn recover_in(netd: &Netd, subnet: &str, extra: &[&str]) -> Value {
    let state_dir = netd.state_dir.to_str().unwrap();
    let mut args = vec!["recover", "--state-dir", state_dir, "--subnet", subnet];
    args.extend_from_slice(extra);
    netd.json(&args).unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The probe's scenario: five containers attached and detached, six
/// attached, netd stopped, the journal cut to half its size.
#[tokio::test]
async fn a_journal_cut_in_half_is_refused_and_recover_adopts_the_live_containers() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut netd = Netd::start(&world, &host, &dir.0, &default_args(SUBNET)).unwrap();
    for i in 0..5 {
        let c = host.container(&format!("d{i}")).unwrap();
        netd.attach(&c.netns_name, &c.name, &[]).unwrap();
        netd.json(&["detach", &c.name, "--wait"]).unwrap();
    }
    let mut live = BTreeMap::new();
    for i in 0..6 {
        let c = host.container(&format!("t{i}")).unwrap();
        let r = netd.attach(&c.netns_name, &c.name, &[]).unwrap();
        let id = r["id"].as_str().unwrap().to_string();
        live.insert(id, (result_ip(&r), c));
    }
    let links_before = links_with_prefix(&host.netns, "wv");
    assert_eq!(links_before.len(), 6);
    netd.terminate().unwrap();
    // A link with netd's alias whose other end has no address: nothing to
    // adopt it from.
    let ghost = host.container("ghost").unwrap();
    for args in [
        vec![
            "link",
            "add",
            "wvghost",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ghost.netns_name,
        ],
        vec![
            "link",
            "set",
            "wvghost",
            "master",
            "weft0",
            "alias",
            "weft:ghost",
            "up",
        ],
    ] {
        let out = world::run_in(&host.netns, "ip", &args, Duration::from_secs(10)).unwrap();
        assert!(out.success, "ip {args:?}: {}", out.stderr);
    }
    let links_before = links_with_prefix(&host.netns, "wv");

    let journal = netd.state_dir.join("state.log");
    let len = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    // netd refuses, naming the file and the way out, with the status the
    // unit does not restart on; it touched no container.
    let (status, log) = run_netd_once(&host, &dir.0, SUBNET);
    assert_eq!(
        status,
        Some(65),
        "netd did not refuse the cut journal:\n{log}"
    );
    assert!(log.contains("state.log is damaged"), "{log}");
    assert!(log.contains("netd recover"), "{log}");
    assert!(!log.contains("move it aside"), "{log}");
    assert_eq!(links_with_prefix(&host.netns, "wv"), links_before);
    for (ip, c) in live.values() {
        assert_eq!(
            addresses(&c.netns, "eth0"),
            [format!("{ip}/24")],
            "{}",
            c.name
        );
    }

    // A dry run writes nothing; the real one adopts the six, from the kernel.
    let dry = recover(&netd, &["--dry-run"]);
    assert_eq!(
        ids(&dry["adopted"]),
        live.keys().cloned().collect::<Vec<_>>(),
        "{dry}"
    );
    assert!(dry["written"].is_null(), "{dry}");
    let (status, _) = run_netd_once(&host, &dir.0, SUBNET);
    assert_eq!(status, Some(65), "a dry run repaired the state");
    let report = recover(&netd, &[]);
    assert_eq!(
        ids(&report["adopted"]),
        live.keys().cloned().collect::<Vec<_>>(),
        "{report}"
    );
    let unmatched = report["unmatched_links"].as_array().unwrap();
    assert_eq!(unmatched.len(), 1, "{report}");
    assert_eq!(unmatched[0]["host_ifname"], "wvghost", "{report}");
    assert!(
        unmatched[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no address"),
        "{report}"
    );
    assert!(
        !report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    for dropped in ids(&report["dropped"]) {
        assert!(
            dropped.starts_with('d'),
            "dropped a live container: {report}"
        );
    }
    assert!(!report["written"]["moved_aside"]
        .as_array()
        .unwrap()
        .is_empty());

    netd.restart().unwrap();
    let endpoints = netd.endpoints().unwrap();
    let listed: BTreeMap<String, IpAddr> = endpoints
        .iter()
        .map(|e| {
            let cidr = e["ips"][0].as_str().unwrap();
            (
                e["id"].as_str().unwrap().to_string(),
                cidr.split('/').next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<String, IpAddr> =
        live.iter().map(|(id, (ip, _))| (id.clone(), *ip)).collect();
    assert_eq!(
        listed, expected,
        "the detached came back or the live were lost"
    );
    let reconciled = netd.json(&["reconcile"]).unwrap();
    assert!(
        reconciled["errors"].as_array().unwrap().is_empty(),
        "{reconciled}"
    );
    // The link recovery could not adopt is left alone too (it may carry a
    // live container): listed in left-alone.json, kept by reconciliation.
    assert_eq!(
        links_with_prefix(&host.netns, "wv"),
        links_before,
        "{reconciled}"
    );
    for (ip, c) in live.values() {
        assert_eq!(
            addresses(&c.netns, "eth0"),
            [format!("{ip}/24")],
            "{}",
            c.name
        );
        assert!(
            ping(&c.netns, GATEWAY.parse().unwrap()).unwrap(),
            "{}",
            c.name
        );
    }
    // The adopted addresses are reserved: a new container gets another one.
    let c = host.container("late").unwrap();
    let late = result_ip(&netd.attach(&c.netns_name, "late", &[]).unwrap());
    assert!(
        live.values().all(|(ip, _)| *ip != late),
        "{late} handed out twice"
    );
    // A detach of an adopted container works as any other.
    let first = live.keys().next().unwrap().clone();
    netd.json(&["detach", &first, "--wait"]).unwrap();
    // Six live (five adopted, the late one) and the one left alone.
    assert_eq!(links_with_prefix(&host.netns, "wv").len(), 7);
    // A second recovery on whole files writes nothing.
    netd.terminate().unwrap();
    let again = recover(&netd, &[]);
    assert!(again["problems"].as_array().unwrap().is_empty(), "{again}");
    assert!(again["written"].is_null(), "{again}");
    // Once the operator forgets the list, the next start removes the link as stale.
    assert!(links_with_prefix(&host.netns, "wv").contains(&"wvghost".to_string()));
    let state_dir = netd.state_dir.to_str().unwrap().to_string();
    let forgot = netd
        .cli(&["recover", "--state-dir", &state_dir, "--forget-left-alone"])
        .unwrap();
    assert!(
        forgot.success && forgot.stdout.contains("wvghost"),
        "{}{}",
        forgot.stdout,
        forgot.stderr
    );
    netd.restart().unwrap();
    assert!(
        !links_with_prefix(&host.netns, "wv").contains(&"wvghost".to_string()),
        "{}",
        netd.log_text()
    );
}

/// A damaged snapshot: refused the same way, and recovered from the kernel.
#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_recovered() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let subnet = "10.66.8.0/24";
    let mut netd = Netd::start(&world, &host, &dir.0, &default_args(subnet)).unwrap();
    let c = host.container("s0").unwrap();
    let ip = result_ip(
        &netd
            .attach(&c.netns_name, &c.name, &["-p", "8080:80"])
            .unwrap(),
    );
    // A second container whose link goes away while netd is down.
    let gone = host.container("s1").unwrap();
    let r = netd.attach(&gone.netns_name, &gone.name, &[]).unwrap();
    let gone_link = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    netd.terminate().unwrap();
    let out = world::run_in(
        &host.netns,
        "ip",
        &["link", "del", &gone_link],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    let snapshot = netd.state_dir.join("state.json");
    std::fs::write(&snapshot, b"weft-state 2 9 00000000\n{\"version\":1}").unwrap();
    let (status, log) = run_netd_once(&host, &dir.0, subnet);
    assert_eq!(status, Some(65), "{log}");
    assert!(log.contains("state.json is damaged"), "{log}");
    assert!(log.contains("fails its checksum"), "{log}");
    let report = recover_in(&netd, subnet, &[]);
    assert_eq!(ids(&report["adopted"]), ["s0"], "{report}");
    // The journal was whole: the name and the published port come from it.
    assert_eq!(report["adopted"][0]["matched_state"], true, "{report}");
    assert_eq!(report["adopted"][0]["ports"], 1, "{report}");
    assert_eq!(ids(&report["dropped"]), ["s1"], "{report}");
    netd.restart().unwrap();
    let endpoints = netd.endpoints().unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(endpoints[0]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(addresses(&c.netns, "eth0"), [format!("{ip}/24")]);
    assert!(ping(&c.netns, "10.66.8.1".parse().unwrap()).unwrap());
}
