//! The `[overlay]` section of netd.toml, its `WEFT_OVERLAY_*` variables and
//! `--overlay-*` flags, and the checks that keep a static peer list sane.
//!
//! ```toml
//! subnet = "10.66.1.0/24"              # this host's share of the cluster range
//!
//! [overlay]
//! enabled = true
//! cluster_range = "10.66.0.0/16"       # default
//! # private_key_file = "/var/lib/weft/overlay.key"   (generated, mode 0600)
//! # listen_port = 51820   interface = "weft-wg0"   mtu = underlay − 80
//!
//! [[overlay.peer]]
//! public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="   # `netd pubkey` on that host
//! endpoint = "198.18.0.2:51820"
//! subnet = "10.66.2.0/24"
//! # preshared_key_file = "/etc/weft/psk-b"   persistent_keepalive = 25
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ::overlay::PublicKey;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The cluster range whose per-host /24s the overlay joins, by default the
/// same private /16 as netd's single-host default subnet.
pub const DEFAULT_CLUSTER_RANGE: &str = "10.66.0.0/16";
/// The private key's file name inside the state directory.
pub const KEY_FILE_NAME: &str = "overlay.key";

/// `[overlay]` as written in netd.toml; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayFile {
    pub enabled: Option<bool>,
    pub private_key_file: Option<PathBuf>,
    pub listen_port: Option<u16>,
    pub interface: Option<String>,
    pub mtu: Option<u32>,
    pub cluster_range: Option<Ipv4Network>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<StaticPeer>,
}

/// One `[[overlay.peer]]`: another host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeer {
    /// Its WireGuard public key (`netd pubkey` on that host).
    pub public_key: PublicKey,
    /// Its underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// Its container subnet, routed through the overlay.
    pub subnet: Ipv4Network,
    /// A file holding a preshared key both hosts share (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_file: Option<PathBuf>,
    /// Seconds between keepalives when idle (for NAT between hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

/// The overlay keys as flags, each also read from its `WEFT_OVERLAY_*`
/// variable. Peers come from the file only.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct OverlayArgs {
    /// Run the WireGuard overlay to the peers of netd.toml's [[overlay.peer]] list.
    #[arg(long = "overlay", env = "WEFT_OVERLAY", value_name = "true|false")]
    pub overlay_enabled: Option<bool>,
    /// The overlay's private key (wg base64, mode 0600); generated when missing.
    #[arg(long, env = "WEFT_OVERLAY_PRIVATE_KEY_FILE")]
    pub overlay_private_key_file: Option<PathBuf>,
    /// WireGuard's UDP port.
    #[arg(long, env = "WEFT_OVERLAY_LISTEN_PORT")]
    pub overlay_listen_port: Option<u16>,
    /// The overlay's TUN link.
    #[arg(long, env = "WEFT_OVERLAY_INTERFACE")]
    pub overlay_interface: Option<String>,
    /// The overlay's MTU (default: the underlay's minus 80); containers get it too.
    #[arg(long, env = "WEFT_OVERLAY_MTU")]
    pub overlay_mtu: Option<u32>,
    /// The range whose per-host subnets the overlay joins (never masqueraded).
    #[arg(long, env = "WEFT_OVERLAY_CLUSTER_RANGE")]
    pub overlay_cluster_range: Option<Ipv4Network>,
}

/// The resolved `[overlay]` section.
#[derive(Debug, Clone, Serialize)]
pub struct OverlayConfig {
    pub enabled: bool,
    /// None: `<state_dir>/overlay.key` (see [`OverlayConfig::key_file`]).
    pub private_key_file: Option<PathBuf>,
    pub listen_port: u16,
    pub interface: String,
    /// None: the underlay's MTU − 80, measured when the device is created.
    pub mtu: Option<u32>,
    pub cluster_range: Ipv4Network,
    pub peers: Vec<StaticPeer>,
}

impl Default for OverlayConfig {
    fn default() -> OverlayConfig {
        OverlayConfig {
            enabled: false,
            private_key_file: None,
            listen_port: ::overlay::DEFAULT_PORT,
            interface: ::overlay::DEFAULT_NAME.to_string(),
            mtu: None,
            cluster_range: DEFAULT_CLUSTER_RANGE.parse().expect("default range parses"),
            peers: Vec::new(),
        }
    }
}

impl OverlayConfig {
    /// Where the overlay's private key lives: `private_key_file`, else
    /// `<state_dir>/overlay.key`.
    pub fn key_file(&self, state_dir: &Path) -> PathBuf {
        self.private_key_file
            .clone()
            .unwrap_or_else(|| state_dir.join(KEY_FILE_NAME))
    }

    /// True when anything but the peer list differs: those keys apply only
    /// when netd restarts.
    pub fn differs_beyond_peers(&self, other: &OverlayConfig) -> bool {
        self.enabled != other.enabled
            || self.listen_port != other.listen_port
            || self.interface != other.interface
            || self.mtu != other.mtu
            || self.cluster_range != other.cluster_range
            || self.private_key_file != other.private_key_file
    }

