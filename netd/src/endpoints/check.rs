//! CNI's CHECK, and how an attached endpoint looks in the kernel (which
//! reconciliation asks too).

use plumb::{Netlink, Netns};

use super::request::CheckExpected;
use super::{extras, Endpoints};
use crate::error::{Error, KernelContext, Result};
use crate::state::{Endpoint, Phase};

/// How an attached endpoint looks in the kernel.
pub(super) enum Health {
    Ok,
    /// Its namespace no longer exists (or the path now holds another one).
    ContainerGone,
    Broken(String),
}

impl Endpoints {
    /// CNI's CHECK: Ok when container `key` is attached and its links,
    /// addresses and routes are all in place; otherwise an error saying what
    /// is wrong. Changes nothing.
    pub async fn check(&self, key: &str) -> Result<()> {
        self.check_expecting(key, &CheckExpected::default()).await
    }

    /// [`Endpoints::check`], and also every address and route of
    /// `expected` in the container (what a CNI `prevResult` lists).
    pub async fn check_expecting(&self, key: &str, expected: &CheckExpected) -> Result<()> {
        let state = self.host.store().read()?;
        let Some(ep) = state.find(key) else {
            return Err(Error::NotFound(format!("container {key} is not attached")));
        };
        if ep.phase != Phase::Attached {
            return Err(Error::Busy(format!(
                "container {} is being attached or detached right now",
                ep.name
            )));
        }
        let health = match self.health(ep, expected).await? {
            Health::Ok => self.bridge_addresses_health(ep).await?,
            other => other,
        };
        match health {
            Health::Ok => {
                // The container's links being right is half of it: its NAT and
                // published ports live in the host's firewall.
                if self.ports.intact().await? {
                    Ok(())
                } else {
                    Err(Error::Conflict(format!(
                        "container {}: the firewall rules of bridge {} (NAT, published ports) are gone — someone flushed them; `netd reconcile` restores them",
                        ep.name,
                        self.host.config().bridge
                    )))
                }
            }
            Health::ContainerGone => Err(Error::NotFound(format!(
                "container {}: its namespace {} is gone",
                ep.name,
                ep.netns.display()
            ))),
            Health::Broken(why) => Err(Error::Conflict(format!(
                "container {}: {why} — `netd reconcile` repairs it",
                ep.name
            ))),
        }
    }

    /// The endpoint's addresses on the bridge (its gateways), which CHECK
    /// looks at and reconciliation restores for all endpoints at once.
    async fn bridge_addresses_health(&self, ep: &Endpoint) -> Result<Health> {
        if ep.bridge_addresses.is_empty() {
            return Ok(Health::Ok);
        }
        let nl = self.host.netlink().await?;
        let bridge = &self.host.config().bridge;
        let present = nl.link_addresses(bridge).await.ctx(|| {
            format!(
                "check container {}: list the addresses of {bridge}",
                ep.name
            )
        })?;
        Ok(
            match ep
                .bridge_addresses
                .iter()
                .find(|a| !present.iter().any(|p| p.ip() == a.ip()))
            {
                Some(gone) => Health::Broken(format!(
                    "its gateway address {gone} is missing on bridge {bridge}"
                )),
                None => Health::Ok,
            },
        )
    }

    /// Opens the endpoint's namespace if it is still the one it was attached in.
    pub(super) fn container_netns(&self, ep: &Endpoint) -> Result<Option<Netns>> {
        match Netns::path(&ep.netns) {
            Ok(ns) if ns.inode() == ep.netns_inode => Ok(Some(ns)),
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::kernel(
                format!("check container {}: open its namespace", ep.name),
                e,
            )),
        }
    }

    /// How the endpoint looks in the kernel, and whether `expected` (what
    /// CHECK's caller expects beyond the record; empty for reconciliation)
    /// is in the container too.
    pub(super) async fn health(&self, ep: &Endpoint, expected: &CheckExpected) -> Result<Health> {
        let nl = self.host.netlink().await?;
        let Some(netns) = self.container_netns(ep)? else {
            return Ok(Health::ContainerGone);
        };
        let ctx = |what: &str| format!("check container {}: {what}", ep.name);
        let bridge = nl
            .link(&self.host.config().bridge)
            .await
            .ctx(|| ctx("list links"))?;
        let Some(host) = nl.link(&ep.host_ifname).await.ctx(|| ctx("list links"))? else {
            return Ok(Health::Broken(format!(
                "host link {} is missing",
                ep.host_ifname
            )));
        };
        if bridge.map(|b| b.index) != host.controller {
            return Ok(Health::Broken(format!(
                "{} is not a port of {}",
                ep.host_ifname,
                self.host.config().bridge
            )));
        }
        if !host.up {
            return Ok(Health::Broken(format!("{} is down", ep.host_ifname)));
        }
        let cnl = Netlink::open(&netns)
            .await
            .ctx(|| ctx(&format!("open netlink in {}", netns.label())))?;
        let Some(link) = cnl.link(&ep.ifname).await.ctx(|| ctx("list links"))? else {
            return Ok(Health::Broken(format!(
                "{} is missing in the container",
                ep.ifname
            )));
        };
        if !link.up {
            return Ok(Health::Broken(format!(
                "{} is down in the container",
                ep.ifname
            )));
        }
        let addrs = cnl
            .addresses(Some(link.index))
            .await
            .ctx(|| ctx("list addresses"))?;
        for ip in &ep.ips {
            if !addrs.iter().any(|a| a.network == *ip) {
                return Ok(Health::Broken(format!("address {ip} is missing")));
            }
        }
        for gw in &ep.gateways {
            let routes = cnl
                .routes(gw.is_ipv6(), false)
                .await
                .ctx(|| ctx("list routes"))?;
            if !routes
                .iter()
                .any(|r| r.destination.is_none() && r.gateway == Some(*gw))
            {
                return Ok(Health::Broken(format!(
                    "the default route via {gw} is missing"
                )));
            }
        }
        if let Some(why) = extras::routes_missing(&cnl, ep).await? {
            return Ok(Health::Broken(why));
        }
        if let Some(why) = extras::expected_missing(&cnl, &link, &addrs, expected).await? {
            return Ok(Health::Broken(why));
        }
        Ok(Health::Ok)
    }
}
