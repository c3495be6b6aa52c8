//! Rebuilding the state from the kernel when the state files are damaged
//! (`netd recover`).
//!
//! The kernel holds the truth about what is live: every container netd
//! attached has a veth whose host end is a port of the bridge and carries
//! the alias `weft:<container id>`, and whose other end, in the container's
//! namespace, carries the container's addresses. Recovery adopts each such
//! container into a fresh state (endpoint, link names, addresses reserved in
//! IPAM), and takes from whatever the damaged files still hold only what
//! agrees with the kernel: a name, the published ports. A state entry with
//! no link is dropped (it was detached, or never finished attaching); a link
//! whose other end cannot be found, or has no address, is left alone and
//! listed. Nothing in the kernel is changed here.
//!
//! This module takes what it needs as arguments (the host namespace, the
//! configuration, the store) so that it runs without a `Network` (netd is
//! stopped while it runs).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use plumb::{Link, Netlink, Netns};
use serde::Serialize;

use crate::config::Config;
use crate::endpoints::ALIAS_PREFIX;
use crate::error::{KernelContext, Result};
use crate::state::{Endpoint, Phase, Replaced, State, Store};

mod peers;

use peers::{Candidates, Peer};

/// What recovery found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub state_dir: PathBuf,
    /// What is wrong with the state files; empty when they are whole (and
    /// then nothing is written).
    pub problems: Vec<String>,
    /// Live containers taken into the new state.
    pub adopted: Vec<Adopted>,
    /// State entries with no link in the kernel: not in the new state.
    pub dropped: Vec<Dropped>,
    /// Links with netd's alias that could not be adopted: left as they are.
    pub unmatched_links: Vec<UnmatchedLink>,
    /// The files written, unless this was a dry run or nothing was wrong.
    pub written: Option<Replaced>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Adopted {
    pub id: String,
    pub name: String,
    pub host_ifname: String,
    pub netns: PathBuf,
    pub ips: Vec<IpNetwork>,
    /// The damaged files held this container with the same addresses: its
    /// name and published ports come from there.
    pub matched_state: bool,
    /// Published ports carried over (none when `matched_state` is false:
    /// publish them again with `netd publish`).
    pub ports: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub id: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnmatchedLink {
    pub host_ifname: String,
    pub id: String,
    pub reason: String,
}

/// Reads the kernel and the state files, works out the new state, and
/// writes it unless `dry_run` or the files are whole.
pub async fn recover(
    host: &Netns,
    config: &Config,
    store: &Store,
    dry_run: bool,
) -> Result<RecoveryReport> {
    let salvage = store.salvage()?;
    let hints = &salvage.state;
    let nl = Netlink::open(host)
        .await
        .ctx(|| format!("recover: open netlink in {}", host.label()))?;
    let links = nl.links().await.ctx(|| "recover: list host links")?;
    let bridge = links
        .iter()
        .find(|l| l.name == config.bridge)
        .map(|l| l.index);
    let mut report = RecoveryReport {
        state_dir: store.dir().to_path_buf(),
        problems: salvage.problems.clone(),
        adopted: Vec::new(),
        dropped: Vec::new(),
        unmatched_links: Vec::new(),
        written: None,
    };
    let ours: Vec<(&Link, &str)> = links
        .iter()
        .filter_map(|l| Some((l, l.alias.as_deref()?.strip_prefix(ALIAS_PREFIX)?)))
        .collect();
    let mut candidates = Candidates::new(host, &nl);
    let mut fresh = State::default();
    let mut names = BTreeSet::new();
    for (link, id) in ours {
        let unmatched = |reason: String| UnmatchedLink {
            host_ifname: link.name.clone(),
            id: id.to_string(),
            reason,
        };
        if !link.is_kind("veth") || bridge.is_none() || link.controller != bridge {
            report.unmatched_links.push(unmatched(format!(
                "not a veth port of bridge {}",
                config.bridge
            )));
            continue;
        }
        let hint = hints.endpoints.get(id).map(|e| &**e);
        let peer = match candidates.peer_of(link, hint).await {
            Ok(peer) => peer,
            Err(reason) => {
                report.unmatched_links.push(unmatched(reason));
                continue;
            }
        };
        match adopt(config, &mut fresh, &mut names, link, id, &peer, hint) {
            Ok(adopted) => report.adopted.push(adopted),
            Err(reason) => report.unmatched_links.push(unmatched(reason)),
        }
    }
    for (id, ep) in hints.endpoints.iter() {
        if !fresh.endpoints.contains_key(id) {
            report.dropped.push(Dropped {
                id: id.clone(),
                name: ep.name.clone(),
                reason: format!(
                    "no link {} with alias {ALIAS_PREFIX}{id} on bridge {}",
                    ep.host_ifname, config.bridge
                ),
            });
        }
    }
    if !dry_run && !report.problems.is_empty() {
        report.written = Some(store.replace(&fresh, salvage.seq)?);
    }
    Ok(report)
}

/// Builds the endpoint of a live container and reserves its addresses.
fn adopt(
    config: &Config,
    fresh: &mut State,
    names: &mut BTreeSet<String>,
    link: &Link,
    id: &str,
    peer: &Peer,
    hint: Option<&Endpoint>,
) -> Result<Adopted, String> {
    if peer.ips.is_empty() {
        return Err(format!(
            "its other end, {} in {}, has no address",
            peer.link.name,
            peer.netns.display()
        ));
    }
    let subnets = config.subnets();
    // What the damaged files said counts only where the kernel agrees.
    let hint = hint.filter(|h| {
        let (mut said, mut live) = (h.ips.clone(), peer.ips.clone());
        said.sort();
        live.sort();
        said == live
    });
    // Reserve on a copy first: an address an adopted container already holds
    // is a conflict this container is not adopted over.
    let mut ipam = fresh.ipam.clone();
    for ip in &peer.ips {
        if let Some(subnet) = subnets.iter().find(|s| s.contains(ip.ip())) {
            ipam.allocate(*subnet, id, Some(ip.ip()))
                .map_err(|e| format!("its address {ip} cannot be reserved: {e}"))?;
        }
    }
    fresh.ipam = ipam;
    let name = hint
        .map(|h| h.name.clone())
        .filter(|n| !names.contains(n))
        .unwrap_or_else(|| id.to_string());
    names.insert(name.clone());
    let gateways = match hint {
        Some(h) => h.gateways.clone(),
        None => {
            let mut gateways: Vec<IpAddr> = Vec::new();
            for ip in &peer.ips {
                if let Some(s) = subnets.iter().find(|s| s.contains(ip.ip())) {
                    let gateway = crate::ipam::gateway(*s);
                    if !gateways.contains(&gateway) {
                        gateways.push(gateway);
                    }
                }
            }
            gateways
        }
    };
    let ep = Endpoint {
        id: id.to_string(),
        name: name.clone(),
        netns: peer.netns.clone(),
        netns_inode: peer.netns_inode,
        ifname: peer.link.name.clone(),
        host_ifname: link.name.clone(),
        mac: peer.link.mac,
        mtu: hint.and_then(|h| h.mtu),
        ips: peer.ips.clone(),
        gateways,
        ports: hint.map(|h| h.ports.clone()).unwrap_or_default(),
        // Not in the kernel's links: what the old record says, if any.
        routes: hint.map(|h| h.routes.clone()).unwrap_or_default(),
        bridge_addresses: hint.map(|h| h.bridge_addresses.clone()).unwrap_or_default(),
        dns_names: hint.map(|h| h.dns_names.clone()).unwrap_or_default(),
        phase: Phase::Attached,
    };
    let adopted = Adopted {
        id: id.to_string(),
        name,
        host_ifname: link.name.clone(),
        netns: peer.netns.clone(),
        ips: peer.ips.clone(),
        matched_state: hint.is_some(),
        ports: ep.ports.len(),
    };
    fresh.endpoints.insert(id.to_string(), Arc::new(ep));
    Ok(adopted)
}

impl RecoveryReport {
    /// The report in words, one line each.
    pub fn lines(&self, dry_run: bool) -> Vec<String> {
        let mut lines = Vec::new();
        if self.problems.is_empty() {
            lines.push(format!(
                "the state files in {} are whole: nothing to recover",
                self.state_dir.display()
            ));
        }
        for problem in &self.problems {
            lines.push(format!("damaged: {problem}"));
        }
        let verb = if dry_run || self.problems.is_empty() {
            "would adopt"
        } else {
            "adopted"
        };
        for a in &self.adopted {
            let ips: Vec<String> = a.ips.iter().map(|ip| ip.to_string()).collect();
            let source = if a.matched_state {
                format!("name and {} published ports from the state", a.ports)
            } else {
                "not in the readable state: published ports unknown, publish them again".into()
            };
            lines.push(format!(
                "{verb} {} ({}) on {} in {}: {} ({source})",
                a.id,
                a.name,
                a.host_ifname,
                a.netns.display(),
                ips.join(", ")
            ));
        }
        for d in &self.dropped {
            lines.push(format!(
                "dropped {} ({}) from the state: {}",
                d.id, d.name, d.reason
            ));
        }
        for u in &self.unmatched_links {
            lines.push(format!(
                "left alone: {} (container {}): {}; netd removes it as a stale link at its next reconciliation unless the container is attached again",
                u.host_ifname, u.id, u.reason
            ));
        }
        if let Some(w) = &self.written {
            for path in &w.moved_aside {
                lines.push(format!("kept the old file as {}", path.display()));
            }
            lines.push(format!(
                "wrote a new state in {} ({} containers); start netd",
                self.state_dir.display(),
                self.adopted.len()
            ));
        } else if dry_run && !self.problems.is_empty() {
            lines.push("dry run: nothing written".into());
        }
        lines
    }
}
