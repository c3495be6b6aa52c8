//! NetConf::parse: what it takes, and the code of each refusal.

use super::*;
use serde_json::json;

fn parse(v: Value) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes())
}

fn base() -> Value {
    json!({"cniVersion": "1.1.0", "name": "net1", "type": "weft"})
}

fn with(key: &str, value: Value) -> Value {
    let mut v = base();
    v[key] = value;
    v
}

#[test]
fn a_reference_bridge_config_is_read() {
    let conf = parse(json!({
        "cniVersion": "1.0.0",
        "name": "podman",
        "type": "weft",
        "bridge": "cni-podman0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "mtu": 1450,
        "capabilities": {"portMappings": true},
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]},
        "runtimeConfig": {
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "mac": "02:00:00:00:00:09",
            "ipRanges": [[{"subnet": "10.89.0.0/24", "rangeStart": "10.89.0.10"}]],
            "bandwidth": {"ingressRate": 1000, "ingressBurst": 10},
            "dns": {"servers": ["1.1.1.1"]},
            "aliases": {"podman": ["web"]},
            "someFutureCapability": 1
        }
    }))
    .unwrap();
    assert_eq!(conf.version(), Version::V1_0_0);
    assert_eq!(conf.bridge_name(), "cni-podman0");
    assert!(conf.is_gateway && conf.ip_masq && conf.hairpin_mode);
    assert_eq!(conf.mtu, Some(1450));
    assert_eq!(conf.ipam_delegate(), Some("host-local"));
    assert!(conf.ipam.as_ref().unwrap().settings.contains_key("ranges"));
    let rc = &conf.runtime_config;
    assert_eq!(rc.port_mappings[0].host_port, 8080);
    assert_eq!(rc.mac.as_deref(), Some("02:00:00:00:00:09"));
    assert_eq!(
        rc.ip_ranges[0][0].range_start,
        Some("10.89.0.10".parse().unwrap())
    );
    assert_eq!(rc.bandwidth.as_ref().unwrap().ingress_rate, 1000);
    assert_eq!(rc.dns.as_ref().unwrap().servers, ["1.1.1.1"]);
    assert!(rc.aliases.is_some());
    assert_eq!(conf.mode, Mode::Auto);
}

#[test]
fn defaults() {
    let conf = parse(base()).unwrap();
    assert_eq!(conf.bridge_name(), DEFAULT_BRIDGE);
    assert_eq!(conf.ipam_delegate(), None);
    assert!(!conf.is_gateway);
    let conf = parse(with(
        "ipam",
        json!({"type": "weft", "subnet": "10.90.0.0/24"}),
    ))
    .unwrap();
    assert_eq!(conf.ipam_delegate(), None);
}

#[test]
fn modes() {
    assert_eq!(
        parse(with("mode", json!("standalone"))).unwrap().mode,
        Mode::Standalone
    );
    assert_eq!(
        parse(with("mode", json!("daemon"))).unwrap().mode,
        Mode::Daemon
    );
    assert_eq!(
        parse(with("mode", json!("sometimes")))
            .unwrap_err()
            .code
            .number(),
        7
    );
}

#[test]
fn malformed_json_is_code_6() {
    for bad in ["", "{", "[1,2]", "{\"cniVersion\": 1.0}", "nul"] {
        let e = NetConf::parse(bad.as_bytes()).unwrap_err();
        assert_eq!(e.code.number(), 6, "{bad:?}: {e}");
    }
}

#[test]
fn version_problems_are_code_1() {
    assert_eq!(
        parse(json!({"name": "n", "type": "weft"}))
            .unwrap_err()
            .code
            .number(),
        1
    );
    assert_eq!(
        parse(with("cniVersion", json!("0.2.0")))
            .unwrap_err()
            .code
            .number(),
        1
    );
}

