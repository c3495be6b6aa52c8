//! `netd publish <container> -p SPEC…` and `netd unpublish <container> -p SPEC…`

use hyper::Method;
use crate::ports::PublishedPort;

use super::{print_json, ClientArgs};
use crate::error::{Error, Result};
use crate::ports::PortsRequest;

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// The container's id or name.
    pub container: String,
    /// [hostip:]hostport[-end]:ctrport[-end][/tcp|udp|sctp]; repeatable.
    #[arg(short = 'p', long = "publish", required = true)]
    pub ports: Vec<crate::ports::PortMapping>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: PublishArgs, publish: bool) -> Result<()> {
    if args.container.is_empty() || args.container.contains('/') {
        return Err(Error::InvalidInput(format!(
            "{:?} is not a container id or name",
            args.container
        )));
    }
    let method = if publish {
        Method::POST
    } else {
        Method::DELETE
    };
    let path = format!("/v1/containers/{}/ports", args.container);
    let body = PortsRequest { ports: args.ports };
    let ports: Vec<PublishedPort> = args
        .client
        .client()
        .call(method, &path, Some(&body))
        .await?;
    if args.client.json {
        print_json(&ports);
        return Ok(());
    }
    let verb = if publish { "published" } else { "withdrew" };
    if ports.is_empty() {
        println!("nothing to do: none of those ports were published");
    }
    for port in ports {
        println!("{verb} {port}");
    }
    Ok(())
}
