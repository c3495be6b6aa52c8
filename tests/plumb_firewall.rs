//! plumb's firewall mechanism against the kernel, with tables and chains of
//! the tests' own naming (plumb knows none of weft's): an nft script as one
//! transaction; set and map elements over nfnetlink, one batch one
//! transaction, printed in nft's syntax from the same fields; iptables-restore
//! all or nothing, naming the line it refused. weft's policy on top of this is
//! tested in netd_firewall.rs.
//!
//! World: one bare namespace per test.

use plumb::firewall::iptables::{self, IpFamily};
use plumb::firewall::nft_netlink::{apply, Change, Field, SetElement};
use plumb::firewall::{run_nft, run_tool};
use plumb::{Error, Netns};
use world::{require_root, World};

const TABLE: &str = "mech";

const SCRIPT: &str = "add table inet mech
add map inet mech portmap { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }
add map inet mech anyportmap6 { type inet_proto . inet_service : ipv6_addr . inet_service; }
add set inet mech peers { type ipv4_addr; }
";

fn listing(ns: &Netns, table: &str) -> String {
    let out = run_tool(ns, "nft", &["list", "table", "inet", table], "", "list").unwrap();
    assert!(out.success, "nft list table inet {table}: {}", out.stderr);
    out.stdout
}

fn map_element(host_port: u16, target: &str, port: u16) -> SetElement {
    SetElement {
        set: "portmap".into(),
        key: vec![
            Field::Proto(6),
            Field::Addr("198.18.0.1".parse().unwrap()),
            Field::Port(host_port),
        ],
        data: vec![Field::Addr(target.parse().unwrap()), Field::Port(port)],
    }
}

#[tokio::test]
async fn nfnetlink_elements_land_in_any_table_one_batch_one_transaction() {
    require_root!();
    let world = World::new().await.unwrap();
    let (_, ns) = world.namespace("m1").unwrap();
    run_nft(&ns, SCRIPT, "create table inet mech", |_| None).unwrap();

    let a = map_element(8080, "10.9.0.3", 80);
    let b = map_element(8081, "10.9.0.3", 81);
    let v6 = SetElement {
        set: "anyportmap6".into(),
        key: vec![Field::Proto(132), Field::Port(9)],
        data: vec![Field::Addr("fd00:9::3".parse().unwrap()), Field::Port(9)],
    };
    let peer = SetElement {
        set: "peers".into(),
        key: vec![Field::Addr("10.10.0.1".parse().unwrap())],
        data: vec![],
    };
    let batch = [
        (Change::Add, &a),
        (Change::Add, &b),
        (Change::Add, &v6),
        (Change::Add, &peer),
    ];
    apply(&ns, TABLE, &batch).unwrap().unwrap();
    let listed = listing(&ns, TABLE);
    // The kernel holds what the elements' nft text says: one set of fields.
    for element in [&a, &b, &v6, &peer] {
        assert!(
            listed.contains(&element.to_string()),
            "{element} missing:\n{listed}"
        );
    }
    // Adding an identical element again changes nothing.
    apply(&ns, TABLE, &[(Change::Add, &a)]).unwrap().unwrap();

    // A batch with one new element and one that maps a taken key elsewhere
    // is refused whole: the new one does not land either.
    let fresh = map_element(8082, "10.9.0.4", 82);
    let clash = map_element(8080, "10.9.0.4", 80);
    let refusal = apply(&ns, TABLE, &[(Change::Add, &fresh), (Change::Add, &clash)])
        .unwrap()
        .unwrap_err();
    assert!(refusal.contains("File exists"), "{refusal}");
    let listed = listing(&ns, TABLE);
    assert!(!listed.contains(&fresh.to_string()), "{listed}");
    assert!(listed.contains(&a.to_string()), "{listed}");

    // Deleting takes elements out; deleting an absent one is refused.
    apply(&ns, TABLE, &[(Change::Delete, &a), (Change::Delete, &peer)])
        .unwrap()
        .unwrap();
    let listed = listing(&ns, TABLE);
    assert!(!listed.contains(&a.to_string()), "{listed}");
    assert!(!listed.contains(&peer.to_string()), "{listed}");
    assert!(listed.contains(&b.to_string()), "{listed}");
    let refusal = apply(&ns, TABLE, &[(Change::Delete, &a)])
        .unwrap()
        .unwrap_err();
    assert!(refusal.contains("No such file"), "{refusal}");

    // A table that is not there: refused, not a failure to talk to the kernel.
    let refusal = apply(&ns, "absent", &[(Change::Add, &a)])
        .unwrap()
        .unwrap_err();
    assert!(refusal.contains("No such file"), "{refusal}");
}

