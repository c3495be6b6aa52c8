//! A bridge, and a veth pair whose far end is created directly inside a new
//! namespace, addressed and routed. Everything happens in two namespaces this
//! example creates and removes; the machine's own network is not touched.
//!
//!     sudo cargo run -p plumb --example veth_into_namespace

use plumb::{LinkOptions, Netlink, Netns, Route};

#[tokio::main(flavor = "current_thread")]
async fn main() -> plumb::Result<()> {
    let host_name = format!("plumb-example-host-{}", std::process::id());
    let guest_name = format!("plumb-example-guest-{}", std::process::id());
    let host = Netns::create(&host_name)?;
    let guest = Netns::create(&guest_name)?;
    let result = wire(&host, &guest).await;
    Netns::delete(&guest_name)?;
    Netns::delete(&host_name)?;
    result
}

async fn wire(host: &Netns, guest: &Netns) -> plumb::Result<()> {
    let nl = Netlink::open(host).await?;
    let up = LinkOptions {
        up: true,
        ..Default::default()
    };
    nl.add_bridge("br0", &up).await?;
    nl.add_address("br0", "10.1.0.1/24".parse().unwrap(), false)
        .await?;
    nl.add_veth(
        "veth-guest",
        &up,
        "eth0",
        &LinkOptions {
            netns: Some(guest.clone()),
            up: true,
            ..Default::default()
        },
    )
    .await?;
    nl.attach_to_bridge("veth-guest", "br0").await?;

    let gl = Netlink::open(guest).await?;
    gl.add_address("eth0", "10.1.0.2/24".parse().unwrap(), false)
        .await?;
    gl.add_route(&Route {
        gateway: Some("10.1.0.1".parse().unwrap()),
        ..Default::default()
    })
    .await?;

    for link in gl.links().await? {
        println!(
            "guest link {} kind {:?} mac {:?} up {}",
            link.name, link.kind, link.mac, link.up
        );
    }
    for route in gl.routes(false, false).await? {
        println!("guest route {route}");
    }
    Ok(())
}
