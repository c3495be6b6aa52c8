use super::*;
use crate::names::table::{ContainerNames, NameSource};

fn zone() -> Zone {
    Zone::new(
        "weft.internal",
        vec![
            "10.66.0.0/24".parse().unwrap(),
            "fd66::/64".parse().unwrap(),
        ],
    )
    .unwrap()
}

fn table() -> NameTable {
    let table = NameTable::new();
    table
        .insert(ContainerNames {
            container: "c1".into(),
            name: "web".into(),
            aliases: vec!["www".into(), "api.v2".into()],
            ipv4: Some("10.66.0.2".parse().unwrap()),
            ipv6: Some("fd66::2".parse().unwrap()),
            host: "a".into(),
            source: NameSource::Local,
        })
        .unwrap();
    table
        .insert(ContainerNames {
            container: "c2".into(),
            name: "db".into(),
            aliases: vec![],
            ipv4: Some("10.66.0.3".parse().unwrap()),
            ipv6: None,
            host: "a".into(),
            source: NameSource::Local,
        })
        .unwrap();
    table
}

fn ask(name: &str, kind: RecordType) -> LocalAnswer {
    let query = Query::query(Name::from_ascii(name).unwrap(), kind);
    zone().answer(&table(), &query)
}

fn data(answer: LocalAnswer) -> Vec<String> {
    match answer {
        LocalAnswer::Records(records) => records.iter().map(|r| r.data.to_string()).collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

#[test]
fn names_and_aliases_answer_bare_and_under_the_search_domain_in_any_case() {
    assert_eq!(data(ask("web.", RecordType::A)), ["10.66.0.2"]);
    assert_eq!(
        data(ask("WeB.Weft.Internal.", RecordType::A)),
        ["10.66.0.2"]
    );
    assert_eq!(
        data(ask("www.weft.internal.", RecordType::AAAA)),
        ["fd66::2"]
    );
    assert_eq!(data(ask("api.v2.", RecordType::A)), ["10.66.0.2"]);
    assert_eq!(data(ask("db.weft.internal.", RecordType::A)), ["10.66.0.3"]);
    // The owner name is the name as asked (clients may randomise its case).
    let LocalAnswer::Records(records) = ask("WeB.", RecordType::A) else {
        panic!()
    };
    assert_eq!(records[0].name.to_ascii(), "WeB.");
    assert_eq!(records[0].ttl, LOCAL_TTL);
}

#[test]
fn a_known_name_without_that_type_is_nodata_and_unknown_is_nxdomain() {
    assert_eq!(data(ask("db.", RecordType::AAAA)), Vec::<String>::new());
    assert_eq!(data(ask("web.", RecordType::MX)), Vec::<String>::new());
    assert_eq!(
        ask("nobody.weft.internal.", RecordType::A),
        LocalAnswer::NxDomain
    );
    assert_eq!(
        ask("a.b.c.weft.internal.", RecordType::A),
        LocalAnswer::NxDomain
    );
    // The apex and an empty non-terminal ("v2" under "api.v2") exist.
    assert_eq!(
        data(ask("weft.internal.", RecordType::A)),
        Vec::<String>::new()
    );
    assert_eq!(
        data(ask("v2.weft.internal.", RecordType::A)),
        Vec::<String>::new()
    );
    // Bare names not ours and names outside the domain are forwarded.
    assert_eq!(ask("nobody.", RecordType::A), LocalAnswer::NotOurs);
    assert_eq!(ask("example.org.", RecordType::A), LocalAnswer::NotOurs);
}

#[test]
fn ptr_answers_the_qualified_name_inside_the_subnets_and_forwards_the_rest() {
    assert_eq!(
        data(ask("2.0.66.10.in-addr.arpa.", RecordType::PTR)),
        ["web.weft.internal."]
    );
    let v6 = Name::from("fd66::2".parse::<IpAddr>().unwrap()).to_ascii();
    assert!(v6.ends_with("6.6.d.f.ip6.arpa."), "{v6}");
    assert_eq!(data(ask(&v6, RecordType::PTR)), ["web.weft.internal."]);
    assert_eq!(
        ask("9.0.66.10.IN-ADDR.ARPA.", RecordType::PTR),
        LocalAnswer::NxDomain
    );
    assert_eq!(
        ask("8.8.8.8.in-addr.arpa.", RecordType::PTR),
        LocalAnswer::NotOurs
    );
    assert_eq!(
        ask("66.10.in-addr.arpa.", RecordType::PTR),
        LocalAnswer::NotOurs
    );
    assert_eq!(
        data(ask("2.0.66.10.in-addr.arpa.", RecordType::A)),
        Vec::<String>::new()
    );
}

#[test]
fn a_bad_search_domain_is_refused() {
    for bad in ["", "a..b", "we ft", "x.arpa", &"a".repeat(63)] {
        assert!(Zone::new(bad, vec![]).is_err(), "{bad:?}");
    }
    assert_eq!(
        Zone::new("Cluster.Local.", vec![])
            .unwrap()
            .domain()
            .to_ascii(),
        "cluster.local."
    );
}

#[test]
fn a_label_holding_a_dot_or_bytes_outside_ascii_matches_no_name() {
    let ask_labels = |labels: &[&[u8]]| {
        let name = Name::from_labels(labels.iter().copied()).unwrap();
        zone().answer(&table(), &Query::query(name, RecordType::A))
    };
    // One label "api.v2" is not the two labels of the alias api.v2.
    assert_eq!(ask_labels(&[b"api.v2"]), LocalAnswer::NotOurs);
    assert_eq!(
        ask_labels(&[b"api.v2", b"weft", b"internal"]),
        LocalAnswer::NxDomain
    );
    assert_eq!(ask_labels(&[b"w\xc3\xa9b"]), LocalAnswer::NotOurs);
    assert_eq!(
        ask_labels(&[b"w\xffb", b"WEFT", b"internal"]),
        LocalAnswer::NxDomain
    );
    // Built the same way, a plain name is found.
    assert_eq!(
        data(ask_labels(&[b"API", b"v2", b"weft", b"internal"])),
        ["10.66.0.2"]
    );
}
