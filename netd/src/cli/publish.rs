//! `netd publish <container> -p SPEC…` and `netd unpublish <container> -p SPEC…`

use crate::ports::PublishedPort;
use hyper::Method;

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn publish(p: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["netd", "publish", "c1", "-p", p])
    }

    #[test]
    fn dash_p_is_parsed_once_into_typed_mappings() {
        let Command::Publish(args) = publish("[fd00::1]:5353:53/udp").unwrap().command else {
            panic!("not a publish");
        };
        assert_eq!(args.ports, ["[fd00::1]:5353:53/udp".parse().unwrap()]);
    }

    #[test]
    fn bad_dash_p_names_the_mapping_and_the_problem() {
        for (text, says) in [
            ("0:80", "host port: port 0 cannot be published"),
            ("70000:80", "\"70000\" is not a port number (1-65535)"),
            ("8002-8000:80-82", "ends before it starts"),
            ("8000-8002:80-81", "must be the same length"),
            ("80:80/icmp", "unknown protocol \"icmp\""),
            ("1.2.3.4.5:80:80", "is not an IP address"),
        ] {
            let err = publish(text).unwrap_err().to_string();
            assert!(err.contains("--publish"), "{err}");
            assert!(
                err.contains(&format!("invalid port mapping {text:?}")) && err.contains(says),
                "{text}: {err}"
            );
        }
    }
}
