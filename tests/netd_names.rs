//! Names end to end: netd (the daemon) in a world host serves the names of
//! the containers attached with `netd attach --name/--alias` on the
//! bridge's gateway, and `dig` from the containers asks it: a neighbour's
//! name and alias, bare and under weft.internal, AAAA, PTR, an unknown name
//! (NXDOMAIN), an outside name (forwarded to dnsmasq in its own namespace),
//! `--dns`'s resolv.conf with the search domain; a duplicate name refused
//! with nothing created; detach → NXDOMAIN at once; a restarted netd
//! serving the names from its state; `netd names` and the metrics.
//!
//! Needs the netd binary: `cargo build -p netd` (see tests/netd_support).

#[allow(dead_code)] // the conformance runner's checks are not used here
mod cni;
mod dig_support;
mod netd_support;
mod runtime_support;

use std::time::Duration;

use dig_support::{dig_with, Dig};
use netd_support::{default_args, result_ip, Netd, TestDir};
use plumb::{LinkOptions, Netlink, Netns};
use runtime_support::{Podman, IMAGE};
use world::{require_root, run_in, Host, World};

const GATEWAY: &str = "10.66.5.1";

/// `dig @GATEWAY ARGS` from `netns`.
fn dig(netns: &Netns, args: &[&str]) -> Dig {
    let server = format!("@{GATEWAY}");
    let mut full = vec![server.as_str()];
    full.extend_from_slice(args);
    dig_with(netns, "dig", &full, 3)
}

/// Namespace `up` behind veth vup (172.31.5.1 on the host, .2 there) with
/// dnsmasq answering outside.example; returns the resolv.conf naming it.
async fn upstream(world: &World, host: &Host, dir: &std::path::Path) -> std::path::PathBuf {
    let (_, up) = world.namespace("up").unwrap();
    let nl = Netlink::open(&host.netns).await.unwrap();
    let inside = LinkOptions {
        netns: Some(up.clone()),
        ..Default::default()
    };
    let on = LinkOptions {
        up: true,
        ..Default::default()
    };
    nl.add_veth("vup", &on, "eth0", &inside).await.unwrap();
    nl.add_address("vup", "172.31.5.1/24".parse().unwrap(), false)
        .await
        .unwrap();
    let unl = Netlink::open(&up).await.unwrap();
    unl.add_address("eth0", "172.31.5.2/24".parse().unwrap(), false)
        .await
        .unwrap();
    unl.set_up("eth0").await.unwrap();
    let mut dnsmasq = std::process::Command::new("dnsmasq");
    dnsmasq.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--bind-interfaces",
        "--listen-address=172.31.5.2",
        "--address=/outside.example/198.51.100.7",
    ]);
    world.spawn(&up, dnsmasq).unwrap();
    let resolv_conf = dir.join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 172.31.5.2\n").unwrap();
    resolv_conf
}

