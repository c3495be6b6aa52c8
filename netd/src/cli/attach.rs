//! `netd attach <netns> [--id] [--name] [--alias]… [--dns] [--ifname] [--ip|--ip-range] [--ip6] [--mac] [--mtu]`

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{print_json, ClientArgs};
use crate::api::Status;
use crate::endpoints::{AttachRequest, AttachResult, Ipv4Range};
use crate::error::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct AttachArgs {
    /// The container's namespace: a path, a name in /run/netns, or a PID.
    pub netns: String,
    /// Container id (default: the name, else the namespace's file name).
    #[arg(long)]
    pub id: Option<String>,
    /// Unique name (default: the id); the network's DNS server answers it
    /// when it is a valid DNS name.
    #[arg(long)]
    pub name: Option<String>,
    /// A further DNS name for the container, unique on the network; repeatable.
    #[arg(long = "alias")]
    pub aliases: Vec<String>,
    /// Write the container's resolv.conf, pointing at the network's DNS
    /// server: /etc/netns/NAME/resolv.conf for a namespace NAME in
    /// /run/netns (what `ip netns exec NAME` mounts over /etc/resolv.conf).
    #[arg(long)]
    pub dns: bool,
    /// Interface name inside the container.
    #[arg(long, default_value = crate::endpoints::DEFAULT_IFNAME)]
    pub ifname: String,
    /// A fixed IPv4 address inside the subnet.
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Take the IPv4 address from FIRST-LAST (inside the subnet) instead of
    /// anywhere in it, e.g. 10.66.0.100-10.66.0.199.
    #[arg(long, value_parser = parse_range, conflicts_with = "ip")]
    pub ip_range: Option<Ipv4Range>,
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
    pub ports: Vec<crate::ports::PortMapping>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: AttachArgs) -> Result<()> {
    // Checked before the attach, so that a refused --dns changes nothing.
    let resolv_conf = if args.dns {
        let netns_name = super::resolv::named_netns(&args.netns)?;
        let status: Status = args.client.client().get("/v1/status").await?;
        let dns = status.dns.ok_or_else(|| {
            Error::InvalidInput(
                "--dns: netd serves no names; start it with names = true (the default)".into(),
            )
        })?;
        Some((netns_name, dns))
    } else {
        None
    };
    let request = AttachRequest {
        netns: args.netns,
        id: args.id,
        name: args.name,
        aliases: args.aliases,
        ifname: Some(args.ifname),
        ip: args.ip,
        ip_range: args.ip_range,
        ip6: args.ip6,
        mac: args.mac,
        mtu: args.mtu,
        ports: args.ports,
        assigned: None,
        ..Default::default()
    };
    let result: AttachResult = args
        .client
        .client()
        .post("/v1/containers", &request)
        .await?;
    if let Some((netns_name, dns)) = resolv_conf {
        super::resolv::write_for_netns(&netns_name, &dns)?;
    }
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

fn parse_range(s: &str) -> std::result::Result<Ipv4Range, String> {
    let (first, last) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST (two IPv4 addresses)"))?;
    let parse = |a: &str| {
        a.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{a:?} in {s:?} is not an IPv4 address"))
    };
    Ok(Ipv4Range {
        first: parse(first)?,
        last: parse(last)?,
    })
}
