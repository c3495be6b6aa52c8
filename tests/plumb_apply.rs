//! `plumb apply`, run inside a simulated host: a topology file becomes
//! bridges, guests, addresses and routes that carry traffic; a second run
//! changes nothing; `--dry-run` changes nothing; `--prune` removes exactly what
//! the file no longer names and nothing plumb did not make; bad files are
//! refused with the problem named, before any change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plumb::{LinkOptions, Netlink, Netns};
use world::{ip_json, ping, require_root, tcp_exchange, CommandOutput, Host, World};

/// Writes `text` to a file of this test's own, named after the world.
fn topology_file(world: &World, tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-topologies", world.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cleanup_files(world: &World) -> TempDir {
    TempDir(std::env::temp_dir().join(format!("{}-topologies", world.prefix())))
}

fn apply(host: &Host, file: &Path, extra: &[&str]) -> CommandOutput {
    let mut args = vec!["apply", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    host.plumb(&args)
}

fn apply_ok(host: &Host, file: &Path, extra: &[&str]) -> String {
    let out = apply(host, file, extra);
    assert!(
        out.success,
        "plumb apply {extra:?} failed: {}\n{}",
        out.stderr, out.stdout
    );
    out.stdout
}

/// Drops what changes with time alone: bridge and port timers.
fn without_timers(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(k, _)| !k.ends_with("_timer"))
                .map(|(k, v)| (k, without_timers(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(without_timers).collect())
        }
        other => other,
    }
}

/// Everything `ip` shows of one namespace: links (with details), addresses,
/// routes of all tables.
fn dump(netns: &Netns) -> serde_json::Value {
    without_timers(serde_json::json!({
        "links": ip_json(netns, &["-d", "link", "show"]).unwrap(),
        "addresses": ip_json(netns, &["addr", "show"]).unwrap(),
        "routes4": ip_json(netns, &["-4", "route", "show", "table", "all"]).unwrap(),
        "routes6": ip_json(netns, &["-6", "route", "show", "table", "all"]).unwrap(),
    }))
}

/// Dumps of every namespace, taken once they stop changing by themselves
/// (IPv6 link-local addresses finish duplicate address detection, …).
fn settled_dumps(namespaces: &[&Netns]) -> Vec<serde_json::Value> {
    let take = || namespaces.iter().map(|n| dump(n)).collect::<Vec<_>>();
    let mut last = take();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = take();
        let tentative = now.iter().any(|d| d.to_string().contains("\"tentative\""));
        if now == last && !tentative {
            return now;
        }
        last = now;
    }
    panic!("the namespaces kept changing by themselves for 10 s");
}

