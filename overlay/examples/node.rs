//! A WireGuard node from the command line: weft's overlay device in the
//! current network namespace, with one address and static peers, until
//! SIGTERM or SIGINT. `scripts/bench-overlay` runs one per simulated host, so
//! the overlay's CPU time is a process of its own to measure.
//!
//! ```text
//! node --private-key FILE --address 10.99.0.1/24 [--port 51820] [--mtu 1420] \
//!      --peer PUBLIC_KEY,ENDPOINT,ALLOWED_IP[+ALLOWED_IP...] [--peer ...]
//! ```
//!
//! The key file holds a `wg genkey`-style base64 private key. Prints
//! `ready <public key>` once traffic can flow.

use std::error::Error;
use std::path::PathBuf;

use overlay::{Device, DeviceConfig, PeerConfig, PrivateKey};
use tokio::signal::unix::{signal, SignalKind};

struct Args {
    private_key: PathBuf,
    address: ipnetwork::IpNetwork,
    port: u16,
    mtu: Option<u32>,
    peers: Vec<PeerConfig>,
}

fn parse_peer(spec: &str) -> Result<PeerConfig, Box<dyn Error>> {
    let mut parts = spec.splitn(3, ',');
    let (Some(key), Some(endpoint), Some(allowed)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("--peer {spec:?}: want PUBLIC_KEY,ENDPOINT,ALLOWED_IP[+…]").into());
    };
    let mut peer = PeerConfig::new(key.parse()?);
    peer.endpoint = Some(endpoint.parse()?);
    peer.allowed_ips = allowed
        .split('+')
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    Ok(peer)
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut private_key = None;
    let mut address = None;
    let mut port = overlay::DEFAULT_PORT;
    let mut mtu = None;
    let mut peers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--private-key" => private_key = Some(PathBuf::from(value()?)),
            "--address" => address = Some(value()?.parse()?),
            "--port" => port = value()?.parse()?,
            "--mtu" => mtu = Some(value()?.parse()?),
            "--peer" => peers.push(parse_peer(&value()?)?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(Args {
        private_key: private_key.ok_or("--private-key FILE is required")?,
        address: address.ok_or("--address CIDR is required")?,
        port,
        mtu,
        peers,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let netns = plumb::Netns::current()?;
    let mut config = DeviceConfig::new(PrivateKey::read_file(&args.private_key)?);
    config.listen_port = args.port;
    config.mtu = args.mtu;
    let device = Device::create(&netns, config).await?;
    plumb::Netlink::open(&netns)
        .await?
        .add_address(device.name(), args.address, false)
        .await?;
    for peer in args.peers {
        device.set_peer(peer)?;
    }
    println!("ready {}", device.public_key());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    device.shutdown();
    Ok(())
}
