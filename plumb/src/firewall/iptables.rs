//! `iptables-save` and `iptables-restore --noflush` (and their ip6tables
//! twins) run inside a namespace. A restore is one transaction (Debian's
//! iptables is the nf_tables flavour): batch many rule changes into one run
//! rather than one `iptables` fork per rule, which also re-reads the whole
//! ruleset each time.

use super::{run_tool, ToolOutput};
use crate::error::{Error, Result};
use crate::netns::Netns;

/// Which of the two tool families: iptables (IPv4) or ip6tables (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// `iptables-save`, `iptables-restore`.
    V4,
    /// `ip6tables-save`, `ip6tables-restore`.
    V6,
}

impl IpFamily {
    /// Both, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: std::net::IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The save tool's name.
    pub fn save_tool(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-save",
            IpFamily::V6 => "ip6tables-save",
        }
    }

    /// The restore tool's name.
    pub fn restore_tool(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        }
    }
}

/// What `iptables-save -t <table>` prints in `netns`.
pub fn save(netns: &Netns, family: IpFamily, table: &str) -> Result<String> {
    let tool = family.save_tool();
    let action = format!("read the {table} table");
    let out = run_tool(netns, tool, &["-t", table], "", &action)?;
    if !out.success {
        return Err(Error::Firewall {
            tool,
            action,
            namespace: netns.label().to_string(),
            message: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Runs `iptables-restore --noflush` with `input` (`*table`, lines,
/// `COMMIT`) in `netns`: all of it or nothing. A refusal names the input
/// line the tool complained about.
pub fn restore(netns: &Netns, family: IpFamily, input: &str, action: &str) -> Result<()> {
    let tool = family.restore_tool();
    tracing::debug!(namespace = netns.label(), "{tool} input:\n{input}");
    let out: ToolOutput = run_tool(netns, tool, &["--noflush"], input, action)?;
    if out.success {
        return Ok(());
    }
    let mut message = out.stderr.trim().to_string();
    if let Some(line) = failed_line(&out.stderr).and_then(|n| input.lines().nth(n - 1)) {
        message.push_str(&format!(" (input line: {line})"));
    }
    Err(Error::Firewall {
        tool,
        action: action.to_string(),
        namespace: netns.label().to_string(),
        message,
    })
}

/// The 1-based input line iptables-restore complains about, if it says.
fn failed_line(stderr: &str) -> Option<usize> {
    for line in stderr.lines() {
        let number = line.strip_prefix("Error occurred at line: ").or_else(|| {
            line.split_once("line ")
                .and_then(|(_, rest)| rest.split_once(" failed").map(|(n, _)| n))
        });
        if let Some(n) = number.and_then(|n| n.trim().parse().ok()) {
            // Lines count from 1: a 0 would point before the input.
            return (n > 0).then_some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_lines_are_found() {
        assert_eq!(
            failed_line("iptables-restore: line 4 failed: No chain"),
            Some(4)
        );
        assert_eq!(failed_line("bad\nError occurred at line: 3\nTry"), Some(3));
        assert_eq!(failed_line("nothing useful"), None);
        assert_eq!(failed_line("line 0 failed"), None);
    }

    #[test]
    fn families_name_their_tools() {
        assert_eq!(IpFamily::of("fd00::1".parse().unwrap()), IpFamily::V6);
        assert_eq!(IpFamily::V4.restore_tool(), "iptables-restore");
        assert_eq!(IpFamily::V6.save_tool(), "ip6tables-save");
    }
}
