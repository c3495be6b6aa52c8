//! Bounded fuzzing of the CNI input: the network config on stdin and the
//! CNI_* environment, through the whole protocol layer (`commands::run_with`)
//! with a backend that never touches the kernel.
//!
//! Each seed in tests/corpus/ is replayed as it is, then proptest mutates the
//! seeds (bytes flipped, inserted, cut; a field's value swapped for arbitrary
//! JSON) and draws environments, for a fixed number of cases from a fixed
//! seed, so every run of `cargo test` checks the same inputs. Properties:
//! - nothing panics;
//! - a failure prints one CNI error object — `cniVersion`, a numeric `code`
//!   the spec defines (or 100+), a non-empty `msg` — ending with a newline;
//!   success prints nothing or one JSON object;
//! - the parsers alone: a config error is code 1, 2, 6 or 7, an environment
//!   error code 4; an accepted config names no special subnet.
//!
//! Add an input that once broke something to tests/corpus/ to keep it checked.

use std::path::{Path, PathBuf};

use cni_plugin::backend::{AttachRequest, Backend, CheckRequest, DetachRequest};
use cni_plugin::commands::run_with;
use cni_plugin::env::CniEnv;
use cni_plugin::result::{CniResult, Interface, IpConfig};
use cni_plugin::types::{Attachment, NetConf};
use cni_plugin::CniError;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::Value;

/// Cases per property, and the seed they are drawn from.
const CASES: u32 = 1500;
const SEED: u64 = 0x7765_6674_2d63_6e69;

/// A path standing in for a container's namespace; no real one is entered.
const FAKE_NETNS: &str = "/run/netns/weft-fuzz-container";

fn netns_check(path: &Path) -> Result<PathBuf, CniError> {
    if path == Path::new(FAKE_NETNS) {
        Ok(path.to_path_buf())
    } else {
        cni_plugin::netns::container_netns(path)
    }
}

/// Answers every call without touching anything.
struct Inert;

