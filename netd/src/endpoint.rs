//! Attaching containers to the bridge and detaching them, netavark's order of
//! work: validate everything first, then act, and undo what was done when a
//! later step fails.
//!
//! Crash safety: the endpoint is written to the state (phase `attaching`,
//! with the owning process) together with its address reservations *before*
//! any link exists, and marked `attached` only when everything is in place.
//! A process killed in between leaves a record that reconciliation rolls
//! back, so a container is either fully attached or not at all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;
use md5::{Digest, Md5};
use plumb::firewall::{PortSpec, PublishedPort};
use plumb::{LinkOptions, MacAddr, Netlink, Netns, Route};
use serde::{Deserialize, Serialize};

use crate::error::{Error, KernelContext, Result};
use crate::ipam::IpamError;
use crate::network::Network;
use crate::state::{Endpoint, OwnerProcess, Phase};

/// The container interface's default name.
pub const DEFAULT_IFNAME: &str = "eth0";
/// Host ends of container veths are named `wv` + 12 hex digits of md5(id).
pub const HOST_IFNAME_PREFIX: &str = "wv";
/// The alias netd writes on the host end: `weft:<container id>`.
pub const ALIAS_PREFIX: &str = "weft:";
/// Test hook: `WEFT_DEBUG_PAUSE_ATTACH=reserved|veth|addressed` makes an
/// attach sleep 30 s after that step, so tests can kill netd mid-attach.
pub const PAUSE_ENV: &str = "WEFT_DEBUG_PAUSE_ATTACH";

/// What a caller asks for. Only `netns` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The container's namespace: a path, a name in /run/netns, or a PID.
    pub netns: String,
    /// Container id; defaults to the name, then to the namespace's file name.
    #[serde(default)]
    pub id: Option<String>,
    /// Unique human name; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Interface name inside the container; `eth0` by default.
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    /// `aa:bb:cc:dd:ee:ff`, or `U:<seed>` for a MAC derived from a seed.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Ports to publish: `[hostip:]hostport[-end]:ctrport[-end][/proto]`.
    #[serde(default)]
    pub ports: Vec<String>,
}

/// The outcome, shaped like a CNI result so the plugin can pass it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachResult {
    pub id: String,
    pub name: String,
    pub interfaces: Vec<InterfaceInfo>,
    pub ips: Vec<IpInfo>,
    pub routes: Vec<RouteInfo>,
    pub mac: Option<MacAddr>,
    pub ports: Vec<PublishedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub mac: Option<MacAddr>,
    /// The container namespace's path; None for the host end.
    pub sandbox: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpInfo {
    pub address: IpNetwork,
    pub gateway: IpAddr,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub dst: IpNetwork,
    pub gw: IpAddr,
}

impl From<&Endpoint> for AttachResult {
    fn from(ep: &Endpoint) -> AttachResult {
        let ips = ep
            .ips
            .iter()
            .map(|a| IpInfo {
                address: *a,
                gateway: gateway_for(ep, a),
                interface: 1,
            })
            .collect();
        let routes = ep
            .gateways
            .iter()
            .map(|gw| RouteInfo {
                dst: if gw.is_ipv6() {
                    "::/0".parse().expect("default route")
                } else {
                    "0.0.0.0/0".parse().expect("default route")
                },
                gw: *gw,
            })
            .collect();
        AttachResult {
            id: ep.id.clone(),
            name: ep.name.clone(),
            interfaces: vec![
                InterfaceInfo {
                    name: ep.host_ifname.clone(),
                    mac: None,
                    sandbox: None,
                },
                InterfaceInfo {
                    name: ep.ifname.clone(),
                    mac: ep.mac,
                    sandbox: Some(ep.netns.clone()),
                },
            ],
            ips,
            routes,
            mac: ep.mac,
            ports: ep.ports.clone(),
        }
    }
}

fn gateway_for(ep: &Endpoint, addr: &IpNetwork) -> IpAddr {
    ep.gateways
        .iter()
        .copied()
        .find(|g| g.is_ipv6() == addr.is_ipv6())
        .unwrap_or_else(|| crate::ipam::gateway(*addr))
}

/// What `detach` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachReport {
    /// The id or name asked for.
    pub container: String,
    /// False when nothing was attached under that id or name (detach is idempotent).
    pub found: bool,
    pub released: Vec<IpAddr>,
}

