//! `netd check <id|name>`: is the container's networking all in place?

use super::{print_json, ClientArgs};
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The container's id or name.
    pub container: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: CheckArgs) -> Result<()> {
    if args.container.is_empty() || args.container.contains('/') {
        return Err(Error::InvalidInput(format!(
            "check: {:?} is not a container id or name",
            args.container
        )));
    }
    let answer: serde_json::Value = args
        .client
        .client()
        .get(&format!("/v1/containers/{}/check", args.container))
        .await?;
    if args.client.json {
        print_json(&answer);
    } else {
        println!(
            "{}: links, addresses and routes are in place",
            args.container
        );
    }
    Ok(())
}
