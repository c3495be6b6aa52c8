//! Container endpoints: a container's veth pair on the bridge, its
//! addresses and routes, and its record in the state.
//!
//! - `attach.rs`: attach a container; `detach.rs`: detach one;
//! - `check.rs`: CNI's CHECK, and how an endpoint looks in the kernel;
//! - `extras.rs`: routes and bridge addresses a caller asks for beside
//!   netd's own (a CNI IPAM plugin's);
//! - `reconcile.rs`: make the kernel match the state (full and quick);
//! - `gc.rs`: CNI's GC; `reaper.rs`: the daemon's background link deletion;
//! - `request.rs`: what callers send and get back; `pause.rs`: a test knob.
//!
//! Crash safety: the endpoint is written to the state (phase `attaching`,
//! with the owning process) together with its address reservations *before*
//! any link exists, and marked `attached` only when everything is in place.
//! A process killed in between leaves a record that reconciliation rolls
//! back, so a container is either fully attached or not at all.

mod attach;
mod check;
mod detach;
mod extras;
mod gc;
mod pause;
mod reaper;
mod reconcile;
mod request;

use std::sync::Arc;

pub use crate::state::ContainerRoute;
pub use gc::GcReport;
pub use pause::{TestPauses, PAUSE_ENV};
pub use reaper::{Reaper, REAP_GROUP};
pub use reconcile::ReconcileReport;
pub use request::{
    host_ifname, AssignedAddresses, AttachRequest, AttachResult, CheckExpected, DetachReport,
    InterfaceInfo, IpInfo, Ipv4Range, RouteInfo, ALIAS_PREFIX, DEFAULT_IFNAME, HOST_IFNAME_PREFIX,
};

use crate::action::Action;
use crate::error::Result;
use crate::host::Host;
use crate::ports::{LocalhostRelay, Ports};
use crate::state::Endpoint;

/// Attaches, detaches, checks and reconciles containers' endpoints.
/// Cheap to clone: the reaper's thread holds a clone.
#[derive(Clone)]
pub struct Endpoints {
    host: Arc<Host>,
    ports: Arc<Ports>,
    pauses: Arc<TestPauses>,
}

/// What a long-running process lends an endpoint operation: the reaper
/// that deletes detached containers' links in the background, and the
/// `[::1]` relay of published ports. A library caller has neither
/// (`Background::default()`): its detach deletes the links before it
/// returns, and nothing relays.
#[derive(Clone, Copy, Default)]
pub struct Background<'a> {
    pub reaper: Option<&'a Reaper>,
    pub relay: Option<&'a LocalhostRelay>,
}

impl Background<'_> {
    /// Whether the reaper still holds `id` (it is `detaching`, on purpose).
    fn is_reaping(&self, id: &str) -> bool {
        self.reaper.is_some_and(|r| r.is_pending(id))
    }

    /// The containers the reaper has yet to finish, as one consistent set.
    fn reaping_now(&self) -> std::collections::BTreeSet<String> {
        self.reaper.map(|r| r.pending_now()).unwrap_or_default()
    }

    /// An attach that collided with a pending detach waits for the reaper.
    fn reaper_busy(&self) -> bool {
        self.reaper.is_some_and(|r| r.any_pending())
    }
}

impl Endpoints {
    /// `pauses`: the test knob, read once by whoever opens the network.
    pub fn new(host: Arc<Host>, ports: Arc<Ports>, pauses: TestPauses) -> Endpoints {
        Endpoints {
            host,
            ports,
            pauses: Arc::new(pauses),
        }
    }

    /// Makes sure the host is ready for containers: the bridge with its
    /// gateways and forwarding (the core's), and the NAT rules (the ports').
    pub async fn ensure_host(&self) -> Result<Vec<Action>> {
        let actions = self.host.ensure_bridge().await?;
        self.ports.ensure_rules().await?;
        Ok(actions)
    }

    /// `ensure_host` only when the bridge or a gateway address is missing:
    /// what an attach calls, so that the first attach without a daemon (a CNI
    /// plugin in standalone mode) sets the host up, and later ones cost nothing.
    pub async fn ensure_host_once(&self) -> Result<()> {
        // Looked at once per process: the address dump grows with the links
        // in the namespace. Later damage is the periodic check's job.
        if self.host.is_ready() {
            return Ok(());
        }
        if !self.host.bridge_looks_ready().await? {
            self.ensure_host().await?;
        }
        self.host.set_ready(true);
        Ok(())
    }

    /// The endpoints netd knows, attached or in flight.
    pub fn list(&self) -> Result<Vec<Endpoint>> {
        Ok(self
            .host
            .store()
            .read()?
            .endpoints
            .values()
            .map(|ep| (**ep).clone())
            .collect())
    }

    /// The attach result of an attached container, for CNI's CHECK and GET.
    pub fn get(&self, key: &str) -> Result<Option<AttachResult>> {
        Ok(self
            .host
            .store()
            .read_with(|s| s.find(key).map(AttachResult::from))?)
    }
}