/// The host end's name for container `id`: ≤ 15 bytes, stable, and kept in
/// the state so teardown never has to recompute it.
pub fn host_ifname(id: &str) -> String {
    let digest = Md5::digest(id.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{HOST_IFNAME_PREFIX}{hex}")
}

/// Container ids and names: what CNI and runtimes use, nothing that breaks a path or a log line.
fn validate_id(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "container {what} {value:?} is not valid: use 1–253 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// An attach request checked against the kernel and the state, before any change.
struct AttachPlan {
    id: String,
    name: String,
    netns: Netns,
    ifname: String,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
    ports: Vec<PortSpec>,
}

async fn pause_if_asked(step: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|s| s == step) {
        tracing::warn!(step, "{PAUSE_ENV} is set: pausing the attach for 30 s");
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

impl Network {
    /// Attaches a container: a veth whose container end is created directly
    /// in its namespace, addresses from the IPAM, default routes via the
    /// gateways. On failure nothing is left behind.
    pub async fn attach(&self, req: AttachRequest) -> Result<AttachResult> {
        let _op = self.ops.read().await;
        let result = self.attach_inner(req).await;
        if result.is_err() {
            self.metrics.error("attach");
        }
        result
    }

    async fn attach_inner(&self, req: AttachRequest) -> Result<AttachResult> {
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
        pause_if_asked("reserved").await;
        let mac = match self.plumb(&endpoint, &plan.netns).await {
            Ok(mac) => mac,
            Err(e) => {
                self.roll_back(&endpoint).await;
                return Err(e);
            }
        };
        step("plumbed");
        if !endpoint.ports.is_empty() {
            let ports = endpoint.ports.clone();
            let added =
                crate::publish::firewall_call(&self.firewall, move |fw| fw.add_ports(&ports)).await;
            if let Err(e) = added {
                self.roll_back(&endpoint).await;
                return Err(Error::kernel(
                    format!("attach container {}: publish its ports", endpoint.name),
                    e,
                ));
            }
        }
        let attached = self.store.update(|s| -> Result<Endpoint> {
            let ep = s.endpoints.get_mut(&endpoint.id).ok_or_else(|| {
                Error::Conflict(format!(
                    "container {} was detached while it was being attached",
                    endpoint.name
                ))
            })?;
            ep.mac = Some(mac);
            ep.phase = Phase::Attached;
            Ok(ep.clone())
        });
        let attached = match attached {
            Ok(ep) => ep,
            Err(e) => {
                self.roll_back(&endpoint).await;
                return Err(e);
            }
        };
        step("recorded");
        self.metrics.attached();
        tracing::info!(id = %attached.id, name = %attached.name, ips = ?attached.ips, "attached");
        Ok(AttachResult::from(&attached))
    }

    /// Everything that can be checked without changing anything.
    async fn validate_attach(&self, req: &AttachRequest) -> Result<AttachPlan> {
        let nl = self.netlink().await?;
        let netns = Netns::resolve(&req.netns).map_err(|e| match e {
            plumb::Error::NamespaceNotFound(_) => Error::Invalid(format!(
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
            .map_err(|e| Error::Invalid(format!("attach container {name}: {e}")))?;
        let mac = req
            .mac
            .as_deref()
            .map(MacAddr::parse_user)
            .transpose()
            .map_err(|e| Error::Invalid(format!("attach container {name}: {e}")))?;
        let mtu = req.mtu.or(self.config.mtu);
        if let Some(mtu) = mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(Error::Invalid(format!(
                    "attach container {name}: MTU {mtu} must be between 576 and 65535"
                )));
            }
        }
        if req.ip6.is_some() && self.config.subnet6.is_none() {
            return Err(Error::Invalid(format!(
                "attach container {name}: an IPv6 address was asked for but netd has no subnet6 configured"
            )));
        }
        let ports = crate::publish::parse_specs(&name, &req.ports)?;
        let state = self.store.read()?;
        check_unique(&state, &id, &name, &netns, &ifname)?;
        let requested = [
            req.ip
                .map(|ip| (IpNetwork::V4(self.config.subnet), IpAddr::V4(ip))),
            req.ip6
                .zip(self.config.subnet6)
                .map(|(ip, s6)| (IpNetwork::V6(s6), IpAddr::V6(ip))),
        ];
        for (subnet, ip) in requested.into_iter().flatten() {
            match state.ipam.check(subnet, ip) {
                Ok(()) => {}
                Err(e @ IpamError::Taken { .. }) => {
                    return Err(Error::Conflict(format!("attach container {name}: {e}")))
                }
                Err(e) => return Err(Error::Invalid(format!("attach container {name}: {e}"))),
            }
        }
        let host_if = host_ifname(&id);
        if nl
            .link(&host_if)
            .await
            .ctx(|| format!("attach container {name}: list links"))?
            .is_some()
        {
            return Err(Error::Conflict(format!(
                "attach container {name}: link {host_if} already exists in {} — run `netd reconcile` or remove it",
                self.host.label()
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
            ifname,
            mac,
            mtu,
            ports,
        })
    }

    /// Records the endpoint as `attaching` and reserves its addresses, in one transaction.
    fn reserve(&self, plan: &AttachPlan, req: &AttachRequest) -> Result<Endpoint> {
        let owner = OwnerProcess::current();
        self.store.update(|state| -> Result<Endpoint> {
            // Checked again under the lock: another caller may have won the race.
            check_unique(state, &plan.id, &plan.name, &plan.netns, &plan.ifname)?;
            let mut ips = Vec::new();
            let subnet4 = IpNetwork::V4(self.config.subnet);
            let ip4 = state
                .ipam
                .allocate(subnet4, &plan.id, req.ip.map(IpAddr::V4))?;
            ips.push(IpNetwork::new(ip4, subnet4.prefix()).expect("subnet prefix"));
            if let Some(s6) = self.config.subnet6 {
                let s6 = IpNetwork::V6(s6);
                let ip6 = state.ipam.allocate(s6, &plan.id, req.ip6.map(IpAddr::V6))?;
                ips.push(IpNetwork::new(ip6, s6.prefix()).expect("subnet prefix"));
            }
            let ports = crate::publish::bind_specs(&plan.name, &plan.ports, &ips)?;
            crate::publish::check_conflicts(state, &plan.name, &ports)?;
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
                gateways: self.gateways(),
                ports,
                phase: Phase::Attaching { owner },
            };
            state.endpoints.insert(plan.id.clone(), endpoint.clone());
            Ok(endpoint)
        })
    }

    /// Creates the veth pair, plugs it into the bridge and configures the
    /// container side. Returns the container interface's MAC.
    pub(crate) async fn plumb(&self, ep: &Endpoint, netns: &Netns) -> Result<MacAddr> {
        let nl = self.netlink().await?;
        let ctx = |step: &str| format!("attach container {}: {step}", ep.name);
        let host_opts = LinkOptions {
            up: true,
            mtu: ep.mtu,
            alias: Some(format!("{ALIAS_PREFIX}{}", ep.id)),
            ..Default::default()
        };
        let peer_opts = LinkOptions {
            up: true,
            mtu: ep.mtu,
            mac: ep.mac,
            netns: Some(netns.clone()),
            ..Default::default()
        };
        nl.add_veth(&ep.host_ifname, &host_opts, &ep.ifname, &peer_opts)
            .await
            .ctx(|| ctx("create veth"))?;
        nl.attach_to_bridge(&ep.host_ifname, &self.config.bridge)
            .await
            .ctx(|| ctx(&format!("plug {} into bridge", ep.host_ifname)))?;
        // A container reaching its own published port through the host
        // address comes back in by the port it went out by.
        nl.set_hairpin(&ep.host_ifname, true)
            .await
            .ctx(|| ctx("turn on hairpin mode"))?;
        pause_if_asked("veth").await;
        let cnl = Netlink::open(netns)
            .await
            .ctx(|| ctx(&format!("open netlink in {}", netns.label())))?;
        for ip in &ep.ips {
            cnl.add_address(&ep.ifname, *ip, true)
                .await
                .ctx(|| ctx("add address"))?;
        }
        pause_if_asked("addressed").await;
        for gw in &ep.gateways {
            let route = Route {
                gateway: Some(*gw),
                dev: Some(ep.ifname.clone()),
                ipv6: gw.is_ipv6(),
                ..Default::default()
            };
            cnl.add_route(&route)
                .await
                .ctx(|| ctx(&format!("add default route via {gw}")))?;
        }
        let link = cnl
            .require_link(&ep.ifname)
            .await
            .ctx(|| ctx("read the interface back"))?;
        link.mac
            .ok_or_else(|| Error::Invalid(ctx("the kernel reported no MAC for the interface")))
    }

    /// Undoes a failed attach; errors are logged, the caller reports the first failure.
    async fn roll_back(&self, ep: &Endpoint) {
        if let Err(e) = self.remove_endpoint(ep).await {
            tracing::error!(id = %ep.id, error = %e, "rolling back a failed attach left something behind; `netd reconcile` retries");
        }
    }

    /// Removes the endpoint's links, then its record and reservations.
    /// Links that are already gone count as removed.
    pub(crate) async fn remove_endpoint(&self, ep: &Endpoint) -> Result<Vec<IpAddr>> {
        if !ep.ports.is_empty() {
            let ports = ep.ports.clone();
            // A failure here is not fatal: reconciliation syncs the firewall
            // with the state, which no longer holds these ports.
            if let Err(e) =
                crate::publish::firewall_call(&self.firewall, move |fw| fw.remove_ports(&ports))
                    .await
            {
                tracing::warn!(container = %ep.name, "withdraw published ports: {e}");
            }
        }
        let nl = self.netlink().await?;
        match nl.delete_link(&ep.host_ifname).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(Error::kernel(
                    format!(
                        "detach container {}: delete link {}",
                        ep.name, ep.host_ifname
                    ),
                    e,
                ))
            }
        }
        let released = self.store.update(|s| -> Result<Vec<IpAddr>> {
            s.endpoints.remove(&ep.id);
            Ok(s.ipam.release_owner(&ep.id))
        })?;
        Ok(released)
    }

    /// Detaches a container by id or name. Detaching something that is not
    /// attached succeeds with `found: false`; a namespace that is already
    /// gone is fine (its end of the veth went with it).
    pub async fn detach(&self, key: &str) -> Result<DetachReport> {
        let _op = self.ops.read().await;
        let result = self.detach_inner(key).await;
        if result.is_err() {
            self.metrics.error("detach");
        }
        result
    }

    async fn detach_inner(&self, key: &str) -> Result<DetachReport> {
        let owner = OwnerProcess::current();
        let endpoint = self.store.update(|s| -> Result<Option<Endpoint>> {
            let Some(id) = s.find(key).map(|e| e.id.clone()) else {
                return Ok(None);
            };
            let ep = s.endpoints.get_mut(&id).expect("found above");
            if let Phase::Attaching { owner: o } = ep.phase {
                if o.is_alive() {
                    return Err(Error::Conflict(format!(
                        "container {} is being attached right now (by PID {}); detach it when that finishes",
                        ep.name, o.pid
                    )));
                }
            }
            ep.phase = Phase::Detaching { owner };
            Ok(Some(ep.clone()))
        })?;
        let Some(endpoint) = endpoint else {
            return Ok(DetachReport {
                container: key.to_string(),
                found: false,
                released: Vec::new(),
            });
        };
        let released = self.remove_endpoint(&endpoint).await?;
        self.metrics.detached();
        tracing::info!(id = %endpoint.id, name = %endpoint.name, "detached");
        Ok(DetachReport {
            container: key.to_string(),
            found: true,
            released,
        })
    }

    /// The endpoints netd knows, attached or in flight.
    pub fn list(&self) -> Result<Vec<Endpoint>> {
        Ok(self.store.read()?.endpoints.into_values().collect())
    }

    /// The attach result of an attached container, for CNI's CHECK and GET.
    pub fn get(&self, key: &str) -> Result<Option<AttachResult>> {
        Ok(self.store.read()?.find(key).map(AttachResult::from))
    }
}

fn check_unique(
    state: &crate::state::State,
    id: &str,
    name: &str,
    netns: &Netns,
    ifname: &str,
) -> Result<()> {
    if let Some(ep) = state.endpoints.get(id) {
        return Err(Error::Conflict(format!(
            "container id {id} is already attached (as {}, host link {}); detach it first",
            ep.name, ep.host_ifname
        )));
    }
    if let Some(ep) = state.endpoints.values().find(|e| e.name == name) {
        return Err(Error::Conflict(format!(
            "container name {name} is already taken by container {}; choose another --name",
            ep.id
        )));
    }
    if let Some(ep) = state
        .endpoints
        .values()
        .find(|e| e.netns_inode == netns.inode() && e.ifname == ifname)
    {
        return Err(Error::Conflict(format!(
            "namespace {} already has {ifname} attached by netd (container {}); choose another --ifname",
            netns.label(),
            ep.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_short_stable_and_distinct() {
        let a = host_ifname("c1");
        assert_eq!(a, host_ifname("c1"));
        assert_ne!(a, host_ifname("c2"));
        assert_eq!(a.len(), 14);
        assert!(plumb::validate_ifname(&host_ifname(&"x".repeat(200))).is_ok());
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("id", "abc-DEF_1.2").is_ok());
        assert!(validate_id("id", "").is_err());
        let err = validate_id("name", "a/b").unwrap_err().to_string();
        assert!(err.contains("container name \"a/b\""), "{err}");
    }
}
