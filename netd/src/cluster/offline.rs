//! A start while the store is down. A host that joined before runs from
//! what it saved: its reservation (its subnets, the cluster's range and
//! port) and its last view (its own record and every peer with its routes),
//! so its containers keep their addresses and cross-host paths carry on —
//! flannel and netmaker hosts lose the network until their store is back.
//! It joins in the background once the store answers, keeping exactly the
//! subnets it runs on: one another host took meanwhile (it was forgotten,
//! or its reservation expired) is an error it reports, never a new subnet.
//! A host that never joined needs the store: it has nothing to run from.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::overlay::cluster::{HostAdvert, HostRecord, HostView};
use ::overlay::store::StoreError;
use ipnetwork::IpNetwork;
use plumb::Netns;

use super::saved_view::{SavedView, SAVED_VIEW_FILE};
use super::start::{advertised_endpoint, apply_reservation, check_given_subnets, member_of, Start};
use super::{ClusterHost, Reservation, RESERVATION_FILE};
use crate::config::Config;
use crate::error::{Error, Result};

/// The longest wait between two tries to join once the store is back.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Starts from the saved reservation and view; `cause` is why the store
/// could not be read.
pub(super) fn start(
    config: &mut Config,
    host_ns: &Netns,
    start: Start,
    cause: StoreError,
) -> Result<ClusterHost> {
    let store = start.settings.endpoints.join(",");
    let dir = config.state_dir.display().to_string();
    let cannot = |what: String| {
        Error::Setup(format!(
            "cluster: the store {store} does not answer ({cause}) and this host cannot start without it: {what}"
        ))
    };
    let Some(reservation) = start.saved.clone() else {
        return Err(cannot(format!(
            "it has no reservation in {dir}/{RESERVATION_FILE} (it never joined: its first start needs the store)"
        )));
    };
    let Some(saved) = SavedView::read(&config.state_dir, &start.id)? else {
        return Err(cannot(format!(
            "it has no saved view in {dir}/{SAVED_VIEW_FILE} (written while netd runs with the store)"
        )));
    };
    let Some(cluster) = saved.view.config.clone() else {
        return Err(cannot(format!(
            "the saved view {dir}/{SAVED_VIEW_FILE} holds no cluster config"
        )));
    };
    let record = match saved.view.hosts.get(&start.id) {
        Some(own) => record_of(own),
        None => {
            return Err(cannot(format!(
                "the saved view {dir}/{SAVED_VIEW_FILE} does not hold this host's record"
            )))
        }
    };
    if record.ipv4_subnet != reservation.subnet || record.ipv6_subnet != reservation.subnet6 {
        return Err(cannot(format!(
            "the saved view gives this host {:?} but its reservation {:?}; they were saved at different times",
            record.subnets(),
            [Some(IpNetwork::V4(reservation.subnet)), reservation.subnet6.map(IpNetwork::V6)]
        )));
    }
    check_given_subnets(config, Some(&record))?;
    apply_reservation(config, &record, &cluster)?;
    let endpoint = advertised_endpoint(config, &start.settings, host_ns, cluster.overlay_port)?;
    let advert = HostAdvert {
        name: start.name.clone(),
        public_key: start.key.public_key(),
        endpoint: Some(endpoint),
    };
    let age = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(saved.saved_at);
    tracing::warn!(
        host = %start.id,
        subnet = %record.ipv4_subnet,
        subnet6 = ?record.ipv6_subnet,
        peers = saved.view.hosts.len().saturating_sub(1),
        saved_secs_ago = age,
        "cluster: the store {store} does not answer ({cause}); running on the saved reservation and view, joining once it answers"
    );
    let member = member_of(config, &start);
    Ok(ClusterHost::new(
        config, start, member, advert, record, cluster, saved.view, false,
    ))
}

/// A host's record as the view last showed it.
fn record_of(host: &HostView) -> HostRecord {
    let ipv4 = host.subnets.iter().find_map(|s| match s {
        IpNetwork::V4(s) => Some(*s),
        IpNetwork::V6(_) => None,
    });
    let ipv6 = host.subnets.iter().find_map(|s| match s {
        IpNetwork::V6(s) => Some(*s),
        IpNetwork::V4(_) => None,
    });
    HostRecord {
        id: host.id.clone(),
        name: host.name.clone(),
        public_key: host.public_key.to_base64(),
        key_epoch: host.key_epoch,
        endpoint: host.endpoint.map(|e| e.to_string()),
        // A view's host always has its IPv4 subnet (the record requires it).
        ipv4_subnet: ipv4.expect("a host's view holds its IPv4 subnet"),
        ipv6_subnet: ipv6,
        reserved_until: host.reserved_until,
    }
}

impl ClusterHost {
    /// Joins once the store answers (tries with backoff), keeping the
    /// subnets this host runs on; then goes alive.
    pub(super) async fn join_when_the_store_answers(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.join_kept().await {
                Ok(record) => {
                    tracing::info!(
                        host = %self.id(),
                        subnet = %record.ipv4_subnet,
                        key_epoch = record.key_epoch,
                        "cluster: the store answers; joined with the subnets this host runs on"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        host = %self.id(),
                        "cluster: not joined yet, running on the saved view: {e}; trying again in about {backoff:?}"
                    );
                    *self.join_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(e.to_string());
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    async fn join_kept(&self) -> Result<HostRecord> {
        let stored = ::overlay::cluster::read_config(self.store.as_ref()).await?;
        if stored != self.cluster {
            return Err(Error::Conflict(format!(
                "cluster: the store's cluster config {stored:?} differs from the one this host runs with {:?}; a cluster's config is not changed in place",
                self.cluster
            )));
        }
        let held = self.record();
        let kept = Reservation::of(&held, &self.cluster).kept(true);
        let record = self.member.join_keeping(&self.advert, Some(&kept)).await?;
        Reservation::of(&record, &self.cluster).write(&self.state_dir)?;
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = record.clone();
        // Cleared before `joined` shows: a status never pairs them wrongly.
        *self.join_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.joined.store(true, Ordering::Release);
        // Not alive yet: the next try joins again (the same record) and
        // goes alive.
        if let Err(e) = self.go_alive_now().await {
            self.joined.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(record)
    }
}