/// `ip` of every link in `netns` but loopback.
fn links(netns: &Netns) -> Vec<String> {
    let out = run_in(
        netns,
        "ip",
        &["-o", "link", "show"],
        Duration::from_secs(10),
    )
    .unwrap();
    out.stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_find_each_other_by_name_through_netd() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let resolv_conf = upstream(&world, &host, &dir.0).await;
    let mut args = default_args("10.66.5.0/24");
    args.extend([
        "--subnet6".to_string(),
        "fd66:5::/64".to_string(),
        "--dns-resolv-conf".to_string(),
        resolv_conf.display().to_string(),
        "--metrics-addr".to_string(),
        "127.0.0.1:9588".to_string(),
    ]);
    let mut netd = Netd::start(&world, &host, &dir.0, &args).unwrap();

    let web = host.container("web").unwrap();
    let db = host.container("db").unwrap();
    let client = host.container("client").unwrap();
    // --dns writes /etc/netns/NAME/resolv.conf: removed with the world.
    world.remove_on_teardown(format!("/etc/netns/{}", web.netns_name));
    let web_ip = result_ip(
        &netd
            .attach(&web.netns_name, "web", &["--alias", "www", "--dns"])
            .unwrap(),
    )
    .to_string();
    let db_ip = result_ip(&netd.attach(&db.netns_name, "db", &[]).unwrap()).to_string();
    // No --name, no alias: no DNS name.
    netd.json(&["attach", &client.netns_name, "--id", "client"])
        .unwrap();

    // A neighbour's name and alias, bare and under the search domain, any case.
    for name in ["web", "www", "web.weft.internal", "WWW.Weft.Internal."] {
        let d = dig(&db.netns, &[name]);
        assert_eq!(d.status, "NOERROR", "{name}: {d:?}");
        assert_eq!(d.answers, [web_ip.as_str()], "{name}: {d:?}");
    }
    let d = dig(&client.netns, &["db", "AAAA"]);
    assert_eq!(d.status, "NOERROR", "{d:?}");
    assert_eq!(d.answers.len(), 1, "{d:?}");
    assert!(d.answers[0].starts_with("fd66:5::"), "{d:?}");
    let d = dig(&client.netns, &["-x", &web_ip]);
    assert_eq!(d.answers, ["web.weft.internal."], "{d:?}");
    let d = dig(&client.netns, &["nobody.weft.internal"]);
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");
    assert!(d.answers.is_empty(), "{d:?}");
    // Outside names go to the resolvers of netd's namespace.
    let d = dig(&client.netns, &["outside.example"]);
    assert_eq!(d.status, "NOERROR", "{d:?}");
    assert_eq!(d.answers, ["198.51.100.7"], "{d:?}");
    // The resolv.conf --dns wrote: `ip netns exec` mounts it; the search
    // domain makes the bare name resolve.
    let text =
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", web.netns_name)).unwrap();
    assert!(text.contains(&format!("nameserver {GATEWAY}\n")), "{text}");
    assert!(text.contains("search weft.internal\n"), "{text}");
    let d = dig_with(
        &web.netns,
        "ip",
        &["netns", "exec", &web.netns_name, "dig", "+search", "db"],
        3,
    );
    assert_eq!(d.answers, [db_ip.as_str()], "{d:?}");

    // `netd names --json`: every name, its addresses, host and source.
    let names = netd.json(&["names"]).unwrap();
    let rows = names.as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {names}"))
    };
    assert_eq!(row("www")["alias"], true);
    assert_eq!(row("www")["ipv4"], web_ip.as_str());
    assert_eq!(row("web")["alias"], false);
    assert_eq!(row("db")["source"], "local");
    assert!(row("db")["ipv6"].as_str().unwrap().starts_with("fd66:5::"));
    assert!(row("db")["host"].as_str().is_some_and(|h| !h.is_empty()));

    // A name held by another container is refused before anything is made.
    let dup = host.container("dup").unwrap();
    let before = netd.state_text();
    let err = netd
        .fails(&["attach", &dup.netns_name, "--name", "dup", "--alias", "WEB"])
        .unwrap();
    assert!(
        err.contains("\"web\" is already held by container web"),
        "{err}"
    );
    assert_eq!(
        netd.state_text(),
        before,
        "a refused attach changed the state"
    );
    assert!(links(&dup.netns).is_empty(), "{:?}", links(&dup.netns));
    assert_eq!(dig(&client.netns, &["web"]).answers, [web_ip.as_str()]);

    // The metrics count what was asked.
    let metrics = run_in(
        &host.netns,
        "curl",
        &["-sf", "http://127.0.0.1:9588/metrics"],
        Duration::from_secs(10),
    )
    .unwrap();
    let answered = metrics
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("weft_netd_dns_queries_total{result=\"answered\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no answered counter in\n{}", metrics.stdout));
    // 4 names, AAAA, PTR, the search-domain look-up, the check after the refusal.
    assert_eq!(answered, 8, "{}", metrics.stdout);
    assert!(metrics
        .stdout
        .contains("weft_netd_dns_queries_total{result=\"nxdomain\"} 1\n"));
    assert!(metrics
        .stdout
        .contains("weft_netd_dns_queries_total{result=\"forwarded\"} 1\n"));

    // Detach: the names are gone with the answer to the detach. Under the
    // search domain netd is authoritative (NXDOMAIN); the bare name is no
    // container's any more, so it goes upstream, which knows nothing of it.
    netd.json(&["detach", "db"]).unwrap();
    let d = dig(&client.netns, &["db.weft.internal"]);
    assert_eq!(d.status, "NXDOMAIN", "{d:?}");
    let d = dig(&client.netns, &["db"]);
    assert!(d.answers.is_empty(), "{d:?}");

    // Restarted, netd answers from its state, nobody attached again.
    netd.terminate().unwrap();
    let d = dig(&client.netns, &["web"]);
    assert_ne!(d.status, "NOERROR", "netd is down: {d:?}");
    netd.restart().unwrap();
    for name in ["web", "www.weft.internal"] {
        let d = dig(&client.netns, &[name]);
        assert_eq!(d.answers, [web_ip.as_str()], "{name} after restart: {d:?}");
    }
    assert_eq!(dig(&client.netns, &["db.weft.internal"]).status, "NXDOMAIN");
    // The duplicate's name is free now that db left; another may take it.
    let again = host.container("db2").unwrap();
    let ip = result_ip(&netd.attach(&again.netns_name, "db", &[]).unwrap()).to_string();
    assert_eq!(dig(&client.netns, &["db"]).answers, [ip.as_str()]);
}

