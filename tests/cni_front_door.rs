//! The `weft` binary run by a person (issue 15, item 12): `--help` and
//! `--version` print an about line and exit 0; run bare it says what it is on
//! stderr and still gives a runtime its CNI error; VERSION's answer ends with
//! a newline. No namespace is needed: none of these touches the network.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn weft(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let plugin = match std::env::var_os("WEFT_CNI_PLUGIN") {
        Some(path) => path.into(),
        None => world::workspace_bin("weft"),
    };
    let mut child = Command::new(&plugin)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", plugin.display()));
    let mut input = child.stdin.take().unwrap();
    // The plugin may exit without reading (about, VERSION).
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version_print_the_about_line_and_exit_0() {
    for flag in ["--help", "-h", "--version", "-V"] {
        let out = weft(&[flag], &[], b"");
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{flag}: {:?} {stdout}", out.status);
        assert!(
            stdout.starts_with("weft CNI plugin v")
                && stdout.contains("0.3.0–1.1.0")
                && stdout.contains("docs/cni.md")
                && stdout.ends_with('\n'),
            "{flag}: {stdout:?}"
        );
    }
}

#[test]
fn a_bare_run_says_what_it_is_and_reports_the_missing_command() {
    let out = weft(&[], &[], b"");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("weft CNI plugin v"), "{stderr:?}");
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["code"], 4);
    assert!(
        error["msg"].as_str().unwrap().contains("CNI_COMMAND"),
        "{error}"
    );
}

#[test]
fn a_runtimes_call_ignores_arguments_and_version_ends_with_a_newline() {
    let out = weft(
        &["--help"],
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion": "1.0.0"}"#,
    );
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with("}\n"), "{stdout:?}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["cniVersion"], "1.0.0");
    assert_eq!(answer["supportedVersions"].as_array().unwrap().len(), 5);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}
