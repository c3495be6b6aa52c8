//! Macvlan links in each mode on a veth "uplink", and (where the kernel has
//! 8021q) a VLAN sub-interface. Runs in namespaces it creates and removes.
//!
//!     sudo cargo run -p plumb --example macvlan_and_vlan

use plumb::{LinkOptions, MacvlanMode, Netlink, Netns};

#[tokio::main(flavor = "current_thread")]
async fn main() -> plumb::Result<()> {
    let name = format!("plumb-example-mv-{}", std::process::id());
    let ns = Netns::create(&name)?;
    let result = demo(&ns).await;
    Netns::delete(&name)?;
    result
}

async fn demo(ns: &Netns) -> plumb::Result<()> {
    let nl = Netlink::open(ns).await?;
    let up = LinkOptions {
        up: true,
        ..Default::default()
    };
    nl.add_veth("uplink", &up, "uplink-peer", &up).await?;
    for (i, mode) in [MacvlanMode::Bridge, MacvlanMode::Private, MacvlanMode::Vepa]
        .into_iter()
        .enumerate()
    {
        let name = format!("mv{i}");
        let mac = plumb::MacAddr::from_seed(&name);
        nl.add_macvlan(
            &name,
            "uplink",
            mode,
            &LinkOptions {
                mac: Some(mac),
                ..up.clone()
            },
        )
        .await?;
        let link = nl.require_link(&name).await?;
        println!("{name}: mode {:?}, mac {:?}", link.macvlan_mode, link.mac);
    }
    match nl.add_vlan("uplink.10", "uplink", 10, &up).await {
        Ok(()) => println!(
            "uplink.10: VLAN {:?}",
            nl.require_link("uplink.10").await?.vlan_id
        ),
        Err(e) => println!("no VLAN here: {e}"),
    }
    Ok(())
}
