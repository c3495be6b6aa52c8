//! `PortMapping` from each edge (text, JSON), `PublishedPort` checks.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parses_the_user_syntax() {
    let p = PublishedPort::parse("8080:80", ip("10.9.0.3")).unwrap();
    assert_eq!(p.protocol, Protocol::Tcp);
    assert_eq!(p.host_ip, None);
    assert_eq!(p.host_ports, PortRange::single(8080));
    assert_eq!(p.container_ports, PortRange::single(80));
    assert_eq!(p.to_string(), "*:8080->10.9.0.3:80/tcp");

    let p = PublishedPort::parse("198.18.0.1:8000-8002:80-82/UDP", ip("10.9.0.3")).unwrap();
    assert_eq!(p.protocol, Protocol::Udp);
    assert_eq!(p.host_ip, Some(ip("198.18.0.1")));
    assert_eq!(
        p.host_ports,
        PortRange {
            start: 8000,
            end: 8002
        }
    );
    assert_eq!(p.to_string(), "198.18.0.1:8000-8002->10.9.0.3:80-82/udp");
    let forwards: Vec<(u16, u16)> = p
        .forwards()
        .map(|f| (f.host_port, f.container_port))
        .collect();
    assert_eq!(forwards, [(8000, 80), (8001, 81), (8002, 82)]);

    let p = PublishedPort::parse("[fd00::1]:5353:53/sctp", ip("fd00:9::3")).unwrap();
    assert_eq!(p.host_ip, Some(ip("fd00::1")));
    assert_eq!(p.protocol, Protocol::Sctp);
    assert_eq!(p.to_string(), "[fd00::1]:5353->[fd00:9::3]:53/sctp");

    // 0.0.0.0 means every address.
    let p = PublishedPort::parse("0.0.0.0:80:80", ip("10.9.0.3")).unwrap();
    assert_eq!(p.host_ip, None);
}

#[test]
fn specs_print_as_they_parse() {
    for text in [
        "8080:80/tcp",
        "127.0.0.1:8000-8002:80-82/udp",
        "[fd00::1]:53:53/sctp",
    ] {
        let spec: PortMapping = text.parse().unwrap();
        assert_eq!(spec.to_string(), text);
        assert_eq!(spec.to_string().parse::<PortMapping>().unwrap(), spec);
    }
}

#[test]
fn bad_specs_say_what_is_wrong() {
    let err = |s: &str| s.parse::<PortMapping>().unwrap_err().to_string();
    assert!(
        err("8000-8002:80-81").contains("must be the same length"),
        "{}",
        err("8000-8002:80-81")
    );
    assert!(err("0:80").contains("port 0"), "{}", err("0:80"));
    assert!(
        err("8080:0").contains("container port: port 0"),
        "{}",
        err("8080:0")
    );
    assert!(
        err("8080:80/icmp").contains("unknown protocol \"icmp\""),
        "{}",
        err("8080:80/icmp")
    );
    assert!(
        err("8080").contains("expected [hostip:]"),
        "{}",
        err("8080")
    );
    assert!(
        err("70000:80").contains("not a port number"),
        "{}",
        err("70000:80")
    );
    assert!(
        err("8002-8000:80-82").contains("ends before it starts"),
        "{}",
        err("8002-8000:80-82")
    );
    assert!(
        err("fd00::1:80:80").contains("brackets"),
        "{}",
        err("fd00::1:80:80")
    );
    assert!(
        err("[fd00::1:80:80").contains("missing ']'"),
        "{}",
        err("[fd00::1:80:80")
    );
    assert!(
        err("300.1.1.1:80:80").contains("not an IP address"),
        "{}",
        err("300.1.1.1:80:80")
    );
    let e = PublishedPort::parse("[fd00::1]:80:80", ip("10.9.0.3"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("different IP versions"), "{e}");
    assert!(e.starts_with("invalid published port"), "{e}");
}

#[test]
fn struct_literals_are_validated_too() {
    let p = PublishedPort {
        protocol: Protocol::Tcp,
        host_ip: None,
        host_ports: PortRange {
            start: 8000,
            end: 8002,
        },
        container_ip: ip("10.9.0.3"),
        container_ports: PortRange::single(80),
    };
    let e = p.validate().unwrap_err().to_string();
    assert!(e.contains("must be the same length"), "{e}");
    assert!(validate_all(&[p]).is_err());
}

#[test]
fn serde_round_trip() {
    let p = PublishedPort::parse("198.18.0.1:8000-8002:80-82/udp", ip("10.9.0.3")).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"protocol":"udp","host_ip":"198.18.0.1","host_ports":{"start":8000,"end":8002},"container_ip":"10.9.0.3","container_ports":{"start":80,"end":82}}"#
    );
    assert_eq!(serde_json::from_str::<PublishedPort>(&json).unwrap(), p);
    let any: PublishedPort = serde_json::from_str(
        r#"{"protocol":"sctp","host_ports":{"start":9,"end":9},"container_ip":"10.9.0.3","container_ports":{"start":9,"end":9}}"#,
    )
    .unwrap();
    assert_eq!(any.host_ip, None);
}

