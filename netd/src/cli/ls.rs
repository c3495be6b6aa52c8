//! `netd ls`

use super::{print_json, ClientArgs};
use crate::error::Result;
use crate::state::{Endpoint, Phase};

pub async fn run(args: ClientArgs) -> Result<()> {
    let endpoints: Vec<Endpoint> = args.client().get("/v1/containers").await?;
    if args.json {
        print_json(&endpoints);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<16} {:<7} {:<20} {:<30} PORTS",
        "NAME", "PHASE", "HOST LINK", "IF", "ADDRESSES", "NAMESPACE"
    );
    for ep in endpoints {
        let phase = match ep.phase {
            Phase::Attaching { .. } => "attaching",
            Phase::Attached => "attached",
            Phase::Detaching { .. } => "detaching",
        };
        let ips: Vec<String> = ep.ips.iter().map(|i| i.to_string()).collect();
        let ports: Vec<String> = ep.ports.iter().map(|p| p.to_string()).collect();
        println!(
            "{:<20} {:<10} {:<16} {:<7} {:<20} {:<30} {}",
            ep.name,
            phase,
            ep.host_ifname,
            ep.ifname,
            ips.join(","),
            ep.netns.display(),
            ports.join(" ")
        );
    }
    Ok(())
}
