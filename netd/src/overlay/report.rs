//! What `netd peers`, `netd status` and `/metrics` show of the overlay, from
//! `overlay::Device::stats`. Public keys only: the private key never leaves
//! its file.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Serialize};

use super::OverlayService;

/// A handshake older than this (WireGuard's reject-after time) means the
/// session is gone.
pub const SESSION_LIFETIME_SECS: u64 = 180;

/// One peer as `netd peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub public_key: String,
    /// Configured, or as last learned from its traffic.
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNetwork>,
    /// Unix seconds of the current session's handshake; None before the first.
    pub last_handshake: Option<u64>,
    pub handshake_age_secs: Option<u64>,
    /// Handshake initiations sent since the last completed handshake: grows
    /// while the peer is down or unreachable, 0 once one succeeds.
    #[serde(default)]
    pub handshake_attempts: u64,
    /// Handshake initiations sent in all.
    #[serde(default)]
    pub handshake_initiations: u64,
    /// Why the last handshake attempt failed ("no response to the
    /// initiation", …), and how long ago; kept after a later success.
    #[serde(default)]
    pub handshake_last_error: Option<String>,
    #[serde(default)]
    pub handshake_last_error_age_secs: Option<u64>,
    /// Inner packets delivered from this peer.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// Inner packets encrypted for this peer.
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Non-zero drop counters by reason (`disallowed_source`, `replay`, …).
    pub drops: BTreeMap<String, u64>,
    /// Where the peer came from (netd.toml or the cluster store).
    #[serde(default)]
    pub source: Option<super::PeerOrigin>,
    /// The cluster host behind a store peer: name, id, alive/dead, key epoch.
    #[serde(default)]
    pub host: Option<super::ClusterHostInfo>,
}

/// The overlay in `netd status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub cluster_range: Ipv4Network,
    pub peers: usize,
    /// Peers with a session younger than 180 s.
    pub peers_connected: usize,
    /// Drops not attributable to a peer (no route, unknown key, …).
    pub drops: BTreeMap<String, u64>,
}

fn reason_name(reason: ::overlay::DropReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{reason:?}"))
}

