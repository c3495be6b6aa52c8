//! The `[cluster]` section: the store a cluster host joins through, how it
//! names and advertises itself, and the liveness lease. Without `store`,
//! netd runs standalone (a static `[[overlay.peer]]` list still works).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The default liveness lease: peers show a dead host within about 15 s.
pub const DEFAULT_LIVENESS_TTL_SECS: u64 = 10;

/// `[cluster]` as written in netd.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub store: Option<String>,
    pub store_ca: Option<PathBuf>,
    pub store_cert: Option<PathBuf>,
    pub store_key: Option<PathBuf>,
    pub store_user: Option<String>,
    /// A file holding the store user's password (read at start).
    pub password_file: Option<PathBuf>,
    pub host_name: Option<String>,
    pub endpoint: Option<String>,
    pub liveness_ttl: Option<u64>,
    pub reservation_expiry: Option<u64>,
}

/// The `[cluster]` keys as flags, each also read from its `WEFT_*` variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Join the cluster in this store: etcd://HOST:2379[,etcd://HOST2:2379…].
    #[arg(long, env = "WEFT_STORE")]
    pub store: Option<String>,
    /// The CA that signed the store's certificate (turns TLS on).
    #[arg(long, env = "WEFT_STORE_CA")]
    pub store_ca: Option<PathBuf>,
    /// A client certificate for the store.
    #[arg(long, env = "WEFT_STORE_CERT")]
    pub store_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, env = "WEFT_STORE_KEY")]
    pub store_key: Option<PathBuf>,
    /// The store's user; the password comes from WEFT_STORE_PASSWORD or [cluster] password_file.
    #[arg(long, env = "WEFT_STORE_USER")]
    pub store_user: Option<String>,
    /// This host's name in the cluster (default: the hostname).
    #[arg(long, env = "WEFT_HOST_NAME")]
    pub host_name: Option<String>,
    /// The overlay endpoint advertised to peers, IP[:PORT] (default: the
    /// underlay address of the route towards the store).
    #[arg(long, env = "WEFT_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Seconds of the liveness lease (below 5 only for tests).
    #[arg(long, env = "WEFT_CLUSTER_LIVENESS_TTL")]
    pub liveness_ttl: Option<u64>,
}

/// Where the store is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreSettings {
    /// `host:port` of each etcd endpoint, without the scheme.
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    /// Never serialized or logged.
    #[serde(skip)]
    pub password: Option<String>,
}

/// The resolved `[cluster]` section.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSection {
    /// None: no cluster.
    pub store: Option<StoreSettings>,
    pub host_name: Option<String>,
    /// The advertised endpoint's address and, when given, port.
    pub endpoint: Option<(IpAddr, Option<u16>)>,
    pub liveness_ttl: Duration,
    pub reservation_expiry: Option<Duration>,
    /// The `subnet`/`subnet6` keys as given (not defaulted): with a store
    /// they must be absent or equal to the reservation.
    pub given_subnet: Option<Ipv4Network>,
    pub given_subnet6: Option<Ipv6Network>,
}

impl Default for ClusterSection {
    fn default() -> ClusterSection {
        ClusterSection {
            store: None,
            host_name: None,
            endpoint: None,
            liveness_ttl: Duration::from_secs(DEFAULT_LIVENESS_TTL_SECS),
            reservation_expiry: None,
            given_subnet: None,
            given_subnet6: None,
        }
    }
}

/// Parses `etcd://HOST:PORT[,etcd://…]` into `host:port` endpoints.
pub fn parse_store(text: &str) -> Result<Vec<String>, ConfigError> {
    let bad = |why: String| ConfigError::Value {
        key: "cluster.store",
        value: text.to_string(),
        why,
    };
    let mut endpoints = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let rest = part.strip_prefix("etcd://").ok_or_else(|| {
            bad(format!(
                "{part:?} is not an etcd URL; write etcd://HOST:2379"
            ))
        })?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(bad(format!("{part:?} needs HOST:PORT after etcd://")));
        }
        let with_port = if rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok())
        {
            rest.to_string()
        } else {
            format!("{rest}:2379")
        };
        endpoints.push(with_port);
    }
    if endpoints.is_empty() {
        return Err(bad("names no endpoint; write etcd://HOST:2379".into()));
    }
    Ok(endpoints)
}

