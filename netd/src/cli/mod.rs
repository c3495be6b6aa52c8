//! The command line: `netd run` and the admin commands, one file each. The
//! admin commands talk to a running netd over its socket.

mod attach;
mod check;
mod cluster;
mod detach;
mod ls;
mod names;
mod peers;
mod pubkey;
mod publish;
mod reconcile;
mod recover;
mod resolv;
mod run;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::api::client::Client;
use crate::config::{ConfigArgs, DEFAULT_SOCKET};
use crate::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "netd",
    version,
    about = "weft's per-host network daemon and its admin commands"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Run(ConfigArgs),
    /// Show the daemon's configuration and address usage.
    Status(ClientArgs),
    /// List attached containers.
    Ls(ClientArgs),
    /// Attach a container's namespace to the bridge.
    Attach(attach::AttachArgs),
    /// Detach a container (by id or name); succeeds if it is not attached.
    Detach(detach::DetachArgs),
    /// Check that a container's links, addresses and routes are in place.
    Check(check::CheckArgs),
    /// Publish ports of an attached container.
    Publish(publish::PublishArgs),
    /// Withdraw published ports of a container.
    Unpublish(publish::PublishArgs),
    /// Check the kernel against the state now and fix what differs; re-reads the overlay's peer list.
    Reconcile(ClientArgs),
    /// Show the overlay's peers: endpoint, last handshake, failing handshake attempts and the last error, traffic, drops.
    Peers(ClientArgs),
    /// List the names the network's DNS server answers: name, addresses, host, source.
    Names(ClientArgs),
    /// Print this host's overlay public key (generating the key pair when missing),
    /// for the other hosts' [[overlay.peer]] lists. Needs no running netd.
    Pubkey(ConfigArgs),
    /// Rebuild damaged state files from the kernel: adopt the containers whose links are live,
    /// drop the entries that have none. Run with netd stopped.
    Recover(recover::RecoverArgs),
    /// The cluster: init its config in the store, status, hosts, leave, forget.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// What every admin command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// netd's API socket.
    #[arg(long, env = "WEFT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }
}

impl Cli {
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Run(_))
    }

    pub async fn run(self) -> Result<()> {
        match self.command {
            Command::Run(args) => run::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Ls(args) => ls::run(args).await,
            Command::Attach(args) => attach::run(args).await,
            Command::Detach(args) => detach::run(args).await,
            Command::Check(args) => check::run(args).await,
            Command::Publish(args) => publish::run(args, true).await,
            Command::Unpublish(args) => publish::run(args, false).await,
            Command::Reconcile(args) => reconcile::run(args).await,
            Command::Peers(args) => peers::run(args).await,
            Command::Names(args) => names::run(args).await,
            Command::Pubkey(args) => pubkey::run(args),
            Command::Recover(args) => recover::run(args).await,
            Command::Cluster(command) => cluster::run(command).await,
        }
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("answers serialize")
    );
}
