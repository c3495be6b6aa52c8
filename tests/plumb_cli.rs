//! The `plumb` CLI end to end, run inside a simulated host: pipework's forms,
//! what the kernel holds afterwards, traffic, `del`, `ls`, `route`, and bad
//! input that must create nothing.

use std::time::Duration;

use plumb::{LinkOptions, Netlink, Netns};
use world::{ip_json, ping, require_root, tcp_exchange, World};

fn links(netns: &Netns) -> Vec<String> {
    ip_json(netns, &["link", "show"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn addresses(netns: &Netns, ifname: &str) -> Vec<String> {
    let v = ip_json(netns, &["addr", "show", "dev", ifname]).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[tokio::test]
async fn bridge_wiring_with_ipv6_several_addresses_and_gateway() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    // br1 does not exist: plumb creates it because the name starts with br.
    let out = host.plumb_ok(&[
        "br1",
        &c1.netns_name,
        "10.5.0.2/24@10.5.0.1",
        "fd05::2/64@fd05::1",
        "10.6.0.2/24",
    ]);
    assert!(out.contains("wired eth1"), "{out}");
    host.plumb_ok(&[
        "-i",
        "eth2",
        "-l",
        "vc2",
        "br1",
        &c2.netns_name,
        "10.5.0.3/24",
        "fd05::3/64",
    ]);

    let br1 = ip_json(&host.netns, &["-d", "link", "show", "br1"]).unwrap();
    assert_eq!(br1[0]["linkinfo"]["info_kind"], "bridge");
    let ports = ip_json(&host.netns, &["link", "show", "master", "br1"]).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 2);
    assert!(links(&host.netns).contains(&"vc2".to_string()));
    let mut got = addresses(&c1.netns, "eth1");
    got.sort();
    assert_eq!(got, ["10.5.0.2/24", "10.6.0.2/24", "fd05::2/64"]);
    let default = ip_json(&c1.netns, &["route", "show", "default"]).unwrap();
    assert_eq!(default[0]["gateway"], "10.5.0.1");
    let default6 = ip_json(&c1.netns, &["-6", "route", "show", "default"]).unwrap();
    assert_eq!(default6[0]["gateway"], "fd05::1");
    assert!(links(&c2.netns).contains(&"eth2".to_string()));

    assert!(ping(&c1.netns, "10.5.0.3".parse().unwrap()).unwrap());
    assert!(ping(&c2.netns, "fd05::2".parse().unwrap()).unwrap());
    tcp_exchange(&c2.netns, "10.5.0.3:7100".parse().unwrap(), &c1.netns).unwrap();
    tcp_exchange(&c1.netns, "[fd05::2]:7101".parse().unwrap(), &c2.netns).unwrap();
}

#[tokio::test]
async fn custom_and_seeded_macs() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24", "02:12:34:56:78:9a"]);
    host.plumb_ok(&["br1", &c2.netns_name, "10.5.0.3/24", "U:web1"]);
    let l1 = ip_json(&c1.netns, &["link", "show", "eth1"]).unwrap();
    assert_eq!(l1[0]["address"], "02:12:34:56:78:9a");
    let l2 = ip_json(&c2.netns, &["link", "show", "eth1"]).unwrap();
    // `echo web1 | md5sum` starts with 66ee606d50: pipework's MAC for U:web1.
    assert_eq!(l2[0]["address"], "02:66:ee:60:6d:50");
    assert!(ping(&c1.netns, "10.5.0.3".parse().unwrap()).unwrap());
}

#[tokio::test]
async fn macvlan_in_each_mode() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    // The host's fabric link eth0 is not a bridge: guests get macvlans on it.
    for (i, mode) in ["bridge", "private", "vepa", "passthru"].iter().enumerate() {
        let c = host.container(&format!("m{i}")).unwrap();
        let ip = format!("198.18.100.{}/15", i + 10);
        let out = host.plumb(&["--mode", mode, "eth0", &c.netns_name, &ip]);
        if *mode == "passthru" {
            // passthru takes the lower link exclusively: macvlans exist on it already.
            assert!(!out.success, "passthru on a shared lower link must fail");
            assert!(
                !links(&c.netns).contains(&"eth1".to_string()),
                "failed wiring left eth1"
            );
            continue;
        }
        assert!(out.success, "{mode}: {}", out.stderr);
        let l = ip_json(&c.netns, &["-d", "link", "show", "eth1"]).unwrap();
        assert_eq!(l[0]["linkinfo"]["info_kind"], "macvlan");
        assert_eq!(l[0]["linkinfo"]["info_data"]["mode"], *mode);
        // Another host on the fabric reaches the macvlan guest directly.
        let b_ip = format!("198.18.100.{}", i + 10);
        let other = world.host(&format!("o{i}")).await.unwrap();
        assert!(
            ping(&other.netns, b_ip.parse().unwrap()).unwrap(),
            "{mode}: no ping"
        );
        tcp_exchange(
            &c.netns,
            format!("{b_ip}:7300").parse().unwrap(),
            &other.netns,
        )
        .unwrap_or_else(|e| panic!("{mode}: no TCP: {e:#}"));
    }
    // passthru alone on its own lower link works.
    let lone = world.host("p").await.unwrap();
    let c = lone.container("pt").unwrap();
    let out = lone.plumb(&[
        "--mode",
        "passthru",
        "eth0",
        &c.netns_name,
        "198.18.101.1/15",
    ]);
    assert!(out.success, "passthru: {}", out.stderr);
    let l = ip_json(&c.netns, &["-d", "link", "show", "eth1"]).unwrap();
    assert_eq!(l[0]["linkinfo"]["info_data"]["mode"], "passthru");
}

