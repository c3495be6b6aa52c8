//! plumb's firewall mechanism in a namespace this example creates and
//! removes (the machine's own firewall is not touched): a table and a port
//! map made with one nft script, one element added over nfnetlink, the
//! ruleset printed, the element deleted again.
//!
//!     sudo cargo run -p plumb --example firewall [HOSTPORT]
//!
//! HOSTPORT (default 8080) is mapped to 10.88.0.2:80/tcp. Which table and
//! map to make, and what to put in them, is the caller's policy: netd's
//! `ports::firewall` is weft's.

use plumb::firewall::nft_netlink::{apply, Change, Field, SetElement};
use plumb::firewall::run_nft;
use plumb::Netns;

const SCRIPT: &str = "add table inet example
add map inet example ports { type inet_proto . inet_service : ipv4_addr . inet_service; }
add chain inet example prerouting { type nat hook prerouting priority dstnat; policy accept; }
add rule inet example prerouting dnat ip to meta l4proto . th dport map @ports
";

fn main() -> plumb::Result<()> {
    let host_port: u16 = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .map_err(|_| plumb::Error::invalid("host port", &text, "expected 1-65535"))?,
        None => 8080,
    };
    let name = format!("plumb-example-fw-{}", std::process::id());
    let ns = Netns::create(&name)?;
    let result = demo(&ns, host_port);
    Netns::delete(&name)?;
    result
}

fn demo(ns: &Netns, host_port: u16) -> plumb::Result<()> {
    run_nft(ns, SCRIPT, "create table inet example", |_| None)?;
    let element = SetElement {
        set: "ports".into(),
        key: vec![
            Field::Proto(libc::IPPROTO_TCP as u8),
            Field::Port(host_port),
        ],
        data: vec![
            Field::Addr("10.88.0.2".parse().expect("valid address")),
            Field::Port(80),
        ],
    };
    let started = std::time::Instant::now();
    if let Err(refusal) = apply(ns, "example", &[(Change::Add, &element)])? {
        return Err(plumb::Error::Other(format!(
            "the kernel refused {element}: {refusal}"
        )));
    }
    println!("added {{ {element} }} in {:?}", started.elapsed());
    let listing = ns
        .run(|| {
            std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()
        })?
        .map_err(|e| plumb::Error::io("run nft list ruleset", e))?;
    print!("{}", String::from_utf8_lossy(&listing.stdout));
    if let Err(refusal) = apply(ns, "example", &[(Change::Delete, &element)])? {
        return Err(plumb::Error::Other(format!(
            "the kernel refused to delete {element}: {refusal}"
        )));
    }
    run_nft(
        ns,
        "delete table inet example\n",
        "remove table inet example",
        |_| None,
    )
}