#[tokio::test]
async fn the_element_text_is_what_nft_takes() {
    require_root!();
    let world = World::new().await.unwrap();
    let (_, ns) = world.namespace("m2").unwrap();
    run_nft(&ns, SCRIPT, "create table inet mech", |_| None).unwrap();
    let a = map_element(8080, "10.9.0.3", 80);
    // The text path (what the WEFT_NFT_EXEC=1 fallback runs) from the same element.
    run_nft(
        &ns,
        &format!("add element inet {TABLE} portmap {{ {a} }}\n"),
        "add an element as text",
        |_| None,
    )
    .unwrap();
    assert!(listing(&ns, TABLE).contains(&a.to_string()));
    // …and the netlink path sees it as the same element: deleting it works.
    apply(&ns, TABLE, &[(Change::Delete, &a)]).unwrap().unwrap();
    assert!(!listing(&ns, TABLE).contains(&a.to_string()));
}

#[tokio::test]
async fn a_refused_nft_script_changes_nothing_and_says_why() {
    require_root!();
    let world = World::new().await.unwrap();
    let (_, ns) = world.namespace("m3").unwrap();
    let script = "add table inet mech\nadd chain inet mech c\nadd rule inet mech nope accept\n";
    let err = run_nft(&ns, script, "make chain c", |stderr| {
        stderr
            .contains("No such file")
            .then_some("the chain is not there")
    })
    .unwrap_err();
    match &err {
        Error::Firewall {
            tool,
            action,
            message,
            ..
        } => {
            assert_eq!(*tool, "nft");
            assert_eq!(action, "make chain c");
            assert!(message.contains("the chain is not there"), "{err}");
        }
        other => panic!("not a firewall error: {other}"),
    }
    // One transaction: the table of the script's first line is not there either.
    let out = run_tool(&ns, "nft", &["list", "tables"], "", "list").unwrap();
    assert!(!out.stdout.contains("mech"), "{}", out.stdout);
}

#[tokio::test]
async fn iptables_restore_is_all_or_nothing_and_names_the_refused_line() {
    require_root!();
    let world = World::new().await.unwrap();
    let (_, ns) = world.namespace("m4").unwrap();
    for family in IpFamily::ALL {
        iptables::restore(
            &ns,
            family,
            "*nat\n:MECH-A - [0:0]\n-A MECH-A -j RETURN\nCOMMIT\n",
            "make MECH-A",
        )
        .unwrap();
        let saved = iptables::save(&ns, family, "nat").unwrap();
        assert!(saved.contains(":MECH-A - [0:0]"), "{saved}");
        assert!(saved.contains("-A MECH-A -j RETURN"), "{saved}");

        let err = iptables::restore(
            &ns,
            family,
            "*nat\n:MECH-B - [0:0]\n-A MECH-NONE -j RETURN\nCOMMIT\n",
            "make MECH-B",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(family.restore_tool()), "{err}");
        assert!(err.contains("make MECH-B"), "{err}");
        assert!(err.contains("input line: -A MECH-NONE -j RETURN"), "{err}");
        let saved = iptables::save(&ns, family, "nat").unwrap();
        assert!(!saved.contains("MECH-B"), "half a restore landed: {saved}");
        assert!(
            saved.contains("-A MECH-A -j RETURN"),
            "--noflush kept: {saved}"
        );
    }
}
