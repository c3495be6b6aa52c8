//! netd's configuration: `/etc/weft/netd.toml`, then `WEFT_*` environment
//! variables, then flags — each later source wins key by key.
//!
//! Defaults: bridge `weft0`, IPv4 subnet `10.66.0.0/16` (gateway 10.66.0.1 on
//! the bridge), no IPv6, state in `/var/lib/weft`, socket `/run/weft/netd.sock`,
//! nftables, the MTU of the kernel's default (1500), reconcile every 2 s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

mod names;
pub mod overlay;

pub use overlay::{OverlayArgs, OverlayConfig, OverlayFile, StaticPeer};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/weft/netd.toml";
pub const DEFAULT_BRIDGE: &str = "weft0";
/// The single-host default: a private /16 that neither Docker (172.17/16) nor
/// Podman (10.88/16, 10.89.x) use by default.
pub const DEFAULT_SUBNET: &str = "10.66.0.0/16";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
pub const DEFAULT_SOCKET: &str = "/run/weft/netd.sock";
pub const DEFAULT_RECONCILE_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source} — fix the path or leave --config/WEFT_CONFIG unset")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("config file {path}, line {line}{}: {message}", key.as_ref().map(|k| format!(", key `{k}`")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },

    #[error("a WEFT_* environment variable is invalid: {0}")]
    Environment(String),

    #[error("config key `{key}` = {value:?}: {why}")]
    Value {
        key: &'static str,
        value: String,
        why: String,
    },
}

/// Which firewall backend publishes ports and masquerades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FirewallKind {
    #[default]
    Nft,
    Iptables,
}

impl std::fmt::Display for FirewallKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FirewallKind::Nft => "nftables",
            FirewallKind::Iptables => "iptables",
        })
    }
}

/// The keys of netd.toml, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bridge: Option<String>,
    pub subnet: Option<Ipv4Network>,
    pub subnet6: Option<Ipv6Network>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub netns: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub firewall: Option<FirewallKind>,
    pub mtu: Option<u32>,
    pub reconcile_interval_secs: Option<u64>,
    pub multicast_snooping: Option<bool>,
    pub ipv6_localhost_relay: Option<bool>,
    pub names: Option<bool>,
    pub dns_search_domain: Option<String>,
    pub dns_resolv_conf: Option<PathBuf>,
    pub dns_rate_limit: Option<u32>,
    pub overlay: Option<OverlayFile>,
}

