//! `netd status`

use super::{print_json, ClientArgs};
use crate::api::Status;
use crate::error::Result;

pub async fn run(args: ClientArgs) -> Result<()> {
    let status: Status = args.client().get("/v1/status").await?;
    if args.json {
        print_json(&status);
        return Ok(());
    }
    println!("netd {} (PID {})", status.version, status.pid);
    println!("bridge      {}", status.bridge);
    for (subnet, usage) in status.subnets.iter().zip(&status.ipam) {
        println!(
            "subnet      {subnet}: {} of {} addresses in use",
            usage.in_use, usage.capacity
        );
    }
    let gateways: Vec<String> = status.gateways.iter().map(|g| g.to_string()).collect();
    println!("gateways    {}", gateways.join(", "));
    println!("containers  {}", status.containers);
    println!("firewall    {}", status.firewall);
    println!("state       {}", status.state_dir.display());
    println!("socket      {}", status.socket.display());
    match &status.overlay {
        Some(o) => {
            println!(
                "overlay     {} on UDP port {}, MTU {}, cluster range {}",
                o.interface, o.listen_port, o.mtu, o.cluster_range
            );
            println!("public key  {}", o.public_key);
            println!(
                "peers       {} configured, {} connected (netd peers for details)",
                o.peers, o.peers_connected
            );
        }
        None => println!("overlay     off"),
    }
    Ok(())
}
