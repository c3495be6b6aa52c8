use super::*;

const A: &str = "/weft/v1/names/";

fn id(n: u8) -> String {
    // Host ids are 32 hex digits.
    format!("{:032x}", n)
}

fn kv(host_n: u8, create: Revision, value: &str) -> KeyValue {
    KeyValue {
        key: format!("{A}{}", id(host_n)),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: create,
        lease: Some(1),
    }
}

fn names(host: &str, entries: &[(&str, &str, &str)]) -> String {
    let names: Vec<PublishedName> = entries
        .iter()
        .map(|(c, n, ip)| PublishedName {
            container: c.to_string(),
            name: n.to_string(),
            aliases: vec![],
            ipv4: Some(ip.parse().unwrap()),
            ipv6: None,
        })
        .collect();
    serde_json::to_string(&PublishedNames {
        host: host.into(),
        names,
    })
    .unwrap()
}

fn put(remote: &mut RemoteNames, table: &NameTable, c: &NamesCounters, kv: KeyValue) {
    remote.changed(BTreeMap::from([(kv.key.clone(), Some(kv))]), table, c);
}

fn setup() -> (RemoteNames, NameTable, NamesCounters) {
    assert!(id(1).parse::<HostId>().is_ok(), "test ids must be host ids");
    (
        RemoteNames::new("a".into(), format!("{A}{}", id(9))),
        NameTable::new(),
        NamesCounters::default(),
    )
}

#[test]
fn a_hosts_names_are_served_and_go_with_its_key() {
    let (mut remote, table, c) = setup();
    put(
        &mut remote,
        &table,
        &c,
        kv(1, 5, &names("b", &[("c1", "web", "10.99.1.2")])),
    );
    assert_eq!(
        table.addresses_of("web").unwrap().ipv4,
        Some("10.99.1.2".parse().unwrap())
    );
    let row = &table.list()[0];
    assert_eq!((row.host.as_str(), row.source), ("b", NameSource::Cluster));
    remote.changed(
        BTreeMap::from([(format!("{A}{}", id(1)), None)]),
        &table,
        &c,
    );
    assert!(table.addresses_of("web").is_none());
}

#[test]
fn a_name_clash_keeps_the_holder_and_the_other_gets_it_once_free() {
    let (mut remote, table, c) = setup();
    let b = kv(1, 5, &names("b", &[("c1", "db", "10.99.1.2")]));
    let c3 = kv(
        2,
        7,
        &names(
            "c",
            &[("c1", "db", "10.99.2.2"), ("c2", "cache", "10.99.2.3")],
        ),
    );
    // Both in one listing: the older key (b) wins whatever the key order.
    remote.relisted(
        BTreeMap::from([(c3.key.clone(), c3.clone()), (b.key.clone(), b.clone())]),
        &table,
        &c,
    );
    assert_eq!(
        table.addresses_of("db").unwrap().ipv4,
        Some("10.99.1.2".parse().unwrap())
    );
    assert!(
        table.addresses_of("cache").is_some(),
        "the rest of c's names are served"
    );
    assert_eq!(c.refused.load(Ordering::Relaxed), 1);
    // b drops db: c's record is tried again and served.
    put(&mut remote, &table, &c, kv(1, 5, &names("b", &[])));
    assert_eq!(
        table.addresses_of("db").unwrap().ipv4,
        Some("10.99.2.2".parse().unwrap())
    );
    assert_eq!(
        c.refused.load(Ordering::Relaxed),
        1,
        "a retry is not counted again"
    );
}

#[test]
fn a_relisting_removes_hosts_whose_keys_are_gone() {
    let (mut remote, table, c) = setup();
    put(
        &mut remote,
        &table,
        &c,
        kv(1, 5, &names("b", &[("c1", "web", "10.99.1.2")])),
    );
    put(
        &mut remote,
        &table,
        &c,
        kv(2, 6, &names("c", &[("c1", "db", "10.99.2.2")])),
    );
    let only_c = kv(2, 6, &names("c", &[("c1", "db", "10.99.2.2")]));
    remote.relisted(BTreeMap::from([(only_c.key.clone(), only_c)]), &table, &c);
    assert!(table.addresses_of("web").is_none());
    assert!(table.addresses_of("db").is_some());
}

#[test]
fn bad_data_is_ignored_and_counted_once_per_revision() {
    let (mut remote, table, c) = setup();
    let local = ContainerNames {
        container: "x".into(),
        name: "mine".into(),
        aliases: vec![],
        ipv4: Some("10.99.0.2".parse().unwrap()),
        ipv6: None,
        host: "a".into(),
        source: NameSource::Local,
    };
    table.insert(local).unwrap();
    let bad = [
        kv(1, 5, "not json"),
        kv(2, 6, r#"{"host":"b","names":[],"extra":1}"#),
        kv(3, 7, &names("a", &[("c1", "evil", "10.99.3.2")])),
        KeyValue {
            key: format!("{A}not-an-id"),
            ..kv(4, 8, &names("d", &[]))
        },
    ];
    for kv in bad.iter().cloned() {
        put(&mut remote, &table, &c, kv.clone());
        put(&mut remote, &table, &c, kv);
    }
    assert_eq!(c.bad_data.load(Ordering::Relaxed), 4);
    // A host claiming this host's name cannot replace its records.
    assert!(table.addresses_of("mine").is_some());
    assert!(table.addresses_of("evil").is_none());
    // The same host name from a second key is refused too.
    put(
        &mut remote,
        &table,
        &c,
        kv(5, 9, &names("e", &[("c1", "one", "10.99.5.2")])),
    );
    put(
        &mut remote,
        &table,
        &c,
        kv(6, 10, &names("e", &[("c1", "two", "10.99.6.2")])),
    );
    assert!(table.addresses_of("one").is_some());
    assert!(table.addresses_of("two").is_none());
    assert_eq!(c.bad_data.load(Ordering::Relaxed), 5);
}

#[test]
fn this_hosts_own_key_is_skipped() {
    let (mut remote, table, c) = setup();
    let own = KeyValue {
        key: format!("{A}{}", id(9)),
        ..kv(9, 3, &names("a", &[("c1", "web", "10.99.0.2")]))
    };
    put(&mut remote, &table, &c, own);
    assert!(table.is_empty());
    assert_eq!(c.bad_data.load(Ordering::Relaxed), 0);
}
