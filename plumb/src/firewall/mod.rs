//! Generic access to the kernel's packet filter, knowing no table, chain or
//! set of anyone's: what to put there is the caller's policy (netd's
//! `ports::firewall` for weft).
//!
//! - [`nft_netlink`]: set and map elements changed over netfilter netlink in
//!   one batch (one transaction), with typed fields ([`nft_netlink::Field`]);
//!   the element's nft text ([`nft_netlink::SetElement`]'s `Display`) comes
//!   from the same fields.
//! - [`run_nft`]: an `nft -f -` script as one transaction, through
//!   libnftables in-process when it is installed ([`libnft`]), else the
//!   `nft` binary.
//! - [`iptables`]: `iptables-save` / `iptables-restore --noflush` runs.
//! - [`run_tool`]: any of these tools run inside a namespace.
//!
//! Every run is started from a thread that entered the namespace, so the
//! kernel objects it changes are that namespace's.
//!
//! ```no_run
//! # fn demo() -> plumb::Result<()> {
//! use plumb::firewall::nft_netlink::{apply, Change, Field, SetElement};
//! let ns = plumb::Netns::named("host1")?;
//! plumb::firewall::run_nft(
//!     &ns,
//!     "add table inet t\nadd map inet t m { type inet_proto . inet_service : ipv4_addr . inet_service; }\n",
//!     "create map m",
//!     |_| None,
//! )?;
//! let element = SetElement {
//!     set: "m".into(),
//!     key: vec![Field::Proto(6), Field::Port(8080)],
//!     data: vec![Field::Addr("10.88.0.2".parse().unwrap()), Field::Port(80)],
//! };
//! apply(&ns, "t", &[(Change::Add, &element)])?.expect("the kernel takes it");
//! # Ok(()) }
//! ```

pub mod iptables;
mod kept;
pub mod libnft;
pub mod nft_netlink;

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// Gives the kernel's nf_tables cleanup work a moment to start before a
/// short-lived process exits. That work is queued on the CPU that committed;
/// a process that exits first waits in the close of its netfilter socket for
/// the work's grace period. A sleep of 50 µs, only after a transaction.
pub fn settle() {
    if nft_netlink::in_use() || libnft::in_use() {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// What a tool run printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `program args…` inside `netns` with `input` on stdin. The child is
/// forked from a thread that entered the namespace, so it lives there.
/// `action` says what the run is for, in errors.
pub fn run_tool(
    netns: &Netns,
    program: &'static str,
    args: &[&str],
    input: &str,
    action: &str,
) -> Result<ToolOutput> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = netns.run(move || command.spawn())?.map_err(|e| {
        Error::io(
            format!(
                "{action} in namespace {}: run {program} (is it installed?)",
                netns.label()
            ),
            e,
        )
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // The tool reads all of its input before it answers; a failed write shows
    // up as the tool's own error below.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| {
        Error::io(
            format!(
                "{action} in namespace {}: wait for {program}",
                netns.label()
            ),
            e,
        )
    })?;
    Ok(ToolOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `Error::Firewall` for a tool (or libnftables, or the kernel over
/// nfnetlink) that refused a change; `explain` adds what the tool's terse
/// words mean for the caller.
pub fn tool_error(
    netns: &Netns,
    program: &'static str,
    action: &str,
    stderr: &str,
    explain: impl Fn(&str) -> Option<&'static str>,
) -> Error {
    let stderr = stderr.trim();
    let mut message = if stderr.is_empty() {
        "exited with an error and printed nothing".to_string()
    } else {
        stderr.to_string()
    };
    if let Some(hint) = explain(stderr) {
        message.push_str(" — ");
        message.push_str(hint);
    }
    Error::Firewall {
        tool: program,
        action: action.to_string(),
        namespace: netns.label().to_string(),
        message,
    }
}

/// Runs an nft script (what `nft -f -` reads) as one transaction inside
/// `netns`: through libnftables when it is installed and `WEFT_NFT_EXEC=1`
/// is not set, else through the `nft` binary. A refusal becomes
/// `Error::Firewall`, with `explain`'s hint.
pub fn run_nft(
    netns: &Netns,
    script: &str,
    action: &str,
    explain: impl Fn(&str) -> Option<&'static str>,
) -> Result<()> {
    if let Some(outcome) = libnft::run(netns, script) {
        return outcome?.map_err(|stderr| tool_error(netns, "nft", action, &stderr, explain));
    }
    let out = run_tool(netns, "nft", &["-f", "-"], script, action)?;
    if out.success {
        return Ok(());
    }
    Err(tool_error(netns, "nft", action, &out.stderr, explain))
}
