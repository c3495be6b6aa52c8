//! `netd attach <netns> [--id] [--name] [--ifname] [--ip] [--ip6] [--mac] [--mtu]`

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{print_json, ClientArgs};
use crate::endpoint::{AttachRequest, AttachResult};
use crate::error::Result;

#[derive(Debug, Clone, clap::Args)]
pub struct AttachArgs {
    /// The container's namespace: a path, a name in /run/netns, or a PID.
    pub netns: String,
    /// Container id (default: the name, else the namespace's file name).
    #[arg(long)]
    pub id: Option<String>,
    /// Unique name (default: the id).
    #[arg(long)]
    pub name: Option<String>,
    /// Interface name inside the container.
    #[arg(long, default_value = crate::endpoint::DEFAULT_IFNAME)]
    pub ifname: String,
    /// A fixed IPv4 address inside the subnet.
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// A fixed IPv6 address inside subnet6.
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    /// A fixed MAC (02:..), or U:<seed> for one derived from a seed.
    #[arg(long)]
    pub mac: Option<String>,
    /// MTU of the container's interface (default: netd's).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Publish a port: [hostip:]hostport[-end]:ctrport[-end][/tcp|udp|sctp]; repeatable.
    #[arg(short = 'p', long = "publish")]
    pub ports: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: AttachArgs) -> Result<()> {
    let request = AttachRequest {
        netns: args.netns,
        id: args.id,
        name: args.name,
        ifname: Some(args.ifname),
        ip: args.ip,
        ip6: args.ip6,
        mac: args.mac,
        mtu: args.mtu,
        ports: args.ports,
        assigned: None,
    };
    let result: AttachResult = args
        .client
        .client()
        .post("/v1/containers", &request)
        .await?;
    if args.client.json {
        print_json(&result);
        return Ok(());
    }
    let ips: Vec<String> = result.ips.iter().map(|i| i.address.to_string()).collect();
    let container_if = &result.interfaces[1];
    println!(
        "attached {}: {} {} (MAC {}), host link {}",
        result.name,
        container_if.name,
        ips.join(", "),
        result
            .mac
            .map(|m| m.to_string())
            .unwrap_or_else(|| "?".into()),
        result.interfaces[0].name
    );
    for port in &result.ports {
        println!("published {port}");
    }
    Ok(())
}