fn link_names(netns: &Netns) -> Vec<String> {
    ip_json(netns, &["link", "show"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn global_addresses(netns: &Netns, ifname: &str) -> Vec<String> {
    let v = ip_json(netns, &["addr", "show", "dev", ifname]).unwrap();
    let mut out: Vec<String> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    out.sort();
    out
}

fn namespace_exists(name: &str) -> bool {
    Netns::named(name).is_ok()
}

/// The topology the tests start from: a bridge, web1 (IPv4 and IPv6, a
/// gateway each, a route, a seeded MAC, a smaller MTU), web2 (IPv4 on the
/// bridge, and a macvlan on the host's fabric link eth0).
fn first_topology(world: &World) -> String {
    let p = world.prefix();
    format!(
        r#"
name = "{p}"

[[bridge]]
name = "br-app"
addresses = ["10.10.0.1/24", "fd10::1/64"]
mtu = 1500

[[guest]]
name = "{p}-web1"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.2/24", "fd10::2/64"]
gateway = "10.10.0.1"
gateway6 = "fd10::1"
mac = "U:{p}-web1"
mtu = 1400
[[guest.route]]
to = "10.20.0.0/16"
via = "10.10.0.254"
metric = 10

[[guest]]
name = "{p}-web2"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.3/24"]
gateway = "10.10.0.1"
[[guest.interface]]
name = "eth2"
host = "eth0"
addresses = ["198.18.200.3/15"]
mode = "private"
"#
    )
}

fn adopt_guests(world: &World, names: &[&str]) {
    for name in names {
        world
            .adopt_namespace(&format!("{}-{name}", world.prefix()))
            .unwrap();
    }
}

#[tokio::test]
async fn apply_builds_a_working_topology_and_a_second_run_changes_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let _files = cleanup_files(&world);
    adopt_guests(&world, &["web1", "web2"]);
    let host = world.host("a").await.unwrap();
    let other = world.host("b").await.unwrap();
    let p = world.prefix().to_string();
    let (web1_name, web2_name) = (format!("{p}-web1"), format!("{p}-web2"));
    let file = topology_file(&world, "lab", &first_topology(&world));

    let out = apply_ok(&host, &file, &[]);
    for line in [
        "create bridge br-app".to_string(),
        "add address 10.10.0.1/24 to br-app".to_string(),
        format!("create namespace {web1_name}"),
        format!("wire {web1_name}/eth1 to br-app (veth)"),
        format!("wire {web2_name}/eth2 to eth0 (macvlan)"),
        format!("add route 10.20.0.0/16 via 10.10.0.254 metric 10 in {web1_name}"),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    let web1 = Netns::named(&web1_name).unwrap();
    let web2 = Netns::named(&web2_name).unwrap();

    // What the kernel holds, seen by ip, not by plumb.
    let br = ip_json(&host.netns, &["-d", "link", "show", "br-app"]).unwrap();
    assert_eq!(br[0]["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br[0]["mtu"], 1500);
    assert_eq!(
        global_addresses(&host.netns, "br-app"),
        ["10.10.0.1/24", "fd10::1/64"]
    );
    let eth1 = ip_json(&web1, &["-d", "link", "show", "eth1"]).unwrap();
    assert_eq!(eth1[0]["linkinfo"]["info_kind"], "veth");
    assert_eq!(eth1[0]["mtu"], 1400);
    assert_eq!(
        eth1[0]["address"],
        plumb::MacAddr::from_seed(&web1_name).to_string()
    );
    assert!(eth1[0]["ifalias"]
        .as_str()
        .unwrap()
        .contains(&format!("by=apply topology={p}")));
    assert_eq!(
        global_addresses(&web1, "eth1"),
        ["10.10.0.2/24", "fd10::2/64"]
    );
    let r = ip_json(&web1, &["route", "show", "10.20.0.0/16"]).unwrap();
    assert_eq!(
        (r[0]["gateway"].clone(), r[0]["metric"].clone()),
        ("10.10.0.254".into(), 10.into())
    );
    let d = ip_json(&web1, &["route", "show", "default"]).unwrap();
    assert_eq!(d[0]["gateway"], "10.10.0.1");
    let d6 = ip_json(&web1, &["-6", "route", "show", "default"]).unwrap();
    assert_eq!(d6[0]["gateway"], "fd10::1");
    let eth2 = ip_json(&web2, &["-d", "link", "show", "eth2"]).unwrap();
    assert_eq!(eth2[0]["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(eth2[0]["linkinfo"]["info_data"]["mode"], "private");
    let lo = ip_json(&web1, &["link", "show", "lo"]).unwrap();
    assert_eq!(lo[0]["operstate"], "UNKNOWN", "lo of a created guest is up");

    // Traffic: guest to guest over the bridge (IPv4 and IPv6), guest to
    // bridge, and another host on the fabric to the macvlan guest.
    assert!(ping(&web1, "10.10.0.3".parse().unwrap()).unwrap());
    assert!(ping(&web1, "fd10::1".parse().unwrap()).unwrap());
    assert!(ping(&web2, "10.10.0.1".parse().unwrap()).unwrap());
    tcp_exchange(&web2, "10.10.0.3:7300".parse().unwrap(), &web1).unwrap();
    tcp_exchange(&web1, "10.10.0.2:7301".parse().unwrap(), &web2).unwrap();
    tcp_exchange(&web1, "[fd10::2]:7302".parse().unwrap(), &host.netns).unwrap();
    assert!(ping(&other.netns, "198.18.200.3".parse().unwrap()).unwrap());

    // The second run: nothing planned, nothing changed in any namespace.
    let spaces = [&host.netns, &web1, &web2];
    let before = settled_dumps(&spaces);
    let out = apply_ok(&host, &file, &[]);
    assert!(out.contains("nothing to do"), "{out}");
    let after: Vec<_> = spaces.iter().map(|n| dump(n)).collect();
    assert_eq!(before, after, "the second apply changed the kernel");
    let json = apply_ok(&host, &file, &["--json", "--prune"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["actions"], serde_json::json!([]), "{json}");
    assert_eq!(json["topology"], p.as_str());
    let after: Vec<_> = spaces.iter().map(|n| dump(n)).collect();
    assert_eq!(
        before, after,
        "apply --prune of the same file changed the kernel"
    );
}

#[tokio::test]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let _files = cleanup_files(&world);
    adopt_guests(&world, &["web1", "web2"]);
    let host = world.host("a").await.unwrap();
    let p = world.prefix().to_string();
    let file = topology_file(&world, "lab", &first_topology(&world));

    let host_before = settled_dumps(&[&host.netns]);
    let out = apply_ok(&host, &file, &["--dry-run"]);
    assert!(out.contains("dry run, nothing changed"), "{out}");
    assert!(out.contains("create bridge br-app"), "{out}");
    assert!(
        out.contains(&format!("wire {p}-web1/eth1 to br-app (veth)")),
        "{out}"
    );
    assert!(
        !namespace_exists(&format!("{p}-web1")),
        "--dry-run created a namespace"
    );
    assert_eq!(
        settled_dumps(&[&host.netns]),
        host_before,
        "--dry-run changed the host"
    );
    let json = apply_ok(&host, &file, &["--dry-run", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["applied"], 0);
    assert_eq!(json["actions"][0]["kind"], "create-bridge");
    assert_eq!(
        json["actions"][0]["description"],
        "create bridge br-app with MTU 1500"
    );

    // Applied, then the file changes: the dry run shows the change, makes none.
    apply_ok(&host, &file, &[]);
    let web1 = Netns::named(&format!("{p}-web1")).unwrap();
    let changed =
        first_topology(&world).replace("\"10.10.0.2/24\"", "\"10.10.0.2/24\", \"10.10.0.12/24\"");
    let file = topology_file(&world, "lab", &changed);
    let before = settled_dumps(&[&host.netns, &web1]);
    let out = apply_ok(&host, &file, &["--dry-run"]);
    assert!(
        out.contains(&format!("add address 10.10.0.12/24 to {p}-web1/eth1")),
        "{out}"
    );
    let after: Vec<_> = [&host.netns, &web1].iter().map(|n| dump(n)).collect();
    assert_eq!(before, after, "--dry-run changed the kernel");
    let out = apply_ok(&host, &file, &[]);
    assert!(out.contains("add address 10.10.0.12/24"), "{out}");
    assert_eq!(
        global_addresses(&web1, "eth1"),
        ["10.10.0.12/24", "10.10.0.2/24", "fd10::2/64"]
    );
}

#[tokio::test]
async fn prune_removes_exactly_what_the_file_no_longer_names() {
    require_root!();
    let world = World::new().await.unwrap();
    let _files = cleanup_files(&world);
    adopt_guests(&world, &["web1", "web2"]);
    let host = world.host("a").await.unwrap();
    // A guest namespace apply did not create: it stays when dropped from the file.
    let c1 = host.container("c1").unwrap();
    let p = world.prefix().to_string();
    let web1_name = format!("{p}-web1");
    let web2_name = format!("{p}-web2");
    let c1_name = &c1.netns_name;
    let v1 = format!(
        r#"name = "{p}"
[[bridge]]
name = "br-app"
addresses = ["10.10.0.1/24", "fd10::1/64"]
[[bridge]]
name = "br-old"
addresses = ["10.40.0.1/24"]

[[guest]]
name = "{web1_name}"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.2/24", "fd10::2/64"]
gateway = "10.10.0.1"
gateway6 = "fd10::1"
[[guest.interface]]
name = "eth9"
host = "br-old"
addresses = ["10.40.0.9/24"]
[[guest.route]]
to = "10.20.0.0/16"
via = "10.10.0.254"
metric = 10

[[guest]]
name = "{web2_name}"
[[guest.interface]]
name = "eth1"
host = "br-old"
addresses = ["10.40.0.3/24"]

[[guest]]
name = "{c1_name}"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.50/24"]
"#
    );
    let file = topology_file(&world, "lab", &v1);
    apply_ok(&host, &file, &[]);
    let web1 = Netns::named(&web1_name).unwrap();
    assert!(link_names(&web1).contains(&"eth9".to_string()));
    assert!(ping(&web1, "10.10.0.50".parse().unwrap()).unwrap());

    // Hand-made: a veth from the host into web1, a port of br-app, with an
    // address on its guest end.
    let hnl = Netlink::open(&host.netns).await.unwrap();
    hnl.add_veth(
        "mine",
        &LinkOptions::default(),
        "theirs",
        &LinkOptions {
            netns: Some(web1.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    hnl.attach_to_bridge("mine", "br-app").await.unwrap();
    let wnl = Netlink::open(&web1).await.unwrap();
    wnl.add_address("theirs", "10.60.0.1/24".parse().unwrap(), false)
        .await
        .unwrap();

    // The edited file: web2, br-old, c1's guest section and web1's eth9 are
    // gone; web1's address moves from .2 to .4 and its route from 10.20 to 10.21.
    let v2 = format!(
        r#"name = "{p}"
[[bridge]]
name = "br-app"
addresses = ["10.10.0.1/24", "fd10::1/64"]

[[guest]]
name = "{web1_name}"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.4/24", "fd10::2/64"]
gateway = "10.10.0.1"
gateway6 = "fd10::1"
[[guest.route]]
to = "10.21.0.0/16"
via = "10.10.0.254"
metric = 10
"#
    );
    let file = topology_file(&world, "lab", &v2);
    // Without --prune, only additions.
    let out = apply_ok(&host, &file, &[]);
    assert!(!out.contains("remove"), "{out}");
    assert!(namespace_exists(&web2_name));
    assert!(link_names(&web1).contains(&"eth9".to_string()));
    assert_eq!(
        global_addresses(&web1, "eth1"),
        ["10.10.0.2/24", "10.10.0.4/24", "fd10::2/64"]
    );

    let out = apply_ok(&host, &file, &["--prune"]);
    for line in [
        format!("remove {web1_name}/eth9 (not in the file)"),
        format!("remove {}/eth1 (not in the file)", c1.netns_name),
        format!("remove namespace {web2_name} (not in the file)"),
        "remove bridge br-old (not in the file)".to_string(),
        format!("remove address 10.10.0.2/24 from {web1_name}/eth1 (not in the file)"),
        format!("remove route 10.20.0.0/16 via 10.10.0.254 dev eth1 metric 10 in {web1_name} (not in the file)"),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    assert!(!namespace_exists(&web2_name), "web2 was not removed");
    assert!(
        namespace_exists(&c1.netns_name),
        "a namespace apply did not create was removed"
    );
    assert!(!link_names(&c1.netns).contains(&"eth1".to_string()));
    let host_links = link_names(&host.netns);
    assert!(
        !host_links.contains(&"br-old".to_string()),
        "{host_links:?}"
    );
    assert!(host_links.contains(&"br-app".to_string()));
    assert!(
        host_links.contains(&"mine".to_string()),
        "a hand-made link was removed"
    );
    let web1_links = link_names(&web1);
    assert!(
        web1_links.contains(&"theirs".to_string()),
        "a hand-made link was removed"
    );
    assert!(!web1_links.contains(&"eth9".to_string()));
    assert_eq!(
        global_addresses(&web1, "eth1"),
        ["10.10.0.4/24", "fd10::2/64"]
    );
    assert_eq!(
        global_addresses(&web1, "theirs"),
        ["10.60.0.1/24"],
        "prune touched a hand-made link's address"
    );
    let r = ip_json(&web1, &["route", "show", "10.20.0.0/16"]).unwrap();
    assert!(r.as_array().unwrap().is_empty(), "{r}");
    let r = ip_json(&web1, &["route", "show", "10.21.0.0/16"]).unwrap();
    assert_eq!(r[0]["gateway"], "10.10.0.254");
    let d = ip_json(&web1, &["route", "show", "default"]).unwrap();
    assert_eq!(d[0]["gateway"], "10.10.0.1");
    assert!(ping(&web1, "10.10.0.1".parse().unwrap()).unwrap());

    let out = apply_ok(&host, &file, &["--prune"]);
    assert!(out.contains("nothing to do"), "{out}");

    // plumb's own commands see apply's wirings, and not the namespace mark.
    let ls = host.plumb_ok(&["ls", "--json"]);
    assert!(ls.contains(&web1_name), "{ls}");
    host.plumb_ok(&["del", &web1_name]);
    let web1_links = link_names(&web1);
    assert!(!web1_links.contains(&"eth1".to_string()), "{web1_links:?}");
    assert!(web1_links.contains(&"theirs".to_string()), "{web1_links:?}");
    let out = apply_ok(&host, &file, &["--prune"]);
    assert!(
        out.contains(&format!("wire {web1_name}/eth1 to br-app (veth)")),
        "{out}"
    );
    assert!(ping(&web1, "10.10.0.1".parse().unwrap()).unwrap());
}

#[tokio::test]
async fn a_failing_action_is_named_and_stops_the_run() {
    require_root!();
    let world = World::new().await.unwrap();
    let _files = cleanup_files(&world);
    adopt_guests(&world, &["m1", "m2"]);
    let host = world.host("a").await.unwrap();
    let p = world.prefix().to_string();
    // passthru wants eth0 for itself, but m1's macvlan already sits on it:
    // only the kernel can tell, when the second interface is wired.
    let text = format!(
        r#"name = "{p}"
[[guest]]
name = "{p}-m1"
[[guest.interface]]
name = "eth1"
host = "eth0"
addresses = ["198.18.210.1/15"]

[[guest]]
name = "{p}-m2"
[[guest.interface]]
name = "eth1"
host = "eth0"
addresses = ["198.18.210.2/15"]
mode = "passthru"
[[guest.route]]
to = "10.70.0.0/16"
dev = "eth1"
"#
    );
    let file = topology_file(&world, "fails", &text);
    let out = apply(&host, &file, &[]);
    assert!(!out.success, "{}", out.stdout);
    let failed =
        format!("action 4 of 5 failed (wire {p}-m2/eth1 to eth0 (macvlan)); 3 applied before it");
    assert!(out.stderr.contains(&failed), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("wire {p}-m1/eth1 to eth0 (macvlan)")),
        "{}",
        out.stdout
    );
    let m2 = Netns::named(&format!("{p}-m2")).unwrap();
    assert!(
        !link_names(&m2).contains(&"eth1".to_string()),
        "the failed wiring left eth1"
    );
    let r = ip_json(&m2, &["route", "show", "10.70.0.0/16"]).unwrap();
    assert!(
        r.as_array().unwrap().is_empty(),
        "an action after the failure ran"
    );
}

#[tokio::test]
async fn bad_files_name_the_problem_and_create_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let _files = cleanup_files(&world);
    adopt_guests(&world, &["web1"]);
    let host = world.host("a").await.unwrap();
    let p = world.prefix().to_string();
    let good = first_topology(&world);
    let host_before = link_names(&host.netns);
    let web1_context = format!("guest {p}-web1, interface eth1");
    let cases = [
        (
            "typo",
            good.replace("gateway6 = ", "gatway6 = "),
            vec!["unknown field `gatway6`", "line 16", "expected one of"],
        ),
        (
            "cidr",
            good.replace("\"10.10.0.2/24\"", "\"10.10.0.300/24\""),
            vec![web1_context.as_str(), "10.10.0.300/24"],
        ),
        (
            "gateway",
            good.replace(
                "gateway = \"10.10.0.1\"\ngateway6",
                "gateway = \"10.99.0.1\"\ngateway6",
            ),
            vec!["gateway 10.99.0.1 is not in any of the interface's subnets"],
        ),
        (
            "host",
            good.replace("host = \"eth0\"", "host = \"nosuch0\""),
            vec![
                "host link nosuch0 does not exist in the host namespace",
                "nothing was changed",
            ],
        ),
    ];
    for (tag, text, needles) in &cases {
        let file = topology_file(&world, tag, text);
        let out = apply(&host, &file, &[]);
        assert!(!out.success, "{tag}: accepted");
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "{tag}: expected {needle:?} in:\n{}",
                out.stderr
            );
        }
        assert_eq!(
            link_names(&host.netns),
            host_before,
            "{tag}: created host links"
        );
        assert!(
            !namespace_exists(&format!("{p}-web1")),
            "{tag}: created a guest"
        );
    }
    // A name taken by a link plumb did not make: refused before any change.
    let (_, hand) = world.namespace("web1").unwrap_or_else(|e| panic!("{e}"));
    let nl = Netlink::open(&hand).await.unwrap();
    let hnl = Netlink::open(&host.netns).await.unwrap();
    hnl.add_veth(
        "mine",
        &LinkOptions::default(),
        "eth1",
        &LinkOptions {
            netns: Some(hand.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let before = link_names(&host.netns);
    let file = topology_file(&world, "taken", &good);
    let out = apply(&host, &file, &[]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains(&format!("{p}-web1/eth1: a link of that name exists")),
        "{}",
        out.stderr
    );
    assert_eq!(
        link_names(&host.netns),
        before,
        "a refused apply created host links"
    );
    assert!(
        !namespace_exists(&format!("{p}-web2")),
        "a refused apply created a guest"
    );
    assert!(nl.link("eth1").await.unwrap().unwrap().alias.is_none());
}

/// A macvlan on a VLAN of the host's eth0, from a topology. Needs the 8021q
/// module, which this machine's kernel lacks: scripts/vm-test runs it in a VM.
#[tokio::test]
#[ignore = "needs the 8021q kernel module: run by scripts/vm-test"]
async fn vm_topology_macvlan_on_vlan_is_applied_once() {
    require_root!();
    world::require_kernel_module!("8021q");
    let world = World::new().await.unwrap();
    let _files = cleanup_files(&world);
    adopt_guests(&world, &["v1"]);
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let p = world.prefix().to_string();
    let text = format!(
        r#"name = "{p}"
[[guest]]
name = "{p}-v1"
[[guest.interface]]
name = "eth1"
host = "eth0"
addresses = ["10.50.0.1/24"]
vlan = 10
mac = "U:v1"
"#
    );
    let file = topology_file(&world, "vlan", &text);
    let out = apply_ok(&a, &file, &[]);
    assert!(
        out.contains(&format!("wire {p}-v1/eth1 to eth0 (macvlan)")),
        "{out}"
    );
    let sub = ip_json(&a.netns, &["-d", "link", "show", "eth0.10"]).unwrap();
    assert_eq!(sub[0]["linkinfo"]["info_data"]["id"], 10);
    // The far end: host b's own VLAN 10 sub-interface, made by hand.
    let bnl = Netlink::open(&b.netns).await.unwrap();
    bnl.add_vlan(
        "eth0.10",
        "eth0",
        10,
        &LinkOptions {
            up: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    bnl.add_address("eth0.10", "10.50.0.2/24".parse().unwrap(), false)
        .await
        .unwrap();
    let v1 = Netns::named(&format!("{p}-v1")).unwrap();
    assert!(
        ping(&v1, "10.50.0.2".parse().unwrap()).unwrap(),
        "VLAN 10 across hosts"
    );
    let out = apply_ok(&a, &file, &[]);
    assert!(out.contains("nothing to do"), "{out}");
    // A different VLAN re-wires the interface.
    let file = topology_file(&world, "vlan", &text.replace("vlan = 10", "vlan = 20"));
    let out = apply_ok(&a, &file, &[]);
    assert!(
        out.contains("rewire") && out.contains("VLAN 10 → 20"),
        "{out}"
    );
    let l = ip_json(&v1, &["-d", "link", "show", "eth1"]).unwrap();
    assert_eq!(l[0]["linkinfo"]["info_kind"], "macvlan");
    assert!(
        !ping(&v1, "10.50.0.2".parse().unwrap()).unwrap(),
        "VLAN 20 reached VLAN 10"
    );
}