impl Backend for Inert {
    fn validate(&self, _: &NetConf) -> Result<(), CniError> {
        Ok(())
    }
    fn add(&self, r: &AttachRequest) -> Result<CniResult, CniError> {
        Ok(CniResult {
            interfaces: vec![Interface {
                name: r.ifname.to_string(),
                sandbox: Some(r.netns.display().to_string()),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.66.0.2/16".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            ..Default::default()
        })
    }
    fn del(&self, _: &DetachRequest) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&self, _: &CheckRequest) -> Result<(), CniError> {
        Ok(())
    }
    fn gc(&self, _: &NetConf, _: &[Attachment]) -> Result<Vec<Attachment>, CniError> {
        Ok(Vec::new())
    }
    fn status(&self, _: &NetConf) -> Result<(), CniError> {
        Ok(())
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 10,
        "the corpus has only {} seeds",
        seeds.len()
    );
    seeds
}

const COMMANDS: [&str; 6] = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"];

/// The environment of an ordinary call of `command`. CNI_PATH names no
/// directory, so a delegated IPAM plugin is never found, never run.
fn env_for(command: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "ctr-fuzz"),
        ("CNI_NETNS", FAKE_NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent/weft-fuzz-cni-path"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The codes SPEC.md defines, and the plugin's own (100+).
fn known_code(code: u64) -> bool {
    matches!(code, 1..=7 | 11 | 50 | 51) || code >= 100
}

/// Runs one call and checks what it printed; Err says what is wrong.
fn check_call(vars: Vec<(String, String)>, stdin: &[u8]) -> Result<(), String> {
    let out = std::panic::catch_unwind(|| {
        run_with(
            vars.clone(),
            stdin,
            &|_: &NetConf| Ok(Box::new(Inert) as Box<dyn Backend>),
            &netns_check,
        )
    })
    .map_err(|_| format!("panicked on env {vars:?}"))?;
    if out.exit_code == 0 {
        if out.stdout.is_empty() {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("success printed no JSON ({e}): {:?}", out.stdout))?;
        return match v.is_object() && out.stdout.ends_with('\n') {
            true => Ok(()),
            false => Err(format!("success printed {:?}", out.stdout)),
        };
    }
    if !out.stdout.ends_with('\n') {
        return Err(format!("error without a final newline: {:?}", out.stdout));
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("failure printed no JSON ({e}): {:?}", out.stdout))?;
    let code = v["code"].as_u64().ok_or(format!("no numeric code: {v}"))?;
    if !known_code(code) {
        return Err(format!("code {code} is not one of the spec's: {v}"));
    }
    if !v["cniVersion"].is_string() || v["msg"].as_str().is_none_or(str::is_empty) {
        return Err(format!("error without cniVersion or msg: {v}"));
    }
    Ok(())
}

/// The parsers alone: the codes they may give, and what an accepted config
/// may not hold.
fn check_parsers(stdin: &[u8], vars: &[(String, String)]) -> Result<(), String> {
    match NetConf::parse(stdin) {
        Err(e) if !matches!(e.code.number(), 1 | 2 | 6 | 7) => {
            return Err(format!("config error with code {}: {e}", e.code.number()));
        }
        Err(_) => {}
        Ok(conf) => {
            for net in [conf.subnet, conf.subnet6].into_iter().flatten() {
                cni_plugin::subnet::refuse_special("subnet", net)
                    .map_err(|e| format!("accepted a config with {e}"))?;
            }
        }
    }
    let lookup = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Err(e) = CniEnv::from_lookup(lookup) {
        if e.code.number() != 4 {
            return Err(format!(
                "environment error with code {}: {e}",
                e.code.number()
            ));
        }
    }
    Ok(())
}

fn check_all_commands(stdin: &[u8]) -> Result<(), String> {
    for command in COMMANDS {
        let vars = env_for(command);
        check_call(vars.clone(), stdin).map_err(|e| format!("{command}: {e}"))?;
        check_parsers(stdin, &vars).map_err(|e| format!("{command}: {e}"))?;
    }
    Ok(())
}

#[test]
fn every_corpus_seed_keeps_the_properties() {
    for (name, bytes) in corpus() {
        check_all_commands(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The seeds that are valid configs are accepted (so the mutations below
/// start from inputs that reach the backend), and the bad ones refused.
#[test]
fn the_corpus_holds_good_and_bad_seeds() {
    for (name, bytes) in corpus() {
        let parsed = NetConf::parse(&bytes);
        assert_eq!(
            parsed.is_ok(),
            !name.starts_with("bad-"),
            "{name}: {parsed:?}"
        );
    }
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        prop::sample::select(vec![
            "127.0.0.0/8",
            "0.0.0.0/0",
            "::/0",
            "ff02::/16",
            "fe80::/10",
            "10.0.0.0/33",
            "10.66.0.0/16",
            "fd00::/64",
            "/proc/self/ns/net",
            "",
            "weft",
            "host-local",
            "1.1.0",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Short text from any characters, control characters and NUL included.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

/// The keys weft reads (at every level they occur), and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "cniVersion", "name", "type", "bridge", "mtu", "vlan", "mode", "stateDir", "socket",
            "subnet", "subnet6", "ipam", "ranges", "rangeStart", "rangeEnd", "gateway",
            "runtimeConfig", "portMappings", "hostPort", "containerPort", "protocol", "hostIP",
            "ips", "ipRanges", "mac", "bandwidth", "dns", "capabilities", "args", "cni",
            "prevResult", "interfaces", "address", "interface", "version", "routes", "dst",
            "cni.dev/valid-attachments", "containerID", "ifname", "isGateway", "ipMasq",
        ])
        .prop_map(str::to_string),
        1 => text(),
    ]
}

/// One mutation of a seed's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (
            any::<usize>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..6),
                prop::sample::select(vec![
                    b"\"".to_vec(),
                    b"{".to_vec(),
                    b"}".to_vec(),
                    b"[".to_vec(),
                    b",".to_vec(),
                    b":null".to_vec(),
                    b"\\u0000".to_vec(),
                    b"1e999".to_vec(),
                    b"-0".to_vec(),
                ]),
            ]
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match m {
            Mutation::Flip { at, bits } if n > 0 => bytes[at % n] ^= bits,
            Mutation::Flip { .. } => {}
            Mutation::Insert { at, bytes: new } => {
                let at = at % (n + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Remove { at, len } if n > 0 => {
                let at = at % n;
                bytes.drain(at..(at + len).min(n));
            }
            Mutation::Remove { .. } => {}
            Mutation::Truncate { at } => bytes.truncate(at % (n + 1)),
        }
    }
    bytes
}

/// A seed with the value at a key path replaced (or added).
fn replace_field(seed: &[u8], path: &[String], value: Value) -> Vec<u8> {
    let Ok(mut root) = serde_json::from_slice::<Value>(seed) else {
        return seed.to_vec();
    };
    let mut at = &mut root;
    for (i, key) in path.iter().enumerate() {
        let Value::Object(map) = at else { break };
        if i + 1 == path.len() {
            map.insert(key.clone(), value);
            break;
        }
        at = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    serde_json::to_vec(&root).unwrap()
}

/// An environment drawn around an ordinary call: each variable kept,
/// dropped, emptied or replaced.
fn environment() -> impl Strategy<Value = Vec<(String, String)>> {
    let command = prop_oneof![
        4 => prop::sample::select(COMMANDS.to_vec()).prop_map(str::to_string),
        1 => text(),
    ];
    let netns = prop::sample::select(vec![
        FAKE_NETNS,
        "/proc/self/ns/net",
        "/proc/self/ns/mnt",
        "/proc/self/ns/user",
        "/proc/1/ns/net",
        "/proc/self/status",
        "/run/netns/weft-fuzz-gone",
        "relative/ns",
        "",
    ])
    .prop_map(str::to_string);
    let id = prop_oneof![Just("ctr-fuzz".to_string()), text()];
    let ifname = prop_oneof![Just("eth0".to_string()), text()];
    let args = prop_oneof![
        Just(String::new()),
        Just("IgnoreUnknown=1;IP=10.66.0.9".to_string()),
        text(),
    ];
    (
        command,
        netns,
        id,
        ifname,
        args,
        prop::collection::vec(any::<bool>(), 5),
    )
        .prop_map(|(command, netns, id, ifname, args, keep)| {
            let mut vars = vec![
                ("CNI_COMMAND".to_string(), command),
                ("CNI_NETNS".to_string(), netns),
                ("CNI_CONTAINERID".to_string(), id),
                ("CNI_IFNAME".to_string(), ifname),
                ("CNI_ARGS".to_string(), args),
            ];
            let mut keep = keep.into_iter();
            vars.retain(|_| keep.next().unwrap_or(true));
            vars.push((
                "CNI_PATH".to_string(),
                "/nonexistent/weft-fuzz-cni-path".to_string(),
            ));
            vars
        })
}

fn config() -> Config {
    Config {
        cases: CASES,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_bytes_keep_the_properties(
        seed in prop::sample::select(corpus()),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let bytes = apply(seed.1.clone(), &mutations);
        if let Err(e) = check_all_commands(&bytes) {
            return Err(TestCaseError::fail(format!(
                "{} mutated ({mutations:?}): {e}; input {:?}",
                seed.0,
                String::from_utf8_lossy(&bytes)
            )));
        }
    }

    #[test]
    fn fields_set_to_arbitrary_json_keep_the_properties(
        seed in prop::sample::select(corpus()),
        path in prop::collection::vec(key(), 1..4),
        value in json_value(),
    ) {
        let bytes = replace_field(&seed.1, &path, value);
        if let Err(e) = check_all_commands(&bytes) {
            return Err(TestCaseError::fail(format!(
                "{} with {path:?} replaced: {e}; input {}",
                seed.0,
                String::from_utf8_lossy(&bytes)
            )));
        }
    }

    #[test]
    fn arbitrary_environments_keep_the_properties(
        seed in prop::sample::select(corpus()),
        vars in environment(),
    ) {
        check_call(vars.clone(), &seed.1).map_err(TestCaseError::fail)?;
        check_parsers(&seed.1, &vars).map_err(TestCaseError::fail)?;
    }
}
