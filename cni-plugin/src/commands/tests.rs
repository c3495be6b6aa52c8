//! The commands against a recording fake backend: what reaches the backend,
//! what the runtime sees, and the error paths.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::backend::{Addressing, AttachRequest, CheckRequest, DetachRequest};
use crate::error::ErrorCode;
use crate::result::{CniResult, Interface, IpConfig};
use crate::types::Attachment;

#[derive(Default)]
struct Record {
    calls: Vec<String>,
    addressing: Option<Addressing>,
    valid: Vec<Attachment>,
    del_netns: Option<Option<PathBuf>>,
}

/// A backend that records what it is asked and fails where told.
#[derive(Clone, Default)]
struct Fake {
    record: Rc<RefCell<Record>>,
    fail_add: Option<CniError>,
    fail_del: Option<CniError>,
    refuse: Option<CniError>,
    status: Option<CniError>,
}

impl Backend for Fake {
    fn validate(&self, _: &NetConf) -> Result<(), CniError> {
        self.record.borrow_mut().calls.push("validate".into());
        self.refuse.clone().map_or(Ok(()), Err)
    }

    fn add(&self, r: &AttachRequest) -> Result<CniResult, CniError> {
        let mut rec = self.record.borrow_mut();
        rec.calls
            .push(format!("add {} {}", r.container_id, r.ifname));
        rec.addressing = Some(r.addressing.clone());
        if let Some(e) = &self.fail_add {
            return Err(e.clone());
        }
        let address = match &r.addressing {
            Addressing::Delegated(ipam) => ipam.ips[0].address,
            Addressing::Builtin { .. } => "10.88.0.2/16".parse().unwrap(),
        };
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: "weft0".into(),
                    ..Default::default()
                },
                Interface {
                    name: r.ifname.into(),
                    sandbox: Some(r.netns.display().to_string()),
                    mtu: Some(1500),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address,
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            ..Default::default()
        })
    }

    fn del(&self, r: &DetachRequest) -> Result<(), CniError> {
        let mut rec = self.record.borrow_mut();
        rec.calls
            .push(format!("del {} {}", r.container_id, r.ifname));
        rec.del_netns = Some(r.netns.clone());
        self.fail_del.clone().map_or(Ok(()), Err)
    }

    fn check(&self, r: &CheckRequest) -> Result<(), CniError> {
        self.record.borrow_mut().calls.push(format!(
            "check {} {}",
            r.container_id,
            r.prev_result.ips.len()
        ));
        Ok(())
    }

    fn gc(&self, _: &NetConf, valid: &[Attachment]) -> Result<Vec<Attachment>, CniError> {
        let mut rec = self.record.borrow_mut();
        rec.calls.push("gc".into());
        rec.valid = valid.to_vec();
        Ok(Vec::new())
    }

    fn status(&self, _: &NetConf) -> Result<(), CniError> {
        self.record.borrow_mut().calls.push("status".into());
        self.status.clone().map_or(Ok(()), Err)
    }
}

fn vars(command: &str, netns: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "net1", "type": "weft"})
}

/// The CNI_NETNS check, with [`NETNS`] standing in for a container's
/// namespace (a real one needs root to make); every other path goes through
/// the real check.
fn netns_check(path: &Path) -> Result<PathBuf, CniError> {
    if path == Path::new(NETNS) {
        Ok(path.to_path_buf())
    } else {
        crate::netns::container_netns(path)
    }
}

fn call(fake: &Fake, command: &str, netns: &str, config: &Value) -> (Value, i32) {
    let f = fake.clone();
    let out = run_with(
        vars(command, netns),
        config.to_string().as_bytes(),
        &move |_: &NetConf| Ok(Box::new(f.clone()) as Box<dyn Backend>),
        &netns_check,
    );
    let value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out.stdout).unwrap()
    };
    (value, out.exit_code)
}

/// A path standing in for a container's namespace (see [`netns_check`]).
const NETNS: &str = "/run/netns/weft-unit-test-container";

#[test]
fn add_prints_the_result_in_the_version_asked_for() {
    for v in crate::version::SUPPORTED {
        let fake = Fake::default();
        let (out, code) = call(&fake, "ADD", NETNS, &conf(v));
        assert_eq!(code, 0, "{v}: {out}");
        assert_eq!(out["cniVersion"], v);
        assert_eq!(out["ips"][0]["interface"], 1);
        assert_eq!(out["interfaces"][1]["sandbox"], NETNS);
        assert_eq!(out["ips"][0].get("version").is_some(), v.starts_with("0."));
        assert_eq!(out["interfaces"][1].get("mtu").is_some(), v == "1.1.0");
        assert_eq!(fake.record.borrow().calls, ["validate", "add ctr1 eth0"]);
    }
}

