//! `netd peers`

use super::{print_json, ClientArgs};
use crate::api::PeerReport;
use crate::error::Result;

pub async fn run(args: ClientArgs) -> Result<()> {
    let peers: Vec<PeerReport> = args.client().get("/v1/peers").await?;
    if args.json {
        print_json(&peers);
        return Ok(());
    }
    if peers.is_empty() {
        println!("no peers: add [[overlay.peer]] entries to netd.toml and run `netd reconcile`");
        return Ok(());
    }
    println!(
        "{:<16}  {:<6}  {:<5}  {:<44}  {:<21}  {:<15}  {:>9}  {:>8}  {:>21}  {:>21}  {:<8}  LAST HANDSHAKE ERROR",
        "HOST",
        "SOURCE",
        "STATE",
        "PEER",
        "ENDPOINT",
        "ALLOWED IPS",
        "HANDSHAKE",
        "ATTEMPTS",
        "RX",
        "TX",
        "DROPS"
    );
    for p in &peers {
        let allowed: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        let drops = if p.drops.is_empty() {
            "0".to_string()
        } else {
            p.drops
                .iter()
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let source = match p.source {
            Some(crate::overlay::PeerOrigin::Store) => "store",
            Some(crate::overlay::PeerOrigin::Static) => "static",
            None => "-",
        };
        let (host, state) = match &p.host {
            Some(h) => (h.name.as_str(), if h.alive { "alive" } else { "dead" }),
            None => ("-", "-"),
        };
        println!(
            "{host:<16}  {source:<6}  {state:<5}  {:<44}  {:<21}  {:<15}  {:>9}  {:>8}  {:>21}  {:>21}  {drops:<8}  {}",
            p.public_key,
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "(unknown)".into()),
            allowed.join(","),
            handshake(p.handshake_age_secs),
            p.handshake_attempts,
            traffic(p.rx_bytes, p.rx_packets),
            traffic(p.tx_bytes, p.tx_packets),
            last_error(p),
        );
    }
    Ok(())
}

/// `no response to the initiation (4s ago)`, or `-`.
fn last_error(p: &PeerReport) -> String {
    match &p.handshake_last_error {
        Some(e) => format!("{e} ({})", handshake(p.handshake_last_error_age_secs)),
        None => "-".into(),
    }
}

pub(crate) fn handshake(age: Option<u64>) -> String {
    match age {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) => format!("{}m ago", s / 60),
    }
}

/// `12.3 KiB/40 pkts`
pub(crate) fn traffic(bytes: u64, packets: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    let size = if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    };
    format!("{size}/{packets} pkts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(traffic(512, 3), "512 B/3 pkts");
        assert_eq!(traffic(12_595, 40), "12.3 KiB/40 pkts");
        assert_eq!(handshake(None), "never");
        assert_eq!(handshake(Some(5)), "5s ago");
        assert_eq!(handshake(Some(600)), "10m ago");
    }
}
