//! `netd recover`

use super::print_json;
use crate::config::{Config, ConfigArgs};
use crate::error::{Error, KernelContext, Result};
use crate::state::Store;

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Show what would be adopted and dropped; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Clear the list of links an earlier recovery left alone (netd then
    /// deletes them as stale links at its next reconciliation); nothing else.
    #[arg(long, conflicts_with = "dry_run")]
    pub forget_left_alone: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RecoverArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let host = match &config.netns {
        Some(spec) => plumb::Netns::resolve(spec)
            .ctx(|| format!("open the namespace netd manages ({spec}, from --netns)"))?,
        None => plumb::Netns::current().ctx(|| "open netd's own network namespace")?,
    };
    // A running netd would go on from its own copy of the state, and
    // attaches meanwhile would race the new files.
    if !args.dry_run && std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
        return Err(Error::InvalidInput(format!(
            "netd is running (it answers on {}): stop it first (systemctl stop weft-netd), then run netd recover",
            config.socket.display()
        )));
    }
    if args.forget_left_alone {
        let forgotten = crate::quarantine::Quarantine::forget(&config.state_dir)?;
        for link in &forgotten.links {
            println!(
                "forgot {} (container {}): netd deletes it at its next reconciliation",
                link.host_ifname, link.id
            );
        }
        if forgotten.links.is_empty() {
            println!("no links were left alone");
        }
        return Ok(());
    }
    let store = Store::open(&config.state_dir)?;
    let report = crate::recover::recover(&host, &config, &store, args.dry_run).await?;
    if args.json {
        print_json(&report);
    } else {
        for line in report.lines(args.dry_run) {
            println!("{line}");
        }
    }
    Ok(())
}