#[test]
fn add_passes_requested_addresses_to_builtin_ipam() {
    let fake = Fake::default();
    let mut c = conf("1.0.0");
    c["runtimeConfig"] = json!({"ips": ["10.88.0.9/16"]});
    call(&fake, "ADD", NETNS, &c);
    assert_eq!(
        fake.record.borrow().addressing,
        Some(Addressing::Builtin {
            requested: vec!["10.88.0.9/16".into()]
        })
    );
}

#[test]
fn add_chains_after_a_prev_result() {
    let fake = Fake::default();
    let mut c = conf("1.0.0");
    c["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0", "sandbox": NETNS}],
        "ips": [{"address": "192.168.9.2/24", "interface": 0}]
    });
    let (out, code) = call(&fake, "ADD", NETNS, &c);
    assert_eq!(code, 0);
    assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out["ips"][0]["address"], "192.168.9.2/24");
    assert_eq!(out["ips"][1]["interface"], 2);
}

#[test]
fn add_into_a_missing_netns_is_code_4_before_anything_happens() {
    let fake = Fake::default();
    let (out, code) = call(
        &fake,
        "ADD",
        "/run/netns/does-not-exist-here",
        &conf("1.1.0"),
    );
    assert_eq!(code, 1);
    assert_eq!(out["code"], 4);
    assert!(out["msg"].as_str().unwrap().contains("CNI_NETNS"));
    assert!(fake.record.borrow().calls.is_empty());
}

#[test]
fn the_host_namespace_or_a_handle_of_another_kind_is_code_4_and_touches_nothing() {
    let mut host_handles = vec![
        "/proc/self/ns/net".to_string(),
        format!("/proc/{}/ns/net", std::process::id()),
        "/proc/self/ns/mnt".to_string(),
        "/proc/self/ns/user".to_string(),
        "/proc/self/status".to_string(),
    ];
    if plumb::Netns::kind_check("/proc/1/ns/net").is_ok() {
        host_handles.push("/proc/1/ns/net".into());
    }
    for netns in &host_handles {
        for command in ["ADD", "CHECK"] {
            let fake = Fake::default();
            let mut c = conf("1.1.0");
            c["prevResult"] = json!({"interfaces": [{"name": "eth0", "sandbox": netns}]});
            let (out, code) = call(&fake, command, netns, &c);
            assert_eq!(
                (code, out["code"].as_u64()),
                (1, Some(4)),
                "{command} {netns}: {out}"
            );
            let msg = out["msg"].as_str().unwrap();
            assert!(
                msg.contains("CNI_NETNS") && msg.contains(netns.as_str()),
                "{msg}"
            );
            assert!(fake.record.borrow().calls.is_empty(), "{command} {netns}");
        }
        // DEL still releases by id, but never hands the host's namespace on.
        let fake = Fake::default();
        let (_, code) = call(&fake, "DEL", netns, &conf("1.1.0"));
        assert_eq!(code, 0);
        assert_eq!(fake.record.borrow().del_netns, Some(None), "{netns}");
    }
}

#[test]
fn an_option_the_backend_refuses_is_its_code() {
    let fake = Fake {
        refuse: Some(CniError::unsupported_field("vlan", &json!(7), "no 8021q")),
        ..Default::default()
    };
    let (out, _) = call(&fake, "ADD", NETNS, &conf("1.1.0"));
    assert_eq!(out["code"], 2);
    assert_eq!(out["cniVersion"], "1.1.0");
    assert!(!fake
        .record
        .borrow()
        .calls
        .iter()
        .any(|c| c.starts_with("add")));
}

#[test]
fn backend_failure_is_reported_with_context() {
    let fake = Fake {
        fail_add: Some(CniError::new(
            ErrorCode::TryAgainLater,
            "netd busy",
            "retry",
        )),
        ..Default::default()
    };
    let (out, code) = call(&fake, "ADD", NETNS, &conf("0.4.0"));
    assert_eq!(code, 1);
    assert_eq!(out["code"], 11);
    assert_eq!(out["cniVersion"], "0.4.0");
    assert_eq!(out["msg"], "ADD: netd busy");
}

#[test]
fn del_without_netns_or_with_a_vanished_one_reaches_the_backend_as_none() {
    for netns in ["", "/run/netns/gone-already"] {
        let fake = Fake::default();
        let (_, code) = call(&fake, "DEL", netns, &conf("1.1.0"));
        assert_eq!(code, 0);
        assert_eq!(fake.record.borrow().del_netns, Some(None));
    }
}

#[test]
fn del_errors_are_reported_after_trying_everything() {
    let fake = Fake {
        fail_del: Some(CniError::internal("link busy", "")),
        ..Default::default()
    };
    let mut c = conf("1.1.0");
    c["ipam"] = json!({"type": "no-such-ipam"});
    let (out, code) = call(&fake, "DEL", NETNS, &c);
    assert_eq!(code, 1);
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains("link busy") && msg.contains("no-such-ipam"),
        "{msg}"
    );
}

