//! Attaching a container, netavark's order of work: validate everything
//! first, then act, and undo what was done when a later step fails.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::ports::PortMapping;
use ipnetwork::IpNetwork;
use plumb::{LinkChange, LinkOptions, MacAddr, Netlink, Netns, Route};

use super::request::{
    check_dns_names_free, check_unique, dns_names, host_ifname, validate_id, AssignedAddresses,
    AttachRequest, AttachResult, ALIAS_PREFIX, DEFAULT_IFNAME,
};
use super::{extras, Background, Endpoints};
use crate::error::{Error, KernelContext, Result};
use crate::ipam::IpamError;
use crate::ports;
use crate::state::{Endpoint, OwnerProcess, Phase};

/// True when the namespace has a default route via `gw`.
async fn has_default_via(nl: &Netlink, gw: IpAddr) -> Result<bool> {
    let routes = nl
        .routes(gw.is_ipv6(), false)
        .await
        .ctx(|| "list routes in the container")?;
    Ok(routes
        .iter()
        .any(|r| r.destination.is_none() && r.gateway == Some(gw)))
}

/// The default routes via `ep`'s gateways on its interface (`dev`, when
/// the caller has it at hand), in its namespace (`cnl`). A second interface
/// of the container on this network finds the route via the same gateway
/// there already (on the first): fine.
pub(super) async fn add_default_routes(
    cnl: &Netlink,
    ep: &Endpoint,
    dev: Option<&plumb::Link>,
) -> Result<()> {
    for gw in &ep.gateways {
        let route = Route {
            gateway: Some(*gw),
            dev: Some(ep.ifname.clone()),
            ipv6: gw.is_ipv6(),
            ..Default::default()
        };
        let added = match dev {
            Some(dev) => cnl.add_route_at(&route, dev).await,
            None => cnl.add_route(&route).await,
        };
        match added {
            Ok(()) => {}
            Err(e) if e.is_already_exists() && has_default_via(cnl, *gw).await? => {}
            Err(e) => {
                return Err(Error::kernel(
                    format!("attach container {}: add default route via {gw}", ep.name),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Addresses given by the caller: at least one, no `ip`/`ip6` beside them,
/// at most one gateway per family.
fn validate_assigned(name: &str, req: &AttachRequest, assigned: &AssignedAddresses) -> Result<()> {
    if assigned.ips.is_empty() {
        return Err(Error::InvalidInput(format!(
            "attach container {name}: assigned addresses are empty; give at least one or leave them to netd"
        )));
    }
    if req.ip.is_some() || req.ip6.is_some() {
        return Err(Error::InvalidInput(format!(
            "attach container {name}: ip/ip6 and assigned addresses exclude each other"
        )));
    }
    for v6 in [false, true] {
        if assigned
            .gateways
            .iter()
            .filter(|g| g.is_ipv6() == v6)
            .count()
            > 1
        {
            return Err(Error::InvalidInput(format!(
                "attach container {name}: more than one IPv{} gateway: {:?}",
                if v6 { 6 } else { 4 },
                assigned.gateways
            )));
        }
    }
    Ok(())
}

/// An attach request checked against the kernel and the state, before any change.
struct AttachPlan {
    id: String,
    name: String,
    netns: Netns,
    /// A connection into the container's namespace, opened once.
    container: Netlink,
    ifname: String,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
    ports: Vec<PortMapping>,
    /// What DNS answers for it, primary first.
    dns_names: Vec<String>,
}

impl Endpoints {
    /// Attaches a container: a veth whose container end is created directly
    /// in its namespace, addresses from the IPAM, default routes via the
    /// gateways. On failure nothing is left behind. With a reaper in `bg`, an
    /// attach that collides with a detach it is finishing waits for it.
    pub async fn attach(&self, req: AttachRequest, bg: Background<'_>) -> Result<AttachResult> {
        let _op = self.host.shared_op().await;
        // Looked at before the attempt too: the reaper may finish between
        // the collision and the look after it, and that attach must not fail.
        let reaper_was_busy = bg.reaper_busy();
        let result = match self.attach_locked(req.clone(), bg).await {
            // The id, name, interface or host link may still belong to a
            // detach the reaper is finishing: once it has, the way is clear.
            Err(Error::Conflict(e)) => {
                self.pauses.at("collided").await;
                match bg.reaper {
                    Some(reaper) if reaper_was_busy || bg.reaper_busy() => {
                        reaper.reaped().await;
                        self.attach_locked(req, bg).await
                    }
                    _ => Err(Error::Conflict(e)),
                }
            }
            other => other,
        };
        if result.is_err() {
            self.host.metrics().error("attach");
        }
        result
    }

    async fn attach_locked(&self, req: AttachRequest, bg: Background<'_>) -> Result<AttachResult> {
        let started = std::time::Instant::now();
        let step = |name: &str| {
            tracing::debug!(
                step = name,
                elapsed_us = started.elapsed().as_micros() as u64,
                "attach"
            )
        };
        let plan = self.validate_attach(&req).await?;
        step("validated");
        self.ensure_host_once().await?;
        step("host ready");
        let endpoint = self.reserve(&plan, &req)?;
        step("reserved");
        self.pauses.at("reserved").await;
        let peer = match self.plumb(&endpoint, &plan.container).await {
            Ok(peer) => peer,
            Err(e) => {
                // Perhaps the bridge went away: the next attach looks again.
                self.host.set_ready(false);
                self.roll_back(&endpoint, bg).await;
                return Err(e);
            }
        };
        step("plumbed");
        if !endpoint.ports.is_empty() {
            if let Err(e) = self.ports.add(&endpoint.ports).await {
                self.roll_back(&endpoint, bg).await;
                return Err(Error::kernel(
                    format!("attach container {}: publish its ports", endpoint.name),
                    e,
                ));
            }
        }
        let attached = self.host.store().update(|s| -> Result<Endpoint> {
            let mut ep = s.endpoint_mut(&endpoint.id).ok_or_else(|| {
                Error::Busy(format!(
                    "container {} was detached while it was being attached",
                    endpoint.name
                ))
            })?;
            ep.mac = peer.mac;
            ep.phase = Phase::Attached;
            Ok(ep.clone())
        });
        let attached = match attached {
            Ok(ep) => ep,
            Err(e) => {
                self.roll_back(&endpoint, bg).await;
                return Err(e);
            }
        };
        step("recorded");
        if let Some(relay) = bg.relay {
            relay.open(&attached.ports);
        }
        self.host.metrics().attached();
        tracing::info!(id = %attached.id, name = %attached.name, ips = ?attached.ips, "attached");
        let mut result = AttachResult::from(&attached);
        // What a CNI result reports of the host side, so that the plugin
        // need not look at the kernel itself.
        result.bridge_mac = self.bridge_mac().await;
        result.host_mac = Some(self.host.port_mac());
        result.mtu = Some(peer.mtu);
        Ok(result)
    }

    /// Everything that can be checked without changing anything.
    async fn validate_attach(&self, req: &AttachRequest) -> Result<AttachPlan> {
        let nl = self.host.netlink().await?;
        let config = self.host.config();
        let netns = Netns::resolve(&req.netns).map_err(|e| match e {
            plumb::Error::NamespaceNotFound(_) => Error::NotFound(format!(
                "attach: namespace {} not found — is the container still running?",
                req.netns
            )),
            other => Error::kernel(format!("attach: open namespace {}", req.netns), other),
        })?;
        let default_id = PathBuf::from(&req.netns)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| req.netns.clone());
        let id = req
            .id
            .clone()
            .or_else(|| req.name.clone())
            .unwrap_or(default_id);
        validate_id("id", &id)?;
        let name = req.name.clone().unwrap_or_else(|| id.clone());
        validate_id("name", &name)?;
        let ifname = req.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.into());
        plumb::validate_ifname(&ifname)
            .map_err(|e| Error::InvalidInput(format!("attach container {name}: {e}")))?;
        let mac = req
            .mac
            .as_deref()
            .map(MacAddr::parse_user)
            .transpose()
            .map_err(|e| Error::InvalidInput(format!("attach container {name}: {e}")))?;
        let mtu = req.mtu.or(self.host.container_mtu());
        if let Some(mtu) = mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(Error::InvalidInput(format!(
                    "attach container {name}: MTU {mtu} must be between 576 and 65535"
                )));
            }
        }
        if let Some(assigned) = &req.assigned {
            validate_assigned(&name, req, assigned)?;
        }
        extras::validate(&name, req, config, &self.host.gateways())?;
        if req.ip6.is_some() && config.subnet6.is_none() {
            return Err(Error::InvalidInput(format!(
                "attach container {name}: an IPv6 address was asked for but netd has no subnet6 configured"
            )));
        }
        let ports = req.ports.clone();
        let dns_names = dns_names(req, &id)?;
        // Looked at in place: copying the state would cost O(containers).
        self.host.store().read_with(|state| -> Result<()> {
            check_unique(state, &id, &name, &netns, &ifname)?;
            check_dns_names_free(state, &id, &dns_names)?;
            let requested = [
                req.ip
                    .map(|ip| (IpNetwork::V4(config.subnet), IpAddr::V4(ip))),
                req.ip6
                    .zip(config.subnet6)
                    .map(|(ip, s6)| (IpNetwork::V6(s6), IpAddr::V6(ip))),
            ];
            for (subnet, ip) in requested.into_iter().flatten() {
                match state.ipam.check(subnet, ip) {
                    Ok(()) => {}
                    Err(e @ IpamError::Taken { .. }) => {
                        return Err(Error::Conflict(format!("attach container {name}: {e}")))
                    }
                    Err(e) => {
                        return Err(Error::InvalidInput(format!("attach container {name}: {e}")))
                    }
                }
            }
            Ok(())
        })??;
        let host_if = host_ifname(&id);
        if nl
            .link(&host_if)
            .await
            .ctx(|| format!("attach container {name}: list links"))?
            .is_some()
        {
            return Err(Error::Conflict(format!(
                "attach container {name}: link {host_if} already exists in {} — run `netd reconcile` or remove it",
                self.host.netns().label()
            )));
        }
        let cnl = Netlink::open(&netns)
            .await
            .ctx(|| format!("attach container {name}: open netlink in {}", netns.label()))?;
        if cnl
            .link(&ifname)
            .await
            .ctx(|| format!("attach container {name}: list links"))?
            .is_some()
        {
            return Err(Error::Conflict(format!(
                "attach container {name}: link {ifname} already exists in namespace {}; choose another --ifname",
                netns.label()
            )));
        }
        Ok(AttachPlan {
            id,
            name,
            netns,
            container: cnl,
            ifname,
            mac,
            mtu,
            ports,
            dns_names,
        })
    }

    /// Records the endpoint as `attaching` and reserves its addresses, in one transaction.
    fn reserve(&self, plan: &AttachPlan, req: &AttachRequest) -> Result<Endpoint> {
        let owner = OwnerProcess::current();
        self.host.store().update(|state| -> Result<Endpoint> {
            // Checked again under the lock: another caller may have won the race.
            check_unique(state, &plan.id, &plan.name, &plan.netns, &plan.ifname)?;
            check_dns_names_free(state, &plan.id, &plan.dns_names)?;
            let (ips, gateways) = match &req.assigned {
                Some(assigned) => (assigned.ips.clone(), assigned.gateways.clone()),
                None => (self.allocate(state, plan, req)?, self.host.gateways()),
            };
            let ports = ports::bind_specs(&plan.name, &plan.ports, &ips)?;
            ports::check_conflicts(state, &plan.name, &ports)?;
            let endpoint = Endpoint {
                id: plan.id.clone(),
                name: plan.name.clone(),
                netns: plan.netns.path_buf().to_path_buf(),
                netns_inode: plan.netns.inode(),
                ifname: plan.ifname.clone(),
                host_ifname: host_ifname(&plan.id),
                mac: plan.mac,
                mtu: plan.mtu,
                ips,
                gateways,
                ports,
                routes: req.routes.clone(),
                bridge_addresses: req.bridge_addresses.clone(),
                dns_names: plan.dns_names.clone(),
                phase: Phase::Attaching { owner },
            };
            state
                .endpoints
                .insert(plan.id.clone(), std::sync::Arc::new(endpoint.clone()));
            Ok(endpoint)
        })
    }

    /// Reserves the endpoint's addresses from netd's own subnets (under the state lock).
    fn allocate(
        &self,
        state: &mut crate::state::State,
        plan: &AttachPlan,
        req: &AttachRequest,
    ) -> Result<Vec<IpNetwork>> {
        let mut ips = Vec::new();
        let subnet4 = IpNetwork::V4(self.host.config().subnet);
        let ip4 = match (req.ip, req.ip_range) {
            (None, Some(r)) => state.ipam.allocate_in_range(
                subnet4,
                &plan.id,
                IpAddr::V4(r.first),
                IpAddr::V4(r.last),
            )?,
            (ip, _) => state.ipam.allocate(subnet4, &plan.id, ip.map(IpAddr::V4))?,
        };
        ips.push(IpNetwork::new(ip4, subnet4.prefix()).expect("subnet prefix"));
        if let Some(s6) = self.host.config().subnet6 {
            let s6 = IpNetwork::V6(s6);
            let ip6 = state.ipam.allocate(s6, &plan.id, req.ip6.map(IpAddr::V6))?;
            ips.push(IpNetwork::new(ip6, s6.prefix()).expect("subnet prefix"));
        }
        Ok(ips)
    }

    /// Creates the veth pair, plugs it into the bridge and configures the
    /// container side, through `cnl`, a connection into the container's
    /// namespace, with the extra routes and bridge addresses the endpoint
    /// records. Returns the container interface as created.
    ///
    /// The host end goes up last. Only then has the pair a carrier, and the
    /// kernel's work for a carrier coming up on a bridge port (enabling the
    /// port: a walk over every port, and notifications naming the peer's
    /// namespace, a walk over every container namespace) is done by its
    /// link-state worker while netd records the attach, instead of holding
    /// up the container's addresses and routes behind it. Until then the
    /// container's link has no carrier, which addresses and routes do not
    /// need; the worker runs within a fraction of a millisecond.
    pub(super) async fn plumb(&self, ep: &Endpoint, cnl: &Netlink) -> Result<plumb::Link> {
        let nl = self.host.netlink().await?;
        let ctx = |step: &str| format!("attach container {}: {step}", ep.name);
        self.add_bridge_addresses(&nl, ep).await?;
        let bridge = self.host.bridge_index(&nl).await?;
        let host_opts = LinkOptions {
            up: false,
            mtu: ep.mtu,
            mac: Some(self.host.port_mac()),
            // Plugged into the bridge in the same request.
            controller: Some(bridge),
            ..Default::default()
        };
        let peer_opts = LinkOptions {
            up: true,
            mtu: ep.mtu,
            mac: ep.mac,
            // On an IPv4-only network the container's link-local address
            // served nothing, and its duplicate address detection, router
            // solicitations and multicast reports were flooded to every
            // port: each attach cost more with every container attached
            // (3.2 → 12.7 ms from the first to the last 100 of 1000).
            no_ipv6_link_local: !ep.ips.iter().any(|ip| ip.is_ipv6()),
            ..Default::default()
        };
        let mut created = nl
            .add_veth_beside(&ep.host_ifname, &host_opts, cnl, &ep.ifname, &peer_opts)
            .await;
        if matches!(&created, Err(e) if !matches!(e, plumb::Error::BridgeFull(_))) {
            // The bridge may have been made anew since its index was noted
            // (by someone else, before the periodic check saw it): look at
            // the host again, and try once more if the bridge did change.
            self.host.set_ready(false);
            self.host.forget_bridge_index();
            self.ensure_host_once().await?;
            let fresh = self.host.bridge_index(&nl).await?;
            if fresh != bridge {
                let host_opts = LinkOptions {
                    controller: Some(fresh),
                    ..host_opts
                };
                created = nl
                    .add_veth_beside(&ep.host_ifname, &host_opts, cnl, &ep.ifname, &peer_opts)
                    .await;
            }
        }
        let peer = match created {
            Ok(peer) => peer,
            Err(plumb::Error::BridgeFull(_)) => {
                return Err(Error::Conflict(ctx(&format!(
                    "bridge {} is full: a Linux bridge takes at most {} containers; attach more to another netd network (its own --bridge and --subnet)",
                    self.host.config().bridge,
                    plumb::BRIDGE_MAX_PORTS
                ))));
            }
            Err(e) => return Err(Error::kernel(ctx("create veth"), e)),
        };
        // A bridge port needs no IPv6 of its own (the bridge holds the
        // gateway). Without it the kernel keeps no link-local address and
        // route per port: their upkeep, a walk of the whole IPv6 routing table
        // at every link change, made each attach and detach cost more with
        // every container attached. Turned off while the link is down.
        let no_ipv6 = format!("net/ipv6/conf/{}/disable_ipv6", ep.host_ifname);
        // A kernel booted without IPv6 has nothing to turn off.
        if std::path::Path::new("/proc/sys/net/ipv6/conf").exists() {
            plumb::sysctl::write(self.host.netns(), &no_ipv6, "1")
                .ctx(|| ctx(&format!("turn off IPv6 on {}", ep.host_ifname)))?;
        }
        self.pauses.at("veth").await;
        for ip in &ep.ips {
            cnl.add_address_at(&peer, *ip, true)
                .await
                .ctx(|| ctx("add address"))?;
        }
        self.pauses.at("addressed").await;
        add_default_routes(cnl, ep, Some(&peer)).await?;
        extras::add_routes(cnl, ep, &peer).await?;
        // Up, with its alias and hairpin mode (a container reaching its own
        // published port through the host address comes back in by the port
        // it went out by), in one request to the link by its name.
        let host_end = LinkChange {
            up: Some(true),
            alias: Some(format!("{ALIAS_PREFIX}{}", ep.id)),
            hairpin: Some(true),
            ..Default::default()
        };
        nl.set_link(&ep.host_ifname, &host_end).await.ctx(|| {
            ctx(&format!(
                "bring {} up on bridge {}",
                ep.host_ifname,
                self.host.config().bridge
            ))
        })?;
        if peer.mac.is_none() {
            return Err(Error::kernel(
                ctx("read its MAC"),
                plumb::Error::Other("the kernel reported no MAC for the interface".into()),
            ));
        }
        Ok(peer)
    }

    /// The bridge's MAC as the kernel has it now (one request for one link);
    /// none when it cannot be read, which the result can do without.
    async fn bridge_mac(&self) -> Option<MacAddr> {
        let nl = self.host.netlink().await.ok()?;
        let bridge = nl.link(&self.host.config().bridge).await.ok()??;
        bridge.mac
    }

    /// Undoes a failed attach; errors are logged, the caller reports the first failure.
    async fn roll_back(&self, ep: &Endpoint, bg: Background<'_>) {
        if let Err(e) = self.remove_endpoint(ep, bg.relay).await {
            tracing::error!(id = %ep.id, error = %e, "rolling back a failed attach left something behind; `netd reconcile` retries");
        }
    }
}