    /// Lays the flags and environment over the file, key by key.
    pub fn merge(file: Option<OverlayFile>, args: &OverlayArgs) -> OverlayConfig {
        let file = file.unwrap_or_default();
        let d = OverlayConfig::default();
        OverlayConfig {
            enabled: args.overlay_enabled.or(file.enabled).unwrap_or(d.enabled),
            private_key_file: args
                .overlay_private_key_file
                .clone()
                .or(file.private_key_file),
            listen_port: args
                .overlay_listen_port
                .or(file.listen_port)
                .unwrap_or(d.listen_port),
            interface: args
                .overlay_interface
                .clone()
                .or(file.interface)
                .unwrap_or(d.interface),
            mtu: args.overlay_mtu.or(file.mtu),
            cluster_range: args
                .overlay_cluster_range
                .or(file.cluster_range)
                .unwrap_or(d.cluster_range),
            peers: file.peers,
        }
    }

    /// Checks the section against this host's subnet: only when enabled.
    pub fn validate(&self, host_subnet: Ipv4Network) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let bad =
            |key: &'static str, value: String, why: String| ConfigError::Value { key, value, why };
        plumb::validate_ifname(&self.interface)
            .map_err(|e| bad("overlay.interface", self.interface.clone(), e.to_string()))?;
        if self.listen_port == 0 {
            return Err(bad(
                "overlay.listen_port",
                "0".into(),
                "peers need a fixed port to reach this host; use 51820".into(),
            ));
        }
        if let Some(mtu) = self.mtu {
            if !(1280..=65535).contains(&mtu) {
                return Err(bad(
                    "overlay.mtu",
                    mtu.to_string(),
                    "must be between 1280 and 65535".into(),
                ));
            }
        }
        let range = self.cluster_range;
        if range.ip() != range.network() {
            return Err(bad(
                "overlay.cluster_range",
                range.to_string(),
                format!(
                    "is not a network address; did you mean {}/{}?",
                    range.network(),
                    range.prefix()
                ),
            ));
        }
        if !is_inside(host_subnet, range) || host_subnet.prefix() <= range.prefix() {
            return Err(bad(
                "subnet",
                host_subnet.to_string(),
                format!(
                    "with the overlay on, this host's subnet must be its own share of \
                     overlay.cluster_range {range}, e.g. {}/24",
                    example_share(range)
                ),
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let name = format!("peer #{} ({})", i + 1, peer.public_key);
            let subnet = peer.subnet;
            if subnet.ip() != subnet.network() {
                return Err(bad(
                    "overlay.peer.subnet",
                    subnet.to_string(),
                    format!(
                        "{name}: not a network address; did you mean {}/{}?",
                        subnet.network(),
                        subnet.prefix()
                    ),
                ));
            }
            if !is_inside(subnet, range) {
                return Err(bad(
                    "overlay.peer.subnet",
                    subnet.to_string(),
                    format!("{name}: outside overlay.cluster_range {range}"),
                ));
            }
            if overlaps(subnet, host_subnet) {
                return Err(bad(
                    "overlay.peer.subnet",
                    subnet.to_string(),
                    format!("{name}: overlaps this host's subnet {host_subnet}"),
                ));
            }
            if peer.endpoint.port() == 0 || peer.endpoint.ip().is_unspecified() {
                return Err(bad(
                    "overlay.peer.endpoint",
                    peer.endpoint.to_string(),
                    format!("{name}: needs the peer's address and port, e.g. 198.18.0.2:51820"),
                ));
            }
            for (j, other) in self.peers.iter().enumerate().take(i) {
                if other.public_key == peer.public_key {
                    return Err(bad(
                        "overlay.peer.public_key",
                        peer.public_key.to_string(),
                        format!("peers #{} and #{} have the same public key", j + 1, i + 1),
                    ));
                }
                if overlaps(other.subnet, subnet) {
                    return Err(bad(
                        "overlay.peer.subnet",
                        subnet.to_string(),
                        format!(
                            "{name}: overlaps the subnet {} of peer #{} ({})",
                            other.subnet,
                            j + 1,
                            other.public_key
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// True when `inner` lies entirely within `outer`.
pub fn is_inside(inner: Ipv4Network, outer: Ipv4Network) -> bool {
    inner.prefix() >= outer.prefix() && outer.contains(inner.network())
}

pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The range's second /24 (its first is often the network's own), for messages.
fn example_share(range: Ipv4Network) -> std::net::Ipv4Addr {
    let base = u32::from(range.network());
    if range.prefix() <= 23 {
        std::net::Ipv4Addr::from(base + 256)
    } else {
        range.network()
    }
}

/// Reads a preshared key file, refusing one that group or others can read.
pub fn read_preshared_key(path: &Path) -> Result<::overlay::PresharedKey, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "preshared key file {} is readable by others (mode {mode:o}); chmod 600 it",
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    ::overlay::PresharedKey::from_base64(text.trim())
        .map_err(|e| format!("preshared key file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_file, Config, ConfigArgs};

    const KEY_B: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const KEY_C: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn config(text: &str) -> Result<Config, ConfigError> {
        let file = parse_file(Path::new("/etc/weft/netd.toml"), text)?;
        Config::merge(file, &ConfigArgs::default())
    }

    fn two_peers(b_subnet: &str, c_subnet: &str) -> String {
        format!(
            "subnet = \"10.66.1.0/24\"\n[overlay]\nenabled = true\n\
             [[overlay.peer]]\npublic_key = \"{KEY_B}\"\nendpoint = \"198.18.0.2:51820\"\nsubnet = \"{b_subnet}\"\n\
             [[overlay.peer]]\npublic_key = \"{KEY_C}\"\nendpoint = \"198.18.0.3:51820\"\nsubnet = \"{c_subnet}\"\npersistent_keepalive = 25\n"
        )
    }

    #[test]
    fn a_static_peer_list_parses_with_defaults() {
        let c = config(&two_peers("10.66.2.0/24", "10.66.3.0/24")).unwrap();
        let o = &c.overlay;
        assert!(o.enabled);
        assert_eq!(o.listen_port, 51820);
        assert_eq!(o.interface, "weft-wg0");
        assert_eq!(o.cluster_range.to_string(), "10.66.0.0/16");
        assert_eq!(o.peers.len(), 2);
        assert_eq!(o.peers[1].persistent_keepalive, Some(25));
        assert_eq!(o.peers[0].public_key.to_base64(), KEY_B);
        assert_eq!(
            c.overlay.key_file(&c.state_dir),
            PathBuf::from("/var/lib/weft/overlay.key")
        );
    }

    #[test]
    fn flags_win_over_the_overlay_section() {
        let file = parse_file(
            Path::new("netd.toml"),
            "subnet = \"10.70.4.0/24\"\n[overlay]\nenabled = false\nlisten_port = 1000\n",
        )
        .unwrap();
        let mut args = ConfigArgs::default();
        args.overlay.overlay_enabled = Some(true);
        args.overlay.overlay_cluster_range = Some("10.70.0.0/16".parse().unwrap());
        let c = Config::merge(file, &args).unwrap();
        assert!(c.overlay.enabled);
        assert_eq!(c.overlay.listen_port, 1000);
        assert_eq!(c.overlay.cluster_range.to_string(), "10.70.0.0/16");
    }

    #[test]
    fn broken_peer_lists_say_what_is_wrong() {
        let err = |text: &str| config(text).unwrap_err().to_string();
        let e = err(&two_peers("10.66.2.0/24", "10.66.2.128/25"));
        assert!(
            e.contains("peer #2") && e.contains("overlaps the subnet 10.66.2.0/24 of peer #1"),
            "{e}"
        );
        let e = err(&two_peers("10.66.1.0/24", "10.66.3.0/24"));
        assert!(
            e.contains("overlaps this host's subnet 10.66.1.0/24"),
            "{e}"
        );
        let e = err(&two_peers("10.66.2.0/24", "10.67.3.0/24"));
        assert!(
            e.contains("outside overlay.cluster_range 10.66.0.0/16"),
            "{e}"
        );
        let e = err(&two_peers("10.66.2.0/24", "10.66.3.7/24"));
        assert!(e.contains("did you mean 10.66.3.0/24"), "{e}");
        let e = err(&two_peers("10.66.2.0/24", "10.66.3.0/24").replace(KEY_C, KEY_B));
        assert!(e.contains("same public key"), "{e}");
        let e = err(&two_peers("10.66.2.0/24", "10.66.3.0/24").replace(KEY_C, "not-a-key"));
        assert!(
            e.contains("line 9, key `public_key`") && e.contains("not a WireGuard key"),
            "{e}"
        );
        let e = err("[overlay]\nenabled = true\n");
        assert!(
            e.contains("own share of overlay.cluster_range 10.66.0.0/16, e.g. 10.66.1.0/24"),
            "{e}"
        );
        let e = err("subnet = \"10.66.1.0/24\"\n[overlay]\nenabled = true\n[[overlay.peer]]\npublic_key = \"x\"\n");
        assert!(e.contains("line 5"), "{e}");
        let e = err("subnet = \"10.66.1.0/24\"\n[overlay]\nenabled = true\nmtu = 100\n");
        assert!(e.contains("overlay.mtu"), "{e}");
        // Disabled, the section is not held against the subnet.
        assert!(config("[overlay]\nenabled = false\n").is_ok());
    }

    #[test]
    fn preshared_key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        let psk = ::overlay::PresharedKey::generate().unwrap();
        psk.write_file(&path).unwrap();
        assert_eq!(read_preshared_key(&path).unwrap(), psk);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_preshared_key(&path).unwrap_err();
        assert!(
            e.contains("chmod 600") && !e.contains(&psk.to_base64()),
            "{e}"
        );
    }
}
