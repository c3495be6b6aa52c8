use super::*;

pub(crate) fn record(container: &str, name: &str, aliases: &[&str], ipv4: &str) -> ContainerNames {
    ContainerNames {
        container: container.to_string(),
        name: name.to_string(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ipv4: Some(ipv4.parse().unwrap()),
        ipv6: None,
        host: "a".to_string(),
        source: NameSource::Local,
    }
}

#[test]
fn names_and_aliases_resolve_in_any_case() {
    let table = NameTable::new();
    table
        .insert(record("c1", "Web", &["www", "front.end"], "10.66.0.2"))
        .unwrap();
    let web = Some(NameAddresses {
        ipv4: Some("10.66.0.2".parse().unwrap()),
        ipv6: None,
    });
    assert_eq!(table.addresses_of("web"), web);
    assert_eq!(table.addresses_of("WEB"), web);
    assert_eq!(table.addresses_of("wWw"), web);
    assert_eq!(table.addresses_of("front.end"), web);
    assert_eq!(table.addresses_of("db"), None);
    assert_eq!(
        table.name_of("10.66.0.2".parse().unwrap()).as_deref(),
        Some("web")
    );
    assert!(table.has_names_under("END"));
    assert!(!table.has_names_under("web"));
    let rows = table.list();
    let names: Vec<(&str, bool)> = rows.iter().map(|r| (r.name.as_str(), r.alias)).collect();
    assert_eq!(names, [("front.end", true), ("web", false), ("www", true)]);
}

#[test]
fn a_name_held_by_another_container_is_refused_naming_both() {
    let table = NameTable::new();
    table
        .insert(record("c1", "web", &["db"], "10.66.0.2"))
        .unwrap();
    let err = table
        .insert(record("c2", "api", &["DB"], "10.66.0.3"))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"db\"") && text.contains("c1") && text.contains("c2"),
        "{text}"
    );
    // Nothing of the refused record was registered.
    assert_eq!(table.addresses_of("api"), None);
    assert_eq!(table.name_of("10.66.0.3".parse().unwrap()), None);
    assert_eq!(table.len(), 1);
    // The same address twice is refused too.
    let err = table
        .insert(record("c3", "other", &[], "10.66.0.2"))
        .unwrap_err();
    assert!(matches!(err, NamesError::AddressTaken { .. }), "{err}");
}

#[test]
fn registering_again_replaces_the_containers_own_names() {
    let table = NameTable::new();
    table
        .insert(record("c1", "web", &["www"], "10.66.0.2"))
        .unwrap();
    table
        .insert(record("c1", "web", &["site"], "10.66.0.4"))
        .unwrap();
    assert_eq!(table.addresses_of("www"), None);
    assert!(table.addresses_of("site").is_some());
    assert_eq!(table.name_of("10.66.0.2".parse().unwrap()), None);
    assert_eq!(table.remove("c1").unwrap().aliases, ["site"]);
    assert!(table.is_empty());
    assert_eq!(table.addresses_of("web"), None);
    assert!(table.remove("c1").is_none());
}

#[test]
fn bad_names_are_refused_with_the_reason() {
    let table = NameTable::new();
    for (name, reason) in [
        ("", "empty"),
        ("a..b", "empty label"),
        ("we b", "only letters"),
        ("10.0.0.1", "IP address"),
        ("x.in-addr.arpa", ".arpa"),
    ] {
        let err = table
            .insert(record("c1", name, &[], "10.66.0.2"))
            .unwrap_err();
        assert!(err.to_string().contains(reason), "{name:?}: {err}");
    }
    let long_label = "a".repeat(64);
    assert!(table
        .insert(record("c1", &long_label, &[], "10.66.0.2"))
        .is_err());
    let long_name = ["abcdefghij"; 20].join(".");
    assert!(table
        .insert(record("c1", &long_name, &[], "10.66.0.2"))
        .is_err());
    let mut no_address = record("c1", "web", &[], "10.66.0.2");
    no_address.ipv4 = None;
    assert!(table.insert(no_address).is_err());
    assert!(table.is_empty());
}

#[test]
fn a_remote_hosts_records_are_replaced_in_one_call() {
    let table = NameTable::new();
    table
        .insert(record("local1", "web", &[], "10.66.0.2"))
        .unwrap();
    let remote = |container: &str, name: &str, ip: &str| ContainerNames {
        host: "b".into(),
        source: NameSource::Cluster,
        ..record(container, name, &[], ip)
    };
    let report = table.replace_host(
        "b",
        vec![
            remote("r1", "db", "10.66.1.2"),
            remote("r2", "cache", "10.66.1.3"),
        ],
    );
    assert_eq!((report.inserted, report.removed), (2, 0));
    assert!(report.refused.is_empty());

    // The next publication drops r2, keeps r1 and claims a name held locally.
    let report = table.replace_host(
        "b",
        vec![
            remote("r1", "db", "10.66.1.2"),
            remote("r3", "web", "10.66.1.4"),
        ],
    );
    assert_eq!((report.inserted, report.removed), (1, 1));
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].to_string().contains("local1"));
    assert!(report.changed);

    // The same records again (any case): nothing to write.
    let report = table.replace_host("b", vec![remote("r1", "DB", "10.66.1.2")]);
    assert_eq!(
        (report.inserted, report.removed, report.changed),
        (1, 0, false)
    );
    let report = table.replace_host("b", vec![remote("r1", "db", "10.66.1.9")]);
    assert_eq!(
        (report.inserted, report.removed, report.changed),
        (1, 0, true)
    );
    assert_eq!(
        table.addresses_of("db").unwrap().ipv4,
        Some("10.66.1.9".parse().unwrap())
    );
    assert_eq!(table.addresses_of("cache"), None);
    assert_eq!(
        table.addresses_of("web").unwrap().ipv4,
        Some("10.66.0.2".parse().unwrap())
    );

    // A host gone (lease expired): all of its names go at once.
    let report = table.replace_host("b", Vec::new());
    assert_eq!(report.removed, 1);
    assert_eq!(table.records().len(), 1);
    assert_eq!(table.list()[0].source, NameSource::Local);
}
