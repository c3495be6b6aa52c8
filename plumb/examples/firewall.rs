//! NAT for a container network and a published port, with either firewall
//! backend, in a namespace this example creates and removes; the machine's own
//! firewall is not touched. Prints the ruleset weft made.
//!
//!     sudo cargo run -p plumb --example firewall [nftables|iptables] [PORTSPEC]
//!
//! PORTSPEC is `[hostip:]hostport[-end]:containerport[-end][/proto]`, default
//! `8080:80/tcp`, published to container address 10.88.0.2.

use plumb::firewall::{BackendKind, NetworkRules, PublishedPort};
use plumb::Netns;

fn main() -> plumb::Result<()> {
    let mut args = std::env::args().skip(1);
    let kind: BackendKind = args.next().as_deref().unwrap_or("nftables").parse()?;
    let spec = args.next().unwrap_or_else(|| "8080:80/tcp".into());
    let port = PublishedPort::parse(&spec, "10.88.0.2".parse().expect("valid address"))?;

    let name = format!("plumb-example-fw-{}", std::process::id());
    let ns = Netns::create(&name)?;
    let result = demo(kind, &ns, port);
    Netns::delete(&name)?;
    result
}

fn demo(kind: BackendKind, ns: &Netns, port: PublishedPort) -> plumb::Result<()> {
    let fw = kind.open(ns.clone());
    let net = NetworkRules {
        bridge: "weft0".into(),
        subnets: vec!["10.88.0.0/24".parse().expect("valid network")],
        masquerade: true,
        cluster_ranges: vec!["10.88.0.0/16".parse().expect("valid network")],
    };
    fw.ensure(&net)?;
    let started = std::time::Instant::now();
    fw.add_ports(&[port])?;
    println!("{}: published {port} in {:?}", fw.name(), started.elapsed());
    println!("intact: {}", fw.is_intact(&net)?);
    let listing = ns
        .run(|| {
            std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()
        })?
        .map_err(|e| plumb::Error::io("run nft list ruleset", e))?;
    print!("{}", String::from_utf8_lossy(&listing.stdout));
    fw.teardown()
}