/// The same keys as flags, each also read from its `WEFT_*` variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Config file (TOML); a missing default file is fine, a missing given one is not.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bridge the containers plug into.
    #[arg(long, env = "WEFT_BRIDGE")]
    pub bridge: Option<String>,
    /// IPv4 container subnet; the bridge gets its first address.
    #[arg(long, env = "WEFT_SUBNET")]
    pub subnet: Option<Ipv4Network>,
    /// Optional IPv6 container subnet (prefix 64–126).
    #[arg(long, env = "WEFT_SUBNET6")]
    pub subnet6: Option<Ipv6Network>,
    /// Where netd keeps its state (endpoints, address reservations).
    #[arg(long, env = "WEFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The API's unix socket.
    #[arg(long, env = "WEFT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The namespace netd manages (name, path or PID); default: the one it runs in.
    #[arg(long, env = "WEFT_NETNS")]
    pub netns: Option<String>,
    /// Address for Prometheus metrics, e.g. 127.0.0.1:9588; off when unset.
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Firewall backend.
    #[arg(long, env = "WEFT_FIREWALL", value_enum)]
    pub firewall: Option<FirewallKind>,
    /// MTU of the bridge and the containers' interfaces.
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<u32>,
    /// Seconds between checks of the kernel against the state.
    #[arg(long, env = "WEFT_RECONCILE_INTERVAL_SECS")]
    pub reconcile_interval_secs: Option<u64>,
    /// IGMP/MLD snooping on the bridge (true/false; default false: multicast
    /// reaches every container, and attaching stays as cheap at the
    /// thousandth container as at the first).
    #[arg(long, env = "WEFT_MULTICAST_SNOOPING")]
    pub multicast_snooping: Option<bool>,
    /// The daemon answers published TCP/UDP ports on `[::1]` and relays them to
    /// the containers (true/false; default true): IPv6 has no route_localnet,
    /// so the kernel path cannot serve ::1.
    #[arg(long, env = "WEFT_IPV6_LOCALHOST_RELAY")]
    pub ipv6_localhost_relay: Option<bool>,
    /// The daemon answers the containers' names with a DNS server on the
    /// gateway addresses, port 53 (true/false; default true).
    #[arg(long, env = "WEFT_NAMES")]
    pub names: Option<bool>,
    /// The domain every container name also answers under (default weft.internal).
    #[arg(long, env = "WEFT_DNS_SEARCH_DOMAIN")]
    pub dns_search_domain: Option<String>,
    /// The resolv.conf naming the resolvers other names are forwarded to,
    /// read in netd's namespace (default /etc/resolv.conf).
    #[arg(long, env = "WEFT_DNS_RESOLV_CONF")]
    pub dns_resolv_conf: Option<PathBuf>,
    /// Queries per second one container may send the DNS server (default
    /// 5000; bursts of twice that).
    #[arg(long, env = "WEFT_DNS_RATE_LIMIT")]
    pub dns_rate_limit: Option<u32>,
    #[command(flatten)]
    pub overlay: OverlayArgs,
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub bridge: String,
    pub subnet: Ipv4Network,
    pub subnet6: Option<Ipv6Network>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub netns: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub firewall: FirewallKind,
    pub mtu: Option<u32>,
    pub reconcile_interval: Duration,
    /// IGMP/MLD snooping on the bridge.
    pub multicast_snooping: bool,
    /// The daemon relays `[::1]` to published ports.
    pub ipv6_localhost_relay: bool,
    /// The daemon serves the containers' names (see docs/dns.md).
    pub names: bool,
    pub dns_search_domain: String,
    pub dns_resolv_conf: PathBuf,
    /// Queries per second per container.
    pub dns_rate_limit: u32,
    /// The WireGuard overlay to other hosts (`[overlay]`); off by default.
    pub overlay: OverlayConfig,
    /// Masquerade traffic from the subnets to the outside (on unless a
    /// library user, such as a CNI config with `"ipMasq": false`, turns it off).
    pub masquerade: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bridge: DEFAULT_BRIDGE.into(),
            subnet: DEFAULT_SUBNET.parse().expect("default subnet parses"),
            subnet6: None,
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            netns: None,
            metrics_addr: None,
            firewall: FirewallKind::Nft,
            mtu: None,
            reconcile_interval: Duration::from_secs(DEFAULT_RECONCILE_SECS),
            multicast_snooping: false,
            ipv6_localhost_relay: true,
            names: true,
            dns_search_domain: crate::names::DEFAULT_SEARCH_DOMAIN.into(),
            dns_resolv_conf: "/etc/resolv.conf".into(),
            dns_rate_limit: crate::names::RateLimit::default().per_second,
            overlay: OverlayConfig::default(),
            masquerade: true,
        }
    }
}

