//! What the `weft` binary does when a person, not a runtime, runs it.
//!
//! Runtimes exec a CNI plugin with CNI_COMMAND set and no arguments. Run by
//! hand — bare, or with `--help`/`--version` — the reference plugins print an
//! "about" line; weft does the same:
//! - `--help`, `-h`, `--version`, `-V` (first argument) on a terminal or
//!   without CNI_COMMAND: the about line on stdout, exit 0;
//! - no CNI_COMMAND otherwise (e.g. run bare): the about line on stderr, and
//!   on stdout the CNI error (code 4 naming CNI_COMMAND) a runtime expects;
//! - anything else: the CNI protocol; arguments are ignored, as the spec
//!   passes none.

use crate::version::SUPPORTED;

/// The way in [`choose`] picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// Print [`about`] on stdout and exit 0.
    About,
    /// Print [`about`] on stderr, then answer as a CNI plugin (which reports
    /// the missing CNI_COMMAND).
    AboutThenCni,
    /// A runtime's call.
    Cni,
}

/// Picks the way in from the arguments (without the program name), the
/// value of CNI_COMMAND, and whether stdin is a terminal.
pub fn choose(args: &[String], cni_command: Option<&str>, stdin_is_terminal: bool) -> Door {
    let no_command = cni_command.is_none_or(str::is_empty);
    let asks_about = args
        .first()
        .is_some_and(|a| matches!(a.as_str(), "--help" | "-h" | "--version" | "-V"));
    if asks_about && (stdin_is_terminal || no_command) {
        Door::About
    } else if no_command {
        Door::AboutThenCni
    } else {
        Door::Cni
    }
}

/// One line: what this is, its version, the spec versions, where the docs are.
pub fn about() -> String {
    format!(
        "weft CNI plugin v{} — CNI spec versions {}–{}; run by a container runtime with CNI_COMMAND set; see docs/cni.md in the weft repository",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED[0],
        SUPPORTED[SUPPORTED.len() - 1],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn help_and_version_print_the_about_line() {
        for flag in ["--help", "-h", "--version", "-V"] {
            assert_eq!(choose(&args(&[flag]), None, false), Door::About, "{flag}");
            assert_eq!(choose(&args(&[flag]), None, true), Door::About, "{flag}");
            // A person at a terminal with CNI_COMMAND left in the environment.
            assert_eq!(choose(&args(&[flag]), Some("ADD"), true), Door::About);
            // A runtime (stdin a pipe, CNI_COMMAND set): the protocol.
            assert_eq!(choose(&args(&[flag]), Some("ADD"), false), Door::Cni);
        }
    }

    #[test]
    fn bare_runs_say_what_this_is_and_still_answer_cni() {
        assert_eq!(choose(&[], None, true), Door::AboutThenCni);
        assert_eq!(choose(&[], Some(""), false), Door::AboutThenCni);
        assert_eq!(
            choose(&args(&["--frobnicate"]), None, false),
            Door::AboutThenCni
        );
        assert_eq!(choose(&[], Some("VERSION"), true), Door::Cni);
        assert_eq!(choose(&[], Some("ADD"), false), Door::Cni);
    }

    #[test]
    fn the_about_line_names_version_spec_range_and_docs() {
        let line = about();
        assert!(line.starts_with("weft CNI plugin v0.1.0"), "{line}");
        assert!(
            line.contains("0.3.0–1.1.0") && line.contains("docs/cni.md"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