#[test]
fn the_api_json_takes_objects_and_the_older_strings() {
    let from = |v: serde_json::Value| serde_json::from_value::<PortMapping>(v);
    let typed = from(serde_json::json!({
        "protocol": "udp",
        "host_ip": "198.18.0.1",
        "host_ports": {"start": 8000, "end": 8002},
        "container_ports": {"start": 80, "end": 82}
    }))
    .unwrap();
    let text: PortMapping = "198.18.0.1:8000-8002:80-82/udp".parse().unwrap();
    assert_eq!(typed, text);
    assert_eq!(
        from(serde_json::json!("198.18.0.1:8000-8002:80-82/udp")).unwrap(),
        text
    );
    // Typed out, and back in unchanged.
    let json = serde_json::to_value(text).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "protocol": "udp",
            "host_ip": "198.18.0.1",
            "host_ports": {"start": 8000, "end": 8002},
            "container_ports": {"start": 80, "end": 82}
        })
    );
    assert_eq!(from(json).unwrap(), text);
    // The protocol defaults to tcp, the host address to every address.
    let plain = from(serde_json::json!({
        "host_ports": {"start": 8080, "end": 8080},
        "container_ports": {"start": 80, "end": 80}
    }))
    .unwrap();
    assert_eq!(plain, "8080:80".parse().unwrap());
}

#[test]
fn bad_api_json_says_what_is_wrong() {
    let err = |v: serde_json::Value| {
        serde_json::from_value::<PortMapping>(v)
            .unwrap_err()
            .to_string()
    };
    let object = |host: serde_json::Value,
                  container: serde_json::Value,
                  extra: (&str, serde_json::Value)| {
        let mut o = serde_json::json!({"host_ports": host, "container_ports": container});
        o[extra.0] = extra.1;
        o
    };
    let one = |p: u64| serde_json::json!({"start": p, "end": p});
    let range = |a: u64, b: u64| serde_json::json!({"start": a, "end": b});
    let e = err(object(one(0), one(80), ("protocol", "tcp".into())));
    assert!(e.contains("host port: port 0 cannot be published"), "{e}");
    let e = err(object(one(70000), one(80), ("protocol", "tcp".into())));
    assert!(e.contains("70000") && e.contains("u16"), "{e}");
    let e = err(object(
        range(8002, 8000),
        range(80, 82),
        ("protocol", "tcp".into()),
    ));
    assert!(e.contains("ends before it starts"), "{e}");
    let e = err(object(
        range(8000, 8002),
        range(80, 81),
        ("protocol", "tcp".into()),
    ));
    assert!(e.contains("must be the same length"), "{e}");
    let e = err(object(one(80), one(80), ("protocol", "icmp".into())));
    assert!(e.contains("unknown variant `icmp`"), "{e}");
    let e = err(object(one(80), one(80), ("host_ip", "300.1.1.1".into())));
    assert!(e.contains("invalid IP address syntax"), "{e}");
    let e = err(object(one(80), one(80), ("hostPort", 80.into())));
    assert!(e.contains("unknown field `hostPort`"), "{e}");
    assert!(e.starts_with("invalid port mapping"), "{e}");
    let e = err(serde_json::json!("8080:80/icmp"));
    assert!(e.contains("unknown protocol \"icmp\""), "{e}");
    let e = err(serde_json::json!(8080));
    assert!(e.contains("expected an object or a"), "{e}");
}

#[test]
fn the_cli_text_refuses_each_kind_of_bad_input() {
    let err = |s: &str| s.parse::<PortMapping>().unwrap_err().to_string();
    for (text, says) in [
        ("0:80", "host port: port 0 cannot be published"),
        ("70000:80", "\"70000\" is not a port number (1-65535)"),
        ("8002-8000:80-82", "range 8002-8000 ends before it starts"),
        ("8000-8002:80-81", "must be the same length"),
        (
            "8080:80/icmp",
            "unknown protocol \"icmp\": expected tcp, udp or sctp",
        ),
        ("1.2.3:80:80", "\"1.2.3\" is not an IP address"),
        ("[fd00::zz]:80:80", "\"fd00::zz\" is not an IPv6 address"),
    ] {
        let e = err(text);
        assert!(e.contains(says), "{text}: {e}");
        assert!(
            e.starts_with(&format!("invalid port mapping {text:?}")),
            "{e}"
        );
    }
}