fn drop_map(drops: &::overlay::DropCounts) -> BTreeMap<String, u64> {
    drops
        .nonzero()
        .into_iter()
        .map(|(r, n)| (reason_name(r), n))
        .collect()
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

impl PeerReport {
    fn from_stats(stats: &::overlay::PeerStats, now: SystemTime) -> PeerReport {
        PeerReport {
            public_key: stats.public_key.to_base64(),
            endpoint: stats.endpoint,
            allowed_ips: stats.allowed_ips.clone(),
            last_handshake: stats.last_handshake.and_then(unix_secs),
            handshake_age_secs: stats
                .last_handshake
                .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
            handshake_attempts: stats.handshakes.unanswered,
            handshake_initiations: stats.handshakes.initiations,
            handshake_last_error: stats.handshakes.last_failure.map(|(f, _)| f.to_string()),
            handshake_last_error_age_secs: stats
                .handshakes
                .last_failure
                .map(|(_, t)| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
            rx_bytes: stats.rx_bytes,
            rx_packets: stats.rx_packets,
            tx_bytes: stats.tx_bytes,
            tx_packets: stats.tx_packets,
            drops: drop_map(&stats.drops),
            source: None,
            host: None,
        }
    }

    pub fn connected(&self) -> bool {
        self.handshake_age_secs
            .is_some_and(|age| age < SESSION_LIFETIME_SECS)
    }
}

impl OverlayService {
    /// Every peer's counters, sorted by public key.
    pub fn peers(&self) -> Vec<PeerReport> {
        let now = SystemTime::now();
        let wanted = self.wanted();
        self.device
            .stats()
            .peers
            .iter()
            .map(|p| {
                let mut report = PeerReport::from_stats(p, now);
                if let Some(peer) = wanted.get(&p.public_key) {
                    report.source = Some(peer.origin);
                    report.host = peer.host.clone();
                }
                report
            })
            .collect()
    }

    pub fn status(&self) -> OverlayStatus {
        let stats = self.device.stats();
        let peers = self.peers();
        OverlayStatus {
            interface: stats.name,
            public_key: stats.public_key.to_base64(),
            listen_port: stats.listen_port,
            mtu: stats.mtu,
            cluster_range: self.cluster_range,
            peers: peers.len(),
            peers_connected: peers.iter().filter(|p| p.connected()).count(),
            drops: drop_map(&stats.drops),
        }
    }

    /// The overlay's Prometheus metrics, appended to netd's.
    pub fn render_metrics(&self, out: &mut String) {
        render_metrics(&self.peers(), &drop_map(&self.device.stats().drops), out)
    }
}

fn render_metrics(peers: &[PeerReport], device_drops: &BTreeMap<String, u64>, out: &mut String) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        out,
        "weft_netd_overlay_peers",
        "gauge",
        "Configured overlay peers.",
    );
    let _ = writeln!(out, "weft_netd_overlay_peers {}", peers.len());
    type Counter = fn(&PeerReport) -> u64;
    let per_peer: [(&str, &str, Counter); 5] = [
        (
            "weft_netd_overlay_peer_handshake_initiations_total",
            "Handshake initiations sent to the peer.",
            |p| p.handshake_initiations,
        ),
        (
            "weft_netd_overlay_peer_rx_bytes_total",
            "Inner bytes received from the peer.",
            |p| p.rx_bytes,
        ),
        (
            "weft_netd_overlay_peer_tx_bytes_total",
            "Inner bytes sent to the peer.",
            |p| p.tx_bytes,
        ),
        (
            "weft_netd_overlay_peer_rx_packets_total",
            "Inner packets received from the peer.",
            |p| p.rx_packets,
        ),
        (
            "weft_netd_overlay_peer_tx_packets_total",
            "Inner packets sent to the peer.",
            |p| p.tx_packets,
        ),
    ];
    for (name, help, value) in per_peer {
        family(out, name, "counter", help);
        for p in peers {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", p.public_key, value(p));
        }
    }
    let name = "weft_netd_overlay_peer_handshake_age_seconds";
    family(
        out,
        name,
        "gauge",
        "Seconds since the peer's last completed handshake (absent before the first).",
    );
    for p in peers {
        if let Some(age) = p.handshake_age_secs {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {age}", p.public_key);
        }
    }
    let name = "weft_netd_overlay_peer_handshake_attempts";
    family(
        out,
        name,
        "gauge",
        "Handshake initiations sent to the peer since its last completed handshake.",
    );
    for p in peers {
        let _ = writeln!(
            out,
            "{name}{{peer=\"{}\"}} {}",
            p.public_key, p.handshake_attempts
        );
    }
    let name = "weft_netd_overlay_peer_drops_total";
    family(
        out,
        name,
        "counter",
        "Packets from or to the peer dropped, by reason.",
    );
    for p in peers {
        for (reason, n) in &p.drops {
            let _ = writeln!(
                out,
                "{name}{{peer=\"{}\",reason=\"{reason}\"}} {n}",
                p.public_key
            );
        }
    }
    let name = "weft_netd_overlay_drops_total";
    family(
        out,
        name,
        "counter",
        "Packets dropped before a peer was known, by reason.",
    );
    for (reason, n) in device_drops {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_each_peer_and_each_drop_reason() {
        let peer = PeerReport {
            public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into(),
            endpoint: Some("198.18.0.2:51820".parse().unwrap()),
            allowed_ips: vec!["10.66.2.0/24".parse().unwrap()],
            last_handshake: Some(1_700_000_000),
            handshake_age_secs: Some(12),
            handshake_attempts: 0,
            handshake_initiations: 4,
            handshake_last_error: None,
            handshake_last_error_age_secs: None,
            rx_bytes: 1000,
            rx_packets: 10,
            tx_bytes: 2000,
            tx_packets: 20,
            drops: BTreeMap::from([("replay".to_string(), 3)]),
            source: None,
            host: None,
        };
        let silent = PeerReport {
            public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
            last_handshake: None,
            handshake_age_secs: None,
            handshake_attempts: 6,
            handshake_last_error: Some("no response to the initiation".into()),
            handshake_last_error_age_secs: Some(3),
            drops: BTreeMap::new(),
            source: None,
            host: None,
            ..peer.clone()
        };
        assert!(peer.connected() && !silent.connected());
        let mut out = String::new();
        let device = BTreeMap::from([("unknown_key".to_string(), 7)]);
        render_metrics(&[peer, silent], &device, &mut out);
        let k = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        for line in [
            "weft_netd_overlay_peers 2".to_string(),
            format!("weft_netd_overlay_peer_rx_bytes_total{{peer=\"{k}\"}} 1000"),
            format!("weft_netd_overlay_peer_tx_bytes_total{{peer=\"{k}\"}} 2000"),
            format!("weft_netd_overlay_peer_handshake_age_seconds{{peer=\"{k}\"}} 12"),
            format!("weft_netd_overlay_peer_drops_total{{peer=\"{k}\",reason=\"replay\"}} 3"),
            "weft_netd_overlay_drops_total{reason=\"unknown_key\"} 7".to_string(),
            format!("weft_netd_overlay_peer_handshake_initiations_total{{peer=\"{k}\"}} 4"),
            "weft_netd_overlay_peer_handshake_attempts{peer=\"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"} 6".to_string(),
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line} missing from:\n{out}"
            );
        }
        // No handshake yet: no age sample for that peer.
        assert_eq!(out.matches("handshake_age_seconds{").count(), 1, "{out}");
        assert_eq!(reason_name(::overlay::DropReason::NoRoute), "no_route");
    }
}
