//! CNI conformance: the language-independent runner in tests/cni/ execs a
//! plugin binary through every point of the spec and of weft's checklist.
//!
//! It runs against the reference `bridge` plugin with `host-local` IPAM
//! (Debian's containernetworking-plugins, /usr/lib/cni) and against `weft`.
//! Where the reference deviates from the spec, the deviation is listed in
//! [`REFERENCE_DEVIATIONS`] and printed, not hidden: the reference test fails
//! when a check outside the table fails, and also when a listed deviation no
//! longer occurs (so the table stays true).
//!
//! `CNI_CHECK=<part of a name>` runs only matching checks; `CNI_CHECK=protocol`
//! the ones needing no working ADD, `CNI_CHECK=network` the others.

mod cni;

use std::collections::BTreeMap;
use std::path::PathBuf;

use cni::{run_suite, Outcome};
use world::require_root;

/// How the reference plugins (containernetworking-plugins 1.1.1, Debian 12)
/// deviate from SPEC.md 1.1.0, check by check.
const REFERENCE_DEVIATIONS: &[(&str, &str)] = &[
    (
        "version/answers-each-version",
        "VERSION always answers cniVersion 1.0.0 instead of echoing the version asked \
         for, and supportedVersions stops at 1.0.0 (no 1.1.0)",
    ),
    (
        "env/no-command-is-code-4",
        "without CNI_COMMAND libcni's skel prints an 'about' line and exits 0 instead of \
         error code 4 naming CNI_COMMAND",
    ),
    (
        "env/gc-without-CNI_PATH-is-code-4",
        "GC is unknown to 1.1.1: it asks for CNI_CONTAINERID (code 3) instead of CNI_PATH",
    ),
    (
        "error/result-carries-cniVersion",
        "error results carry only code and msg, no cniVersion (SPEC.md section 5, Error)",
    ),
    (
        "lifecycle/1.1.0",
        "spec 1.1.0 is not spoken: ADD with cniVersion 1.1.0 is error code 1",
    ),
    (
        "gc/releases-all-but-valid-attachments",
        "no GC (spec 1.1.0): stale host-local reservations stay until DEL",
    ),
    (
        "status/ready-is-exit-0",
        "STATUS is unknown to 1.1.1: it asks for CNI_CONTAINERID (code 3)",
    ),
];

fn report(subject: &str, outcomes: &[Outcome], deviations: &[(&str, &str)]) -> Vec<String> {
    let known: BTreeMap<&str, &str> = deviations.iter().copied().collect();
    let mut problems = Vec::new();
    eprintln!("\n{subject}: {} checks", outcomes.len());
    eprintln!("| check | outcome |\n|---|---|");
    for o in outcomes {
        let line = match (&o.result, known.get(o.name.as_str())) {
            (Ok(()), None) => "pass".to_string(),
            (Err(e), Some(why)) => format!("known deviation: {why} ({e})"),
            (Err(e), None) => {
                problems.push(format!("{}: {e}", o.name));
                format!("FAIL: {e}")
            }
            (Ok(()), Some(_)) => {
                problems.push(format!("{}: listed as a deviation but passes", o.name));
                "pass, but listed as a deviation: update the table".to_string()
            }
        };
        eprintln!("| {} | {line} |", o.name);
    }
    problems
}

#[tokio::test]
async fn reference_bridge_plugin_against_the_spec() {
    require_root!();
    let subject = cni::reference_bridge();
    assert!(
        subject.plugin.exists(),
        "{} missing: apt-get install -y --no-install-recommends containernetworking-plugins",
        subject.plugin.display()
    );
    let filter = std::env::var("CNI_CHECK").unwrap_or_default();
    let outcomes = run_suite(&subject, |c| cni::selected(c, &filter)).await;
    assert!(
        !outcomes.is_empty(),
        "no check matches CNI_CHECK={filter:?}"
    );
    let problems = report(subject.name, &outcomes, REFERENCE_DEVIATIONS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The weft binary: $WEFT_CNI_PLUGIN, else the workspace's build next to this test.
fn weft_binary() -> PathBuf {
    match std::env::var_os("WEFT_CNI_PLUGIN") {
        Some(path) => PathBuf::from(path),
        None => world::workspace_bin("weft"),
    }
}

/// weft (standalone mode, host-local IPAM) against every check.
#[tokio::test]
async fn weft_against_the_spec() {
    require_root!();
    weft_subject_passes(cni::weft(weft_plugin())).await;
}

/// weft with its built-in IPAM against every check.
#[tokio::test]
async fn weft_builtin_ipam_against_the_spec() {
    require_root!();
    weft_subject_passes(cni::weft_builtin(weft_plugin())).await;
}

fn weft_plugin() -> PathBuf {
    let plugin = weft_binary();
    assert!(
        plugin.exists(),
        "{} missing: build it first (cargo build -p cni-plugin) or set WEFT_CNI_PLUGIN",
        plugin.display()
    );
    plugin
}

async fn weft_subject_passes(subject: cni::Subject) {
    let filter = std::env::var("CNI_CHECK").unwrap_or_default();
    let outcomes = run_suite(&subject, |c| cni::selected(c, &filter)).await;
    assert!(
        !outcomes.is_empty(),
        "no check matches CNI_CHECK={filter:?}"
    );
    let problems = report(subject.name, &outcomes, &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
