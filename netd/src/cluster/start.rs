//! What a start reads before it joins: the store's client from `[cluster]`,
//! this host's membership and the endpoint it advertises, and the checks
//! that keep netd.toml's `subnet`/`subnet6` keys from contradicting the
//! reservation.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;

use ::overlay::cluster::{HostId, HostRecord, Member, SystemClock, Timing};
use ::overlay::store::{EtcdConfig, EtcdStore, EtcdTls};
use plumb::Netns;

use super::reservation::Reservation;
use crate::config::cluster::StoreSettings;
use crate::config::Config;
use crate::error::{Error, Result};

/// What a start needs, with or without the store.
pub(super) struct Start {
    pub store: Arc<EtcdStore>,
    pub settings: StoreSettings,
    pub id: HostId,
    pub key: ::overlay::PrivateKey,
    pub name: String,
    /// The reservation this host saved at its last join, if it is this host's.
    pub saved: Option<Reservation>,
}

/// Opens the store described by `[cluster]`.
pub fn open_store(settings: &StoreSettings) -> Result<EtcdStore> {
    let scheme = if settings.ca.is_some() {
        "https"
    } else {
        "http"
    };
    let mut config = EtcdConfig::new(
        settings
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect(),
    );
    if let Some(ca) = &settings.ca {
        config.tls = Some(EtcdTls {
            ca: ca.clone(),
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        });
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        config.user = Some((user.clone(), password.clone()));
    }
    EtcdStore::new(config).map_err(|e| {
        Error::InvalidInput(format!(
            "cluster: open the store {}: {e}",
            settings.endpoints.join(",")
        ))
    })
}

/// This host's membership with the timings of `[cluster]`.
pub(super) fn member_of(config: &Config, start: &Start) -> Arc<Member<EtcdStore>> {
    let mut timing = Timing {
        liveness_ttl: config.cluster.liveness_ttl,
        ..Timing::default()
    };
    if let Some(expiry) = config.cluster.reservation_expiry {
        timing.reservation_expiry = expiry;
    }
    Arc::new(Member::new(
        start.store.clone(),
        start.id.clone(),
        timing,
        Arc::new(SystemClock),
    ))
}

/// `subnet`/`subnet6` keys are allowed only when they name the reservation
/// this host already holds: a new host gets its subnets from the store.
pub(super) fn check_given_subnets(config: &Config, held: Option<&HostRecord>) -> Result<()> {
    let given = config.cluster.given_subnet.map(|s| s.to_string());
    let given6 = config.cluster.given_subnet6.map(|s| s.to_string());
    if given.is_none() && given6.is_none() {
        return Ok(());
    }
    match held {
        Some(record) => {
            let mut reserved = config.clone();
            apply_reservation_keys(&mut reserved, record)
        }
        None => Err(Error::InvalidInput(format!(
            "cluster: the `subnet`/`subnet6` keys say {} but this host holds no reservation yet; \
             remove them from netd.toml/flags/WEFT_* (a cluster host's subnets come from the store)",
            [given, given6].into_iter().flatten().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Sets `config`'s subnets, overlay port and range from the reservation;
/// refuses `subnet`/`subnet6` keys that name other subnets.
pub(super) fn apply_reservation(
    config: &mut Config,
    record: &HostRecord,
    cluster: &::overlay::cluster::ClusterConfig,
) -> Result<()> {
    apply_reservation_keys(config, record)?;
    config.overlay.enabled = true;
    config.overlay.listen_port = cluster.overlay_port;
    config.overlay.cluster_range = cluster.ipv4_range;
    config.validate()?;
    Ok(())
}

/// Checks the given `subnet`/`subnet6` keys against `record` and sets the
/// reservation's subnets.
pub(super) fn apply_reservation_keys(config: &mut Config, record: &HostRecord) -> Result<()> {
    let refuse = |key: &str, given: String, reserved: String| {
        Error::InvalidInput(format!(
            "cluster: the `{key}` key says {given} but this host's reservation in the store is {reserved}; \
             remove `{key}` from netd.toml/flags/WEFT_* (a cluster host's subnets come from the store)"
        ))
    };
    if let Some(given) = config.cluster.given_subnet {
        if given != record.ipv4_subnet {
            return Err(refuse(
                "subnet",
                given.to_string(),
                record.ipv4_subnet.to_string(),
            ));
        }
    }
    if let Some(given) = config.cluster.given_subnet6 {
        if Some(given) != record.ipv6_subnet {
            return Err(refuse(
                "subnet6",
                given.to_string(),
                record
                    .ipv6_subnet
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "none (the cluster has no IPv6 range)".into()),
            ));
        }
    }
    config.subnet = record.ipv4_subnet;
    config.subnet6 = record.ipv6_subnet;
    Ok(())
}

/// The endpoint to advertise: `[cluster] endpoint`, else the address this
/// host's namespace would use towards the store (the route's source).
pub(super) fn advertised_endpoint(
    config: &Config,
    store: &StoreSettings,
    host_ns: &Netns,
    default_port: u16,
) -> Result<SocketAddr> {
    if let Some((ip, port)) = config.cluster.endpoint {
        return Ok(SocketAddr::new(ip, port.unwrap_or(default_port)));
    }
    let target = store
        .endpoints
        .iter()
        .filter_map(|e| e.to_socket_addrs().ok())
        .flatten()
        .next()
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "cluster: cannot resolve the store's address {} to find this host's underlay address; \
                 set --endpoint IP",
                store.endpoints.join(",")
            ))
        })?;
    let source = host_ns
        .run(move || -> std::io::Result<IpAddr> {
            let bind: SocketAddr = match target {
                SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
                SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
            };
            let socket = UdpSocket::bind(bind)?;
            // A UDP connect sends nothing: it only picks the route and its source.
            socket.connect(target)?;
            Ok(socket.local_addr()?.ip())
        })
        .map_err(|e| Error::kernel(format!("cluster: enter {}", host_ns.label()), e))?
        .map_err(|e| {
            Error::InvalidInput(format!(
                "cluster: no route from {} towards the store at {target}: {e}; set --endpoint IP",
                host_ns.label()
            ))
        })?;
    Ok(SocketAddr::new(source, default_port))
}

/// The kernel's host name (of this UTS namespace).
pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