#[test]
fn unknown_top_level_fields_are_code_2_naming_key_and_value() {
    let e = parse(with("isgateway", json!(true))).unwrap_err();
    assert_eq!(e.code.number(), 2);
    assert!(e.msg.contains("isgateway=true"), "{}", e.msg);
    // Reserved protocol keys and well-known keys pass.
    let mut v = base();
    v["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    v["cni.dev/something-newer"] = json!(1);
    v["disableCheck"] = json!(true);
    v["dns"] = json!({"nameservers": ["10.0.0.1"]});
    let conf = parse(v).unwrap();
    assert_eq!(
        conf.valid_attachments.unwrap(),
        [Attachment {
            container_id: "a".into(),
            ifname: "eth0".into()
        }]
    );
}

#[test]
fn invalid_values_are_code_7() {
    for v in [
        with("name", json!("")),
        with("name", json!("-net")),
        with("name", json!("a/b")),
        with("bridge", json!("a-bridge-name-over-15")),
        with("mtu", json!(20)),
        with("vlan", json!(5000)),
        with("ipam", json!({"type": "../evil"})),
    ] {
        assert_eq!(parse(v.clone()).unwrap_err().code.number(), 7, "{v}");
    }
    let mut both = base();
    both["hairpinMode"] = json!(true);
    both["promiscMode"] = json!(true);
    assert_eq!(parse(both).unwrap_err().code.number(), 7);
    let mut missing = base();
    missing.as_object_mut().unwrap().remove("name");
    assert_eq!(parse(missing).unwrap_err().code.number(), 7);
}

#[test]
fn a_broken_prev_result_is_code_6() {
    let v = with("prevResult", json!({"ips": [{"address": "nope"}]}));
    assert_eq!(parse(v).unwrap_err().code.number(), 6);
    let ok = with(
        "prevResult",
        json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.2/24"}]}),
    );
    assert!(parse(ok).unwrap().prev_result.is_some());
}

#[test]
fn requested_addresses_by_precedence() {
    let mut v = base();
    v["args"] = json!({"cni": {"ips": ["10.0.0.7"]}});
    let conf = parse(v.clone()).unwrap();
    assert_eq!(conf.requested_ips(Some("10.0.0.9")), ["10.0.0.7"]);
    v["runtimeConfig"] = json!({"ips": ["10.0.0.8/24"]});
    assert_eq!(parse(v).unwrap().requested_ips(None), ["10.0.0.8/24"]);
    assert_eq!(
        parse(base())
            .unwrap()
            .requested_ips(Some("10.0.0.9,fd00::9")),
        ["10.0.0.9", "fd00::9"]
    );
}

/// Code 7 whose message names `field` and shows `value`.
fn refused_naming(v: Value, field: &str, shown_value: &str) {
    let e = parse(v.clone()).unwrap_err();
    assert_eq!(e.code.number(), 7, "{v}: {e}");
    let text = e.to_string();
    assert!(
        text.contains(field) && text.contains(shown_value),
        "{v}: message names neither {field} nor {shown_value}: {text}"
    );
}

#[test]
fn wrong_typed_fields_are_code_7_naming_field_and_value() {
    for (key, value, shown) in [
        ("capabilities", json!(1), "1"),
        ("capabilities", json!(["portMappings"]), "portMappings"),
        (
            "capabilities",
            json!({"portMappings": "yes"}),
            "capabilities.portMappings",
        ),
        ("args", json!("K=V"), "K=V"),
        ("prevResult", json!("10.0.0.2/24"), "10.0.0.2/24"),
        ("prevResult", json!([1]), "[1]"),
        ("runtimeConfig", json!(7), "7"),
        ("mtu", json!("big"), "big"),
        ("isGateway", json!("yes"), "yes"),
        ("mode", json!(3), "3"),
        ("stateDir", json!(null), "null"),
        ("stateDir", json!(7), "7"),
        ("stateDir", json!(["/a"]), "/a"),
        ("socket", json!(false), "false"),
        ("subnet", json!(10), "10"),
        ("subnet", json!("10.0.0.0/33"), "10.0.0.0/33"),
        ("subnet6", json!(null), "null"),
        ("dns", json!("1.1.1.1"), "1.1.1.1"),
        (
            "cni.dev/valid-attachments",
            json!({"a": 1}),
            "cni.dev/valid-attachments",
        ),
    ] {
        refused_naming(with(key, value), key, shown);
    }
    for (args, shown) in [
        (json!({"cni": "x"}), "args.cni"),
        (json!({"cni": {"ips": "10.0.0.7"}}), "args.cni.ips"),
        (json!({"cni": {"ips": [7]}}), "args.cni.ips"),
    ] {
        refused_naming(with("args", args), shown, shown);
    }
    for (ipam, field, shown) in [
        (json!("weft"), "ipam", "weft"),
        (json!({"type": 1}), "ipam.type", "1"),
        (json!({"subnet": 10}), "ipam.subnet", "10"),
        (
            json!({"subnet": ["10.0.0.0/8"]}),
            "ipam.subnet",
            "10.0.0.0/8",
        ),
        (json!({"rangeStart": true}), "ipam.rangeStart", "true"),
        (
            json!({"type": "host-local", "ranges": {"subnet": "10.1.0.0/24"}}),
            "ipam.ranges",
            "10.1.0.0/24",
        ),
    ] {
        refused_naming(with("ipam", ipam), field, shown);
    }
    refused_naming(
        with("runtimeConfig", json!({"ipRanges": [[{"subnet": 5}]]})),
        "runtimeConfig.ipRanges[0][0].subnet",
        "5",
    );
    refused_naming(
        with("runtimeConfig", json!({"portMappings": {"hostPort": 80}})),
        "runtimeConfig",
        "hostPort",
    );
}

#[test]
fn a_state_dir_is_an_absolute_path() {
    refused_naming(with("stateDir", json!("")), "stateDir", "\"\"");
    refused_naming(
        with("stateDir", json!("var/lib/x")),
        "stateDir",
        "var/lib/x",
    );
    let conf = parse(with("stateDir", json!("/var/lib/weft-test"))).unwrap();
    assert_eq!(conf.state_dir, Some(PathBuf::from("/var/lib/weft-test")));
}

#[test]
fn null_is_absent_for_spec_and_bridge_fields() {
    let mut v = base();
    for key in [
        "args",
        "prevResult",
        "capabilities",
        "dns",
        "ipam",
        "mtu",
        "bridge",
    ] {
        v[key] = Value::Null;
    }
    let conf = parse(v).unwrap();
    assert_eq!((conf.mtu, conf.ipam, conf.args), (None, None, None));
}

#[test]
fn special_subnets_are_code_7_wherever_given() {
    let bad = [
        "127.0.0.0/8",
        "0.0.0.0/0",
        "224.0.0.0/24",
        "169.254.0.0/16",
        "0.0.0.0/8",
    ];
    let bad6 = ["::1/128", "::/0", "ff02::/16", "fe80::/64", "::/96"];
    for s in bad {
        refused_naming(with("subnet", json!(s)), "subnet", s);
        refused_naming(
            with("ipam", json!({"type": "weft", "subnet": s})),
            "ipam.subnet",
            s,
        );
        refused_naming(
            with(
                "ipam",
                json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": s}]]}),
            ),
            "ipam.ranges[0][1].subnet",
            s,
        );
        refused_naming(
            with("runtimeConfig", json!({"ipRanges": [[{"subnet": s}]]})),
            "runtimeConfig.ipRanges[0][0].subnet",
            s,
        );
    }
    for s in bad6 {
        refused_naming(with("subnet6", json!(s)), "subnet6", s);
        refused_naming(
            with(
                "ipam",
                json!({"type": "host-local", "ranges": [[{"subnet": s}]]}),
            ),
            "ipam.ranges[0][0].subnet",
            s,
        );
    }
    let mut ok = base();
    ok["subnet"] = json!("10.66.0.0/16");
    ok["subnet6"] = json!("fd66::/64");
    parse(ok).unwrap();
}

#[test]
fn long_values_are_cut_in_messages() {
    let e = parse(with("stateDir", json!(vec![1; 500]))).unwrap_err();
    assert_eq!(e.code.number(), 7);
    assert!(e.to_string().len() < 400, "{}", e.to_string().len());
}