#[test]
fn check_needs_0_4_0_and_a_prev_result_naming_the_interface() {
    let fake = Fake::default();
    let (out, _) = call(&fake, "CHECK", NETNS, &conf("0.3.1"));
    assert_eq!(out["code"], 1);
    let (out, _) = call(&fake, "CHECK", NETNS, &conf("1.0.0"));
    assert_eq!(out["code"], 7);
    let mut c = conf("1.0.0");
    c["prevResult"] = json!({"interfaces": [{"name": "eth9", "sandbox": NETNS}]});
    let (out, _) = call(&fake, "CHECK", NETNS, &c);
    assert_eq!(out["code"], 7);
    c["prevResult"] = json!({"interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": [{"address": "10.88.0.2/16", "interface": 0}]});
    let (out, code) = call(&fake, "CHECK", NETNS, &c);
    assert_eq!((out, code), (Value::Null, 0));
    assert!(fake.record.borrow().calls.contains(&"check ctr1 1".into()));
}

#[test]
fn gc_hands_over_the_valid_attachments_and_prints_nothing() {
    let fake = Fake::default();
    let mut c = conf("1.1.0");
    c["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let out = run_with(
        vec![
            ("CNI_COMMAND".into(), "GC".into()),
            ("CNI_PATH".into(), "/nonexistent".into()),
        ],
        c.to_string().as_bytes(),
        &|_: &NetConf| Ok(Box::new(fake.clone()) as Box<dyn Backend>),
        &netns_check,
    );
    assert_eq!(
        out,
        Outcome {
            stdout: String::new(),
            exit_code: 0
        }
    );
    assert_eq!(fake.record.borrow().valid[0].container_id, "a");
    let (out, _) = call(&fake, "GC", NETNS, &conf("1.0.0"));
    assert_eq!(out["code"], 1);
}

#[test]
fn status_relays_unavailability() {
    let fake = Fake {
        status: Some(CniError::new(ErrorCode::Unavailable, "netd down", "")),
        ..Default::default()
    };
    let (out, code) = call(&fake, "STATUS", "", &conf("1.1.0"));
    assert_eq!((out["code"].as_u64(), code), (Some(50), 1));
    let (out, code) = call(&Fake::default(), "STATUS", "", &conf("1.1.0"));
    assert_eq!((out, code), (Value::Null, 0));
}

#[test]
fn version_answers_without_a_backend() {
    let out = run(
        vec![("CNI_COMMAND".into(), "VERSION".into())],
        br#"{"cniVersion":"0.3.1"}"#,
        &|_: &NetConf| Err(CniError::internal("no backend", "")),
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "0.3.1");
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
}

#[test]
fn protocol_errors_come_before_the_backend_is_built() {
    let refuse = |_: &NetConf| -> Result<Box<dyn Backend>, CniError> {
        panic!("the backend must not be built for a bad request")
    };
    type Case = (Vec<(String, String)>, &'static [u8], u64);
    let cases: Vec<Case> = vec![
        (vec![], b"{}", 4),
        (
            vars("ADD", NETNS)
                .into_iter()
                .filter(|(k, _)| k != "CNI_IFNAME")
                .collect(),
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#,
            4,
        ),
        (vars("ADD", NETNS), b"{not json", 6),
        (
            vars("ADD", NETNS),
            br#"{"cniVersion":"9.9.9","name":"n","type":"weft"}"#,
            1,
        ),
        (
            vars("ADD", NETNS),
            br#"{"cniVersion":"1.0.0","type":"weft"}"#,
            7,
        ),
        (
            vars("ADD", NETNS),
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft","colour":"red"}"#,
            2,
        ),
    ];
    for (env, stdin, code) in cases {
        let out = run_with(env, stdin, &refuse, &netns_check);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"].as_u64(), Some(code), "{}", out.stdout);
        assert_eq!(out.exit_code, 1);
        assert!(v["cniVersion"].is_string());
    }
}

#[test]
fn every_printed_answer_ends_with_a_newline() {
    let version = run_with(
        vec![("CNI_COMMAND".into(), "VERSION".into())],
        b"",
        &|_: &NetConf| Err(CniError::internal("no backend", "")),
        &netns_check,
    );
    assert!(version.stdout.ends_with("}\n"), "{:?}", version.stdout);
    let error = run_with(vec![], b"", &|_: &NetConf| unreachable!(), &netns_check);
    assert!(error.stdout.ends_with("}\n"), "{:?}", error.stdout);
    let fake = Fake::default();
    let out = run_with(
        vars("ADD", NETNS),
        conf("1.1.0").to_string().as_bytes(),
        &|_: &NetConf| Ok(Box::new(fake.clone()) as Box<dyn Backend>),
        &netns_check,
    );
    assert!(
        out.stdout.ends_with("}\n") && out.exit_code == 0,
        "{:?}",
        out.stdout
    );
}