/// Needs CONFIG_BRIDGE_VLAN_FILTERING, which this machine's kernel lacks:
/// scripts/vm-test runs it in a VM with Debian's kernel.
#[tokio::test]
#[ignore = "needs bridge VLAN filtering: run by scripts/vm-test"]
async fn vm_bridge_vlan_ports_separate_guests() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    let c3 = host.container("c3").unwrap();
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24", "@10"]);
    host.plumb_ok(&["br1", &c2.netns_name, "10.5.0.3/24", "@10"]);
    host.plumb_ok(&["br1", &c3.netns_name, "10.5.0.4/24", "@20"]);
    assert!(ping(&c1.netns, "10.5.0.3".parse().unwrap()).unwrap());
    assert!(
        !ping(&c1.netns, "10.5.0.4".parse().unwrap()).unwrap(),
        "VLANs 10 and 20 must not meet"
    );
    let ls = host.plumb_ok(&["ls", "--json"]);
    let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let vlans: Vec<_> = ls
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["guest"] == c3.netns_name.as_str())
        .map(|w| w["vlan"].clone())
        .collect();
    assert_eq!(vlans, [serde_json::json!(20)]);
}

#[tokio::test]
async fn del_undoes_exactly_what_plumb_made() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    let before_host = links(&host.netns);
    // A link plumb did not make stays, whatever del is asked.
    let cnl = Netlink::open(&c1.netns).await.unwrap();
    let hnl = Netlink::open(&host.netns).await.unwrap();
    hnl.add_veth(
        "mine",
        &LinkOptions::default(),
        "theirs",
        &LinkOptions {
            netns: Some(c1.netns.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24"]);
    host.plumb_ok(&["-i", "eth2", "br1", &c1.netns_name, "10.6.0.2/24"]);
    host.plumb_ok(&["br1", &c2.netns_name, "10.5.0.3/24"]);

    let out = host.plumb_ok(&["del", &c1.netns_name, "-i", "eth2"]);
    assert!(out.contains("eth2"), "{out}");
    assert!(cnl.link("eth2").await.unwrap().is_none());
    assert!(cnl.link("eth1").await.unwrap().is_some());
    host.plumb_ok(&["del", &c1.netns_name]);
    assert!(cnl.link("eth1").await.unwrap().is_none());
    assert!(
        cnl.link("theirs").await.unwrap().is_some(),
        "del removed a link plumb did not make"
    );
    // br1 still has c2's port, so it stays; after c2 goes, plumb's bridge goes too.
    assert!(links(&host.netns).contains(&"br1".to_string()));
    host.plumb_ok(&["del", &c2.netns_name]);
    let mut after = links(&host.netns);
    after.retain(|l| l != "mine");
    assert_eq!(after, before_host, "host links left behind");
    // Deleting a named interface plumb did not wire is an error naming it.
    let out = host.plumb(&["del", &c1.netns_name, "-i", "theirs"]);
    assert!(
        !out.success && out.stderr.contains("theirs"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn route_command_changes_guest_routes() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24"]);
    host.plumb_ok(&[
        "route",
        &c1.netns_name,
        "add",
        "10.9.0.0/16",
        "via",
        "10.5.0.254",
        "metric",
        "7",
    ]);
    let r = ip_json(&c1.netns, &["route", "show", "10.9.0.0/16"]).unwrap();
    assert_eq!(r[0]["gateway"], "10.5.0.254");
    assert_eq!(r[0]["metric"], 7);
    let shown = host.plumb_ok(&["route", &c1.netns_name, "show"]);
    assert!(shown.contains("10.9.0.0/16 via 10.5.0.254"), "{shown}");
    host.plumb_ok(&[
        "route",
        &c1.netns_name,
        "del",
        "10.9.0.0/16",
        "via",
        "10.5.0.254",
    ]);
    let r = ip_json(&c1.netns, &["route", "show", "10.9.0.0/16"]).unwrap();
    assert!(r.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_creates_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let host_before = links(&host.netns);
    let guest_before = links(&c1.netns);
    let g = c1.netns_name.as_str();
    let cases: &[(&[&str], &str)] = &[
        (&["br1", g, "10.5.0.300/24"], "10.5.0.300/24"),
        (&["br1", g, "10.5.0.2"], "prefix length"),
        (&["br1", g, "10.5.0.2", "10.5.0.3/24"], "prefix length"),
        (
            &["-i", "sixteen-bytes-xx", "br1", g, "10.5.0.2/24"],
            "at most 15",
        ),
        (&["br1", "no-such-guest", "10.5.0.2/24"], "no-such-guest"),
        (&["br1", g, "10.5.0.2/24", "@0"], "reserved"),
        (&["br1", g, "10.5.0.2/24", "@4095"], "reserved"),
        (&["br1", g, "10.5.0.2/24", "02:zz:34:56:78:9a"], "MAC"),
        (
            &["nosuch0", g, "10.5.0.2/24"],
            "host interface nosuch0 does not exist",
        ),
        (&["br1", g, "10.5.0.2/24@fd00::1"], "same IP version"),
    ];
    for (args, needle) in cases {
        let out = host.plumb(args);
        assert!(!out.success, "{args:?} succeeded");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?} in {:?}",
            out.stderr
        );
    }
    // The host side is named after its /run/netns entry.
    let out = host.plumb(&["nosuch0", g, "10.5.0.2/24"]);
    let place = format!("in namespace {}", host.netns_name);
    assert!(out.stderr.contains(&place), "{}", out.stderr);
    assert_eq!(
        links(&host.netns),
        host_before,
        "bad input created host links"
    );
    assert_eq!(
        links(&c1.netns),
        guest_before,
        "bad input created guest links"
    );
    // An interface name taken in the guest: refused, and the new bridge and veth undone.
    host.plumb_ok(&["br1", g, "10.5.0.2/24"]);
    let before = links(&host.netns);
    let out = host.plumb(&["br2", g, "10.6.0.2/24"]);
    assert!(
        !out.success && out.stderr.contains("eth1 already exists"),
        "{}",
        out.stderr
    );
    let mut after = links(&host.netns);
    after.retain(|l| l != "br2");
    assert_eq!(after, before, "a failed wiring left links behind");
}

/// pipework's `@vlan` on a non-bridge link: a macvlan on a VLAN sub-interface.
/// Needs the 8021q module, which this machine's kernel lacks: scripts/vm-test
/// runs it in a VM with Debian's kernel.
#[tokio::test]
#[ignore = "needs the 8021q kernel module: run by scripts/vm-test"]
async fn vm_macvlan_on_vlan_carries_traffic_between_hosts() {
    require_root!();
    world::require_kernel_module!("8021q");
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    let c1 = a.container("c1").unwrap();
    let c2 = b.container("c2").unwrap();
    let c3 = b.container("c3").unwrap();
    a.plumb_ok(&["eth0", &c1.netns_name, "10.50.0.1/24", "U:c1@10"]);
    b.plumb_ok(&["eth0", &c2.netns_name, "10.50.0.2/24", "@10"]);
    b.plumb_ok(&["eth0", &c3.netns_name, "10.50.0.3/24", "@20"]);
    let sub = ip_json(&a.netns, &["-d", "link", "show", "eth0.10"]).unwrap();
    assert_eq!(sub[0]["linkinfo"]["info_kind"], "vlan");
    assert_eq!(sub[0]["linkinfo"]["info_data"]["id"], 10);
    assert!(
        ping(&c1.netns, "10.50.0.2".parse().unwrap()).unwrap(),
        "VLAN 10 across hosts"
    );
    tcp_exchange(&c2.netns, "10.50.0.2:7200".parse().unwrap(), &c1.netns).unwrap();
    assert!(
        !ping(&c1.netns, "10.50.0.3".parse().unwrap()).unwrap(),
        "VLAN 20 reached from VLAN 10"
    );
    // del removes the VLAN sub-interface plumb made once its last guest is gone.
    b.plumb_ok(&["del", &c3.netns_name]);
    assert!(!links(&b.netns).contains(&"eth0.20".to_string()));
    assert!(links(&b.netns).contains(&"eth0.10".to_string()));
}

#[tokio::test]
async fn dhcp_lease_lands_on_the_guest_interface() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    // A static guest first, so br1 exists for the DHCP server to listen on.
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24"]);
    let hnl = Netlink::open(&host.netns).await.unwrap();
    hnl.add_address("br1", "10.5.0.1/24".parse().unwrap(), false)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("{}-dhcp", world.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dnsmasq = std::process::Command::new("dnsmasq");
    dnsmasq.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=br1",
        "--bind-interfaces",
        "--dhcp-range=10.5.0.50,10.5.0.60,255.255.255.0,1h",
        "--dhcp-option=3,10.5.0.1",
        &format!("--dhcp-leasefile={}", dir.join("leases").display()),
        &format!("--pid-file={}", dir.join("pid").display()),
    ]);
    world.spawn(&host.netns, dnsmasq).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = host.plumb_ok(&["br1", &c2.netns_name, "dhcp"]);
    assert!(out.contains("dhcp"), "{out}");
    let got = addresses(&c2.netns, "eth1");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("10.5.0.5") || got[0].starts_with("10.5.0.60"),
        "{got:?}"
    );
    assert!(got[0].ends_with("/24"), "{got:?}");
    let default = ip_json(&c2.netns, &["route", "show", "default"]).unwrap();
    assert_eq!(default[0]["gateway"], "10.5.0.1");
    assert!(ping(&c2.netns, "10.5.0.2".parse().unwrap()).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn ls_lists_what_plumb_wired_by_name_and_by_pid() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24", "fd05::2/64", "U:c1"]);
    // A guest named by the PID of a process running in it.
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("60");
    let pid = world.spawn(&c2.netns, sleep).unwrap().to_string();
    host.plumb_ok(&["-i", "eth5", "eth0", &pid, "198.18.50.1/15"]);
    let listed: serde_json::Value =
        serde_json::from_str(&host.plumb_ok(&["ls", "--json"])).unwrap();
    let ours: Vec<&serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["guest"] == c1.netns_name.as_str() || w["guest_if"] == "eth5")
        .collect();
    assert_eq!(ours.len(), 2, "{listed}");
    let veth = ours.iter().find(|w| w["kind"] == "veth").unwrap();
    assert_eq!(veth["host_if"], "br1");
    assert_eq!(veth["mac"], "02:5f:0b:e3:4b:b0");
    assert_eq!(
        veth["addresses"],
        serde_json::json!(["10.5.0.2/24", "fd05::2/64"])
    );
    let host_side = veth["host_side"].as_str().unwrap();
    assert!(links(&host.netns).contains(&host_side.to_string()));
    let mv = ours.iter().find(|w| w["kind"] == "macvlan").unwrap();
    assert_eq!(mv["host_if"], "eth0");
    // c2 has a /run/netns name too, which ls prefers to the PID.
    assert_eq!(mv["guest"], c2.netns_name.as_str());
    let table = host.plumb_ok(&["ls"]);
    assert!(
        table.lines().next().unwrap().starts_with("GUEST"),
        "{table}"
    );
    assert!(table.contains(&c1.netns_name), "{table}");
    // del by PID finds the same namespace.
    host.plumb_ok(&["del", &pid]);
    assert!(!links(&c2.netns).contains(&"eth5".to_string()));
}

#[tokio::test]
async fn gratuitous_arp_updates_neighbours() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let c1 = host.container("c1").unwrap();
    let c2 = host.container("c2").unwrap();
    host.plumb_ok(&["br1", &c2.netns_name, "10.5.0.3/24"]);
    // Linux only learns from unsolicited ARP where arp_accept allows it.
    plumb::sysctl::write(&c2.netns, "net/ipv4/conf/eth1/arp_accept", "1").unwrap();
    host.plumb_ok(&["br1", &c1.netns_name, "10.5.0.2/24", "02:00:00:00:05:02"]);
    let mut learned = serde_json::Value::Null;
    for _ in 0..20 {
        learned = ip_json(&c2.netns, &["neigh", "show", "10.5.0.2"]).unwrap();
        if learned.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(learned[0]["lladdr"], "02:00:00:00:05:02", "{learned}");
}