/// Parses an advertised endpoint, `IP` or `IP:PORT` (`[v6]:PORT`).
pub fn parse_endpoint(text: &str) -> Result<(IpAddr, Option<u16>), ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    text.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| ConfigError::Value {
            key: "cluster.endpoint",
            value: text.into(),
            why: "not an IP address or IP:PORT, e.g. 198.18.0.2 or 198.18.0.2:51820".into(),
        })
}

impl ClusterSection {
    /// Lays the flags and environment over the file; reads the password.
    pub fn merge(
        file: Option<ClusterFile>,
        args: &ClusterArgs,
        given_subnet: Option<Ipv4Network>,
        given_subnet6: Option<Ipv6Network>,
    ) -> Result<ClusterSection, ConfigError> {
        let file = file.unwrap_or_default();
        let store = match args.store.clone().or(file.store) {
            None => None,
            Some(text) => {
                let password = match std::env::var("WEFT_STORE_PASSWORD") {
                    Ok(p) => Some(p),
                    Err(_) => match &file.password_file {
                        Some(path) => Some(
                            std::fs::read_to_string(path)
                                .map_err(|e| ConfigError::Value {
                                    key: "cluster.password_file",
                                    value: path.display().to_string(),
                                    why: format!("cannot be read: {e}"),
                                })?
                                .trim_end_matches(['\n', '\r'])
                                .to_string(),
                        ),
                        None => None,
                    },
                };
                Some(StoreSettings {
                    endpoints: parse_store(&text)?,
                    ca: args.store_ca.clone().or(file.store_ca),
                    cert: args.store_cert.clone().or(file.store_cert),
                    key: args.store_key.clone().or(file.store_key),
                    user: args.store_user.clone().or(file.store_user),
                    password,
                })
            }
        };
        let endpoint = args
            .endpoint
            .clone()
            .or(file.endpoint)
            .map(|e| parse_endpoint(&e))
            .transpose()?;
        let ttl = args
            .liveness_ttl
            .or(file.liveness_ttl)
            .unwrap_or(DEFAULT_LIVENESS_TTL_SECS);
        if ttl == 0 {
            return Err(ConfigError::Value {
                key: "cluster.liveness_ttl",
                value: "0".into(),
                why: "must be at least 1 (10 in production)".into(),
            });
        }
        let config = ClusterSection {
            store,
            host_name: args.host_name.clone().or(file.host_name),
            endpoint,
            liveness_ttl: Duration::from_secs(ttl),
            reservation_expiry: file.reservation_expiry.map(Duration::from_secs),
            given_subnet,
            given_subnet6,
        };
        if let Some(s) = &config.store {
            if s.cert.is_some() != s.key.is_some() {
                return Err(ConfigError::Value {
                    key: "cluster.store_cert",
                    value: format!("{:?}", s.cert),
                    why: "a client certificate needs its key (--store-key) and the other way round"
                        .into(),
                });
            }
            if s.user.is_some() && s.password.is_none() {
                return Err(ConfigError::Value {
                    key: "cluster.store_user",
                    value: s.user.clone().unwrap_or_default(),
                    why: "needs a password: set WEFT_STORE_PASSWORD or [cluster] password_file"
                        .into(),
                });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_with_a_default_port() {
        assert_eq!(
            parse_store("etcd://10.0.0.1:2379,etcd://etcd-b").unwrap(),
            vec!["10.0.0.1:2379".to_string(), "etcd-b:2379".to_string()]
        );
        let e = parse_store("http://10.0.0.1:2379").unwrap_err().to_string();
        assert!(e.contains("not an etcd URL"), "{e}");
        assert!(parse_store("").is_err());
    }

    #[test]
    fn endpoints_take_an_optional_port() {
        assert_eq!(
            parse_endpoint("198.18.0.2").unwrap(),
            ("198.18.0.2".parse().unwrap(), None)
        );
        assert_eq!(
            parse_endpoint("198.18.0.2:4000").unwrap(),
            ("198.18.0.2".parse().unwrap(), Some(4000))
        );
        assert!(parse_endpoint("host-a").is_err());
    }

    #[test]
    fn a_user_without_a_password_is_refused() {
        let args = ClusterArgs {
            store: Some("etcd://10.0.0.1:2379".into()),
            store_user: Some("weft".into()),
            ..Default::default()
        };
        if std::env::var("WEFT_STORE_PASSWORD").is_err() {
            let e = ClusterSection::merge(None, &args, None, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("WEFT_STORE_PASSWORD"), "{e}");
        }
    }
}
