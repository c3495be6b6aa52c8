//! `weft`: the CNI plugin binary. Runtimes exec it with CNI_* variables and a
//! network config on stdin; it prints a result or an error on stdout. Run by
//! hand it says what it is ([`cni_plugin::front_door`]).

use std::io::{IsTerminal, Read, Write};

use cni_plugin::commands::{self, Outcome};
use cni_plugin::front_door::{self, Door};
use cni_plugin::CniError;

/// `WEFT_LOG=<filter>` (e.g. `netd=debug`) logs to stderr, which runtimes
/// keep out of the result: netd's attach logs each step's elapsed time.
const LOG_ENV: &str = "WEFT_LOG";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let door = front_door::choose(
        &args,
        std::env::var("CNI_COMMAND").ok().as_deref(),
        std::io::stdin().is_terminal(),
    );
    match door {
        Door::About => {
            println!("{}", front_door::about());
            return;
        }
        Door::AboutThenCni => eprintln!("{}", front_door::about()),
        Door::Cni => {}
    }
    if let Ok(filter) = std::env::var(LOG_ENV) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    tracing::debug!(pid = std::process::id(), "weft started");
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => commands::run(
            std::env::vars().collect(),
            &stdin,
            &cni_plugin::select::backend_for,
        ),
        Err(e) => Outcome {
            stdout: CniError::io("cannot read the network config from stdin", e.to_string())
                .to_json(cni_plugin::version::Version::NEWEST.as_str())
                + "\n",
            exit_code: 1,
        },
    };
    tracing::debug!(exit_code = outcome.exit_code, "weft done");
    plumb::firewall::settle();
    let mut out = std::io::stdout().lock();
    // Nothing to tell anyone if stdout is gone: the exit code still speaks.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
