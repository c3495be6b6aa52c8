//! `netd detach <id|name>`

use super::{print_json, ClientArgs};
use crate::endpoints::DetachReport;
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct DetachArgs {
    /// The container's id or name.
    pub container: String,
    /// Return only once the veth pair is deleted and the addresses are free.
    /// Without it netd answers as soon as the container is cut off (ports
    /// withdrawn, link down) and deletes the pair right after, in the
    /// background, batched with other detaches.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: DetachArgs) -> Result<()> {
    if args.container.is_empty() || args.container.contains('/') {
        return Err(Error::InvalidInput(format!(
            "detach: {:?} is not a container id or name",
            args.container
        )));
    }
    let report: DetachReport = args
        .client
        .client()
        .delete(&format!(
            "/v1/containers/{}{}",
            args.container,
            if args.wait { "?wait=1" } else { "" }
        ))
        .await?;
    if args.client.json {
        print_json(&report);
    } else if report.found {
        let ips: Vec<String> = report.released.iter().map(|i| i.to_string()).collect();
        println!(
            "detached {} (released {})",
            report.container,
            ips.join(", ")
        );
    } else {
        println!("{} was not attached; nothing to do", report.container);
    }
    Ok(())
}