/// podman 4.3 with its CNI backend and a weft network in daemon mode: the
/// container's name reaches netd as CNI_ARGS K8S_POD_NAME, the result's
/// `dns` becomes the container's resolv.conf, and busybox's nslookup finds
/// the other container, as on a netavark network with aardvark-dns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_find_each_other_by_name() {
    require_root!();
    assert!(
        std::path::Path::new("/usr/bin/podman").exists(),
        "podman missing: scripts/install-deps --test"
    );
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let resolv_conf = dir.0.join("resolv.conf");
    // No upstream: only the containers' names matter here.
    std::fs::write(&resolv_conf, "").unwrap();
    let mut args = default_args("10.81.5.0/24");
    args.extend([
        "--bridge".to_string(),
        "weftpod5".to_string(),
        "--dns-resolv-conf".to_string(),
        resolv_conf.display().to_string(),
    ]);
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let scratch = cni::Scratch::new(&format!("{}-podman", world.prefix())).unwrap();
    let podman = Podman::new(&scratch.0, &host.netns).unwrap();
    podman
        .network(
            "weftnet",
            &serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "weftnet",
                "plugins": [{
                    "type": "weft",
                    "mode": "daemon",
                    "socket": netd.socket,
                    "bridge": "weftpod5",
                    "capabilities": {"portMappings": true, "aliases": true}
                }]
            }),
        )
        .unwrap();
    let long = Duration::from_secs(120);
    podman
        .run(
            &[
                "run",
                "-d",
                "--name",
                "web",
                "--network",
                "weftnet",
                IMAGE,
                "sleep",
                "300",
            ],
            long,
        )
        .unwrap()
        .ok("podman run web")
        .unwrap();
    // --network-alias arrives through the aliases capability, with the
    // short container ID podman adds as an alias, as Docker does.
    podman
        .run(
            &[
                "run",
                "-d",
                "--name",
                "api",
                "--network",
                "weftnet",
                "--network-alias",
                "www",
                IMAGE,
                "sleep",
                "300",
            ],
            long,
        )
        .unwrap()
        .ok("podman run api")
        .unwrap();
    let names = netd.json(&["names"]).unwrap();
    let ip_of = |name: &str| {
        names
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["ipv4"].as_str())
            .unwrap_or_else(|| panic!("{name} is not served: {names}"))
            .to_string()
    };
    let (web_ip, api_ip) = (ip_of("web"), ip_of("api"));
    assert_eq!(ip_of("www"), api_ip);
    let short_ids = names
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["alias"] == true && r["name"].as_str().is_some_and(|n| n.len() == 12))
        .count();
    assert_eq!(short_ids, 2, "{names}");
    let out = podman
        .run(
            &[
                "run",
                "--rm",
                "--name",
                "client",
                "--network",
                "weftnet",
                IMAGE,
                "sh",
                "-c",
                "cat /etc/resolv.conf; nslookup web; echo ==; nslookup www",
            ],
            long,
        )
        .unwrap()
        .ok("podman run client")
        .unwrap();
    assert!(out.contains("nameserver 10.81.5.1"), "{out}");
    assert!(out.contains("weft.internal"), "{out}");
    let (web, www) = out.split_once("==").unwrap_or_else(|| panic!("{out}"));
    let answer = |part: &str| part.split("Name:").nth(1).unwrap_or_default().to_string();
    assert!(answer(web).contains(&web_ip), "nslookup web gave\n{out}");
    assert!(answer(www).contains(&api_ip), "nslookup www gave\n{out}");
    // --rm detached the client: its name went with it.
    let names = netd.json(&["names"]).unwrap();
    assert!(
        !names
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "client"),
        "{names}"
    );
}

