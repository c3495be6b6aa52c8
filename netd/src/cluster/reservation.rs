//! This host's reservation, kept in the state directory when the daemon
//! joins: the CNI plugin's standalone mode takes the host's subnets from it
//! (it has no store client), and `netd status` can name it with the store down.

use std::path::Path;

use ::overlay::cluster::{ClusterConfig, HostRecord, KeptSubnets};
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's name inside the state directory.
pub const RESERVATION_FILE: &str = "cluster-reservation.json";

/// What the store gave this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub host_id: String,
    pub host_name: String,
    pub subnet: Ipv4Network,
    #[serde(default)]
    pub subnet6: Option<Ipv6Network>,
    pub cluster_range: Ipv4Network,
    #[serde(default)]
    pub cluster_range6: Option<Ipv6Network>,
    pub overlay_port: u16,
}

impl Reservation {
    pub fn of(record: &HostRecord, cluster: &ClusterConfig) -> Reservation {
        Reservation {
            host_id: record.id.to_string(),
            host_name: record.name.clone(),
            subnet: record.ipv4_subnet,
            subnet6: record.ipv6_subnet,
            cluster_range: cluster.ipv4_range,
            cluster_range6: cluster.ipv6_range,
            overlay_port: cluster.overlay_port,
        }
    }

    /// The subnets to keep at the next join; `strict` when containers run
    /// on them already (a start without the store).
    pub fn kept(&self, strict: bool) -> KeptSubnets {
        KeptSubnets {
            ipv4: self.subnet,
            ipv6: self.subnet6,
            strict,
        }
    }

    /// Writes the file atomically (aside, synced, renamed into place).
    pub fn write(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(RESERVATION_FILE);
        std::fs::create_dir_all(state_dir)
            .and_then(|()| {
                let text = serde_json::to_vec_pretty(self).expect("a reservation serializes");
                crate::atomic_file::write(&path, &text, 0o600)
            })
            .map_err(|e| {
                Error::Setup(format!(
                    "cluster: write the reservation to {}: {e}",
                    path.display()
                ))
            })
    }

    /// The reservation in `state_dir`; None when this host never joined a cluster.
    pub fn read(state_dir: &Path) -> Result<Option<Reservation>> {
        let path = state_dir.join(RESERVATION_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::InvalidInput(format!(
                    "cluster reservation {}: {e}; start netd with the store to rewrite it",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Setup(format!(
                "read the cluster reservation {}: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_round_trips_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Reservation::read(dir.path()).unwrap(), None);
        let r = Reservation {
            host_id: "0123456789abcdef0123456789abcdef".into(),
            host_name: "a".into(),
            subnet: "10.96.3.0/24".parse().unwrap(),
            subnet6: Some("fd96:0:0:3::/64".parse().unwrap()),
            cluster_range: "10.96.0.0/16".parse().unwrap(),
            cluster_range6: Some("fd96::/48".parse().unwrap()),
            overlay_port: 51820,
        };
        r.write(dir.path()).unwrap();
        assert_eq!(Reservation::read(dir.path()).unwrap(), Some(r));
        std::fs::write(dir.path().join(RESERVATION_FILE), "{").unwrap();
        let e = Reservation::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains(RESERVATION_FILE), "{e}");
    }
}
