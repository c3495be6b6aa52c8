//! The iptables backend's rules, restores and saved-table parsing, as text.

use super::super::iptables_rules::*;
use super::super::iptables_syntax::*;
use super::super::NetworkRules;
use crate::ports::mapping::PublishedPort;
use plumb::firewall::iptables::IpFamily as Family;

fn net() -> NetworkRules {
    NetworkRules {
        bridge: "weft0".into(),
        subnets: vec![
            "10.9.0.0/24".parse().unwrap(),
            "fd00:9::/64".parse().unwrap(),
        ],
        masquerade: true,
        cluster_ranges: vec!["10.9.0.0/16".parse().unwrap()],
    }
}

fn lines(rules: &[Rule]) -> Vec<String> {
    rules.iter().map(Rule::to_string).collect()
}

#[test]
fn rules_render_as_iptables_save_prints_them() {
    assert_eq!(
        lines(&entry_jumps(Family::V4)),
        [
            "-A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT",
            "-A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT",
            "-A POSTROUTING -j WEFT-POSTROUTING",
        ]
    );
    assert_eq!(
        lines(&entry_jumps(Family::V6))[1],
        "-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j WEFT-DNAT"
    );
    assert_eq!(
        lines(&postrouting_rules(&net(), Family::V4)),
        [
            "-A WEFT-POSTROUTING -s 127.0.0.0/8 -m conntrack --ctstate DNAT -j MASQUERADE",
            "-A WEFT-POSTROUTING -s 10.9.0.0/24 -o weft0 -m conntrack --ctstate DNAT -j MASQUERADE",
            "-A WEFT-POSTROUTING -s 10.9.0.0/24 -j WEFT-MASQ",
        ]
    );
    assert_eq!(
        lines(&masq_rules(&net(), Family::V4)),
        [
            "-A WEFT-MASQ -d 10.9.0.0/24 -j RETURN",
            "-A WEFT-MASQ -d 10.9.0.0/16 -j RETURN",
            "-A WEFT-MASQ -j MASQUERADE",
        ]
    );
    assert_eq!(
        lines(&postrouting_rules(&net(), Family::V6)),
        [
            "-A WEFT-POSTROUTING -s fd00:9::/64 -o weft0 -m conntrack --ctstate DNAT -j MASQUERADE",
            "-A WEFT-POSTROUTING -s fd00:9::/64 -j WEFT-MASQ",
        ]
    );
    let no_masq = NetworkRules {
        masquerade: false,
        ..net()
    };
    assert!(masq_rules(&no_masq, Family::V4).is_empty());
    assert_eq!(postrouting_rules(&no_masq, Family::V4).len(), 2);
}

#[test]
fn ports_become_one_dnat_rule_per_host_port() {
    let ports = [
        PublishedPort::parse("198.18.0.1:8000-8001:80-81", "10.9.0.3".parse().unwrap()).unwrap(),
        PublishedPort::parse("[fd00::1]:53:53/udp", "fd00:9::3".parse().unwrap()).unwrap(),
        PublishedPort::parse("9:9/sctp", "10.9.0.4".parse().unwrap()).unwrap(),
    ];
    let v4: Vec<String> = forwards_of(&ports, Family::V4)
        .iter()
        .map(|f| dnat(f).to_string())
        .collect();
    assert_eq!(
        v4,
        [
            "-A WEFT-DNAT -d 198.18.0.1/32 -p tcp -m tcp --dport 8000 -j DNAT --to-destination 10.9.0.3:80",
            "-A WEFT-DNAT -d 198.18.0.1/32 -p tcp -m tcp --dport 8001 -j DNAT --to-destination 10.9.0.3:81",
            "-A WEFT-DNAT -p sctp -m sctp --dport 9 -j DNAT --to-destination 10.9.0.4:9",
        ]
    );
    let v6: Vec<String> = forwards_of(&ports, Family::V6)
        .iter()
        .map(|f| dnat(f).to_string())
        .collect();
    assert_eq!(
        v6,
        ["-A WEFT-DNAT -d fd00::1/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:9::3]:53"]
    );
    assert_eq!(
        dnat(&forwards_of(&ports, Family::V4)[0]).matches_text(),
        "-A WEFT-DNAT -d 198.18.0.1/32 -p tcp -m tcp --dport 8000"
    );
}

#[test]
fn restores_keep_ports_unless_syncing() {
    let empty = NatTable::default();
    let text = network_restore(&net(), Family::V4, &empty, None).render();
    assert!(text.starts_with("*nat\n:WEFT-DNAT - [0:0]\n"), "{text}");
    assert!(
        text.contains("-I PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT\n"),
        "{text}"
    );
    assert!(text.ends_with("COMMIT\n"), "{text}");
    // Once the chain and jumps exist, ensure neither empties WEFT-DNAT nor re-adds jumps.
    let present = NatTable::parse(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:WEFT-DNAT - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
         -A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
         -A POSTROUTING -j WEFT-POSTROUTING\nCOMMIT\n",
    );
    let text = network_restore(&net(), Family::V4, &present, None).render();
    assert!(!text.contains(":WEFT-DNAT"), "{text}");
    assert!(!text.contains("-I "), "{text}");
    let text = network_restore(&net(), Family::V4, &present, Some(&[])).render();
    assert!(text.contains(":WEFT-DNAT - [0:0]"), "{text}");
}

#[test]
fn the_ipv6_output_jump_of_earlier_versions_is_replaced() {
    // That jump also DNATed ::1, which then could not leave the host.
    let present = NatTable::parse(
        "*nat\n:WEFT-DNAT - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
         -A OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT\n\
         -A POSTROUTING -j WEFT-POSTROUTING\nCOMMIT\n",
    );
    let text = network_restore(&net(), Family::V6, &present, None).render();
    assert!(
        text.contains("-I OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j WEFT-DNAT\n"),
        "{text}"
    );
    assert!(
        text.contains("-D OUTPUT -m addrtype --dst-type LOCAL -j WEFT-DNAT\n"),
        "{text}"
    );
    let text = network_restore(&net(), Family::V4, &present, None).render();
    assert!(!text.contains("OUTPUT"), "IPv4 keeps its jump: {text}");
}

#[test]
fn saved_tables_parse() {
    let saved = "# Generated by iptables-save\n*filter\n:FORWARD DROP [0:0]\n-A FORWARD -j X\nCOMMIT\n\
                 *nat\n:PREROUTING ACCEPT [0:0]\n:WEFT-DNAT - [0:0]\n-A WEFT-DNAT -p udp -m udp --dport 53 -j DNAT --to-destination 10.9.0.3:53\nCOMMIT\n";
    let table = NatTable::parse(saved);
    assert!(table.chains.contains("WEFT-DNAT"));
    assert!(!table.chains.contains("FORWARD"));
    assert_eq!(table.rules.len(), 1);
    assert_eq!(table.rules_of(DNAT_CHAIN).len(), 1);
}