/// The standalone CNI plugin attaches on the bridge and state the daemon
/// manages: the daemon's periodic check (1 s here) picks the container's
/// names up from the state, and drops them after DEL. The plugin's result
/// carries no `dns`: standalone mode alone serves no names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_names_the_standalone_plugin_attached() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let resolv_conf = dir.0.join("resolv.conf");
    std::fs::write(&resolv_conf, "").unwrap();
    let mut args = default_args("10.66.5.0/24");
    args.extend([
        "--dns-resolv-conf".to_string(),
        resolv_conf.display().to_string(),
    ]);
    let netd = Netd::start(&world, &host, &dir.0, &args).unwrap();
    let client = host.container("client").unwrap();
    netd.json(&["attach", &client.netns_name, "--id", "client"])
        .unwrap();
    let solo = host.container("solo").unwrap();
    let config = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft", "mode": "standalone",
        "subnet": "10.66.5.0/24", "stateDir": netd.state_dir,
        "runtimeConfig": {"aliases": {"weftnet": ["solo-alias"]}},
    });
    let call = |command: &str| cni::Call {
        command: command.into(),
        container_id: Some("ctr-solo".into()),
        netns: Some(cni::netns_path(&solo)),
        ifname: Some("eth0".into()),
        cni_args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=solo;K8S_POD_NAME=solo".into()),
        cni_path: Some("/usr/lib/cni".into()),
        stdin: config.to_string().into_bytes(),
    };
    let plugin = world::workspace_bin("weft");
    let d = dig(&client.netns, &["solo.weft.internal"]);
    assert_eq!(d.status, "NXDOMAIN", "before the ADD: {d:?}");
    let result = cni::exec_in(&host, &plugin, &call("ADD"))
        .unwrap()
        .result()
        .unwrap();
    assert!(
        result.get("dns").is_none(),
        "standalone result with dns: {result}"
    );
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string();
    // Bounded: a few periods of the 1 s check.
    let served = (0..20).any(|_| {
        let d = dig(&client.netns, &["solo-alias.weft.internal"]);
        if d.answers == [ip.as_str()] {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(
        served,
        "the daemon never served the standalone container's names: {:?}\n{}",
        dig(&client.netns, &["solo-alias.weft.internal"]),
        netd.log_text()
    );
    assert_eq!(dig(&client.netns, &["solo"]).answers, [ip.as_str()]);
    cni::exec_in(&host, &plugin, &call("DEL"))
        .unwrap()
        .ok()
        .unwrap();
    let gone = (0..20).any(|_| {
        if dig(&client.netns, &["solo.weft.internal"]).status == "NXDOMAIN" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(gone, "the standalone container's names outlived its DEL");
}