impl Config {
    /// Reads the file named by `args.config` (or the default path when it
    /// exists), then lays `args` (flags and environment) over it.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(read_file(path)?),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Some(read_file(Path::new(DEFAULT_CONFIG_PATH))?)
            }
            None => None,
        }
        .unwrap_or_default();
        Config::merge(file, args)
    }

    /// The file and the `WEFT_*` environment, no flags: what a library user
    /// (the CNI plugin in standalone mode) starts from.
    pub fn from_env() -> Result<Config, ConfigError> {
        #[derive(clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            args: ConfigArgs,
        }
        let parsed = <EnvOnly as clap::Parser>::try_parse_from(["netd"])
            .map_err(|e| ConfigError::Environment(e.to_string().trim().to_string()))?;
        Config::load(&parsed.args)
    }

    pub(crate) fn merge(file: FileConfig, args: &ConfigArgs) -> Result<Config, ConfigError> {
        let d = Config::default();
        let config = Config {
            bridge: args.bridge.clone().or(file.bridge).unwrap_or(d.bridge),
            subnet: args.subnet.or(file.subnet).unwrap_or(d.subnet),
            subnet6: args.subnet6.or(file.subnet6),
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or(d.state_dir),
            socket: args.socket.clone().or(file.socket).unwrap_or(d.socket),
            netns: args.netns.clone().or(file.netns),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            firewall: args.firewall.or(file.firewall).unwrap_or(d.firewall),
            mtu: args.mtu.or(file.mtu),
            reconcile_interval: Duration::from_secs(
                args.reconcile_interval_secs
                    .or(file.reconcile_interval_secs)
                    .unwrap_or(DEFAULT_RECONCILE_SECS),
            ),
            multicast_snooping: args
                .multicast_snooping
                .or(file.multicast_snooping)
                .unwrap_or(d.multicast_snooping),
            ipv6_localhost_relay: args
                .ipv6_localhost_relay
                .or(file.ipv6_localhost_relay)
                .unwrap_or(d.ipv6_localhost_relay),
            names: args.names.or(file.names).unwrap_or(d.names),
            dns_search_domain: args
                .dns_search_domain
                .clone()
                .or(file.dns_search_domain)
                .unwrap_or(d.dns_search_domain),
            dns_resolv_conf: args
                .dns_resolv_conf
                .clone()
                .or(file.dns_resolv_conf)
                .unwrap_or(d.dns_resolv_conf),
            dns_rate_limit: args
                .dns_rate_limit
                .or(file.dns_rate_limit)
                .unwrap_or(d.dns_rate_limit),
            overlay: OverlayConfig::merge(file.overlay, &args.overlay),
            masquerade: true,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what the kernel or the IPAM would otherwise reject later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        plumb::validate_ifname(&self.bridge).map_err(|e| ConfigError::Value {
            key: "bridge",
            value: self.bridge.clone(),
            why: e.to_string(),
        })?;
        check_subnet("subnet", IpNetwork::V4(self.subnet), 30)?;
        if let Some(s6) = self.subnet6 {
            if s6.prefix() < 64 {
                return Err(ConfigError::Value {
                    key: "subnet6",
                    value: s6.to_string(),
                    why: "prefix must be 64 or longer".into(),
                });
            }
            check_subnet("subnet6", IpNetwork::V6(s6), 126)?;
        }
        if let Some(mtu) = self.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(ConfigError::Value {
                    key: "mtu",
                    value: mtu.to_string(),
                    why: "must be between 576 and 65535".into(),
                });
            }
        }
        self.overlay.validate(self.subnet)?;
        names::validate(&self.dns_search_domain, self.dns_rate_limit)?;
        if self.reconcile_interval.is_zero() {
            return Err(ConfigError::Value {
                key: "reconcile_interval_secs",
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The gateway: the subnet's first address, on the bridge.
    pub fn gateway4(&self) -> std::net::Ipv4Addr {
        crate::ipam::gateway(IpNetwork::V4(self.subnet))
            .to_string()
            .parse()
            .expect("an IPv4 subnet has an IPv4 gateway")
    }

    /// Where the overlay's private key lives (see [`OverlayConfig::key_file`]).
    pub fn overlay_key_file(&self) -> PathBuf {
        self.overlay.key_file(&self.state_dir)
    }

    /// The subnets containers get addresses from, IPv4 first.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        let mut subnets = vec![IpNetwork::V4(self.subnet)];
        subnets.extend(self.subnet6.map(IpNetwork::V6));
        subnets
    }
}

fn check_subnet(key: &'static str, subnet: IpNetwork, longest: u8) -> Result<(), ConfigError> {
    if subnet.ip() != subnet.network() {
        return Err(ConfigError::Value {
            key,
            value: subnet.to_string(),
            why: format!(
                "is not a network address; did you mean {}/{}?",
                subnet.network(),
                subnet.prefix()
            ),
        });
    }
    if subnet.prefix() > longest {
        return Err(ConfigError::Value {
            key,
            value: subnet.to_string(),
            why: format!("is too small for containers; use a prefix of {longest} or shorter"),
        });
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses netd.toml, turning toml's error into "file, line, key: problem".
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let start = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
        let line = text[..start].matches('\n').count() + 1;
        let line_text = text.lines().nth(line - 1).unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with('['));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            key,
            message: e.message().trim().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        parse_file(Path::new("/etc/weft/netd.toml"), text)
    }

    #[test]
    fn broken_files_name_file_line_and_key() {
        let err = parse("bridge = \"weft0\"\nsubnet = \"10.1.0.0/99\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config file /etc/weft/netd.toml, line 2, key `subnet`:"),
            "{err}"
        );
        let err = parse("\n\nbrige = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("line 3, key `brige`"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        let err = parse("mtu = \"big\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1, key `mtu`"), "{err}");
        let err = parse("bridge = \n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file = parse("bridge = \"br-file\"\nsubnet = \"10.5.0.0/24\"\nmtu = 1400\n").unwrap();
        let args = ConfigArgs {
            bridge: Some("br-flag".into()),
            ..Default::default()
        };
        let c = Config::merge(file, &args).unwrap();
        assert_eq!(c.bridge, "br-flag");
        assert_eq!(c.subnet.to_string(), "10.5.0.0/24");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.gateway4().to_string(), "10.5.0.1");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn the_ipv6_localhost_relay_is_on_unless_turned_off() {
        let c = Config::merge(FileConfig::default(), &ConfigArgs::default()).unwrap();
        assert!(c.ipv6_localhost_relay);
        let file = parse("ipv6_localhost_relay = false\n").unwrap();
        let c = Config::merge(file, &ConfigArgs::default()).unwrap();
        assert!(!c.ipv6_localhost_relay);
        let file = parse("ipv6_localhost_relay = false\n").unwrap();
        let args = ConfigArgs {
            ipv6_localhost_relay: Some(true),
            ..Default::default()
        };
        assert!(Config::merge(file, &args).unwrap().ipv6_localhost_relay);
    }

    #[test]
    fn the_environment_is_read_without_flags() {
        // Only this test sets these variables in this process.
        std::env::set_var("WEFT_BRIDGE", "br-envtest");
        std::env::set_var("WEFT_SUBNET", "10.99.0.0/24");
        let c = Config::from_env();
        std::env::set_var("WEFT_SUBNET", "10.99.0.0/99");
        let bad = Config::from_env();
        std::env::remove_var("WEFT_BRIDGE");
        std::env::remove_var("WEFT_SUBNET");
        let c = c.unwrap();
        assert_eq!(
            (c.bridge.as_str(), c.subnet.to_string()),
            ("br-envtest", "10.99.0.0/24".into())
        );
        let bad = bad.unwrap_err().to_string();
        assert!(
            bad.contains("WEFT_* environment") && bad.contains("10.99.0.0/99"),
            "{bad}"
        );
    }

    #[test]
    fn values_are_checked() {
        let bad = |text: &str| {
            Config::merge(parse(text).unwrap(), &ConfigArgs::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("subnet = \"10.5.0.7/24\"").contains("did you mean 10.5.0.0/24"));
        assert!(bad("subnet = \"10.5.0.0/31\"").contains("too small"));
        assert!(bad("bridge = \"a-very-long-bridge-name\"").contains("at most 15"));
        assert!(bad("mtu = 100").contains("between 576"));
        assert!(bad("subnet6 = \"fd00::/48\"").contains("64 or longer"));
    }
}
