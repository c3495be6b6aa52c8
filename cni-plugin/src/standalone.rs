//! `mode: standalone`: netd's library and state directory, in this process.
//! No daemon needed; several plugin processes at once are serialised by the
//! state lock (so parallel ADDs never share an address).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::common::{
    self, add_result, attachment_of, delegated_network, expected_by_check, refuse_overlap,
};
use crate::backend::{Addressing, AttachRequest, Backend, CheckRequest, DetachRequest};
use crate::error::{netd_error, CniError, ErrorCode};
use crate::range;
use crate::result::CniResult;
use crate::types::{Attachment, NetConf};
use crate::wiring;

pub struct Standalone {
    runtime: tokio::runtime::Runtime,
}

impl Standalone {
    pub fn new() -> Result<Standalone, CniError> {
        let runtime = common::runtime()?;
        Ok(Standalone { runtime })
    }

    async fn open(conf: &NetConf, delegated: Option<IpNetwork>) -> Result<netd::Network, CniError> {
        let config = wiring::netd_config(conf, delegated)?;
        netd::Network::open(config)
            .await
            .map_err(|e| netd_error(e).context(&format!("open network {}", conf.name)))
    }
}

impl Backend for Standalone {
    fn validate(&self, conf: &NetConf) -> Result<(), CniError> {
        wiring::refuse_unsupported(conf)?;
        let subnets = wiring::configured_subnets(conf)?;
        wiring::netd_config(conf, None)?;
        self.runtime
            .block_on(refuse_overlap(&subnets, conf.bridge_name()))
    }

    fn add(&self, request: &AttachRequest) -> Result<CniResult, CniError> {
        let conf = request.network;
        let started = std::time::Instant::now();
        let step = |name: &str| {
            tracing::debug!(
                step = name,
                elapsed_us = started.elapsed().as_micros() as u64,
                "ADD"
            )
        };
        self.runtime.block_on(async {
            let network = Standalone::open(conf, delegated_network(&request.addressing)).await?;
            step("network opened");
            let id = wiring::endpoint_id(&conf.name, request.container_id, request.ifname);
            let range = range::wanted(conf, network.config().subnet)?;
            let mut repaired = false;
            let attached = loop {
                let netd_req = wiring::attach_request(request, &id, range)?;
                match network.attach(netd_req).await {
                    Ok(result) => break result,
                    // Without a daemon nobody notices a flushed ruleset until
                    // an ADD fails on it: restore the rules and every recorded
                    // port as netd's reconciliation does, then try once more.
                    Err(e) if !repaired && !network.firewall_intact().await.unwrap_or(true) => {
                        repaired = true;
                        network.reconcile().await.map_err(|r| {
                            netd_error(r).context(&format!("restore the firewall after: {e}"))
                        })?;
                    }
                    Err(e) => return Err(netd_error(e)),
                }
            };
            step("attached");
            Ok(add_result(request, &attached))
        })
    }

    fn del(&self, request: &DetachRequest) -> Result<(), CniError> {
        let conf = request.network;
        self.runtime.block_on(async {
            let delegated = request
                .prev_result
                .as_ref()
                .and_then(|r| delegated_network(&Addressing::Delegated(r.clone())));
            let network =
                Standalone::open(conf, delegated.filter(|_| conf.ipam_delegate().is_some()))
                    .await?;
            let id = wiring::endpoint_id(&conf.name, request.container_id, request.ifname);
            network.detach(&id).await.map_err(netd_error)?;
            Ok(())
        })
    }

    fn check(&self, request: &CheckRequest) -> Result<(), CniError> {
        let conf = request.network;
        self.runtime.block_on(async {
            // The same netd network as the ADD's: with a delegated IPAM its
            // subnet (and so its NAT rules) is the delegate's.
            let delegated = conf.ipam_delegate().and_then(|_| {
                delegated_network(&Addressing::Delegated(request.prev_result.clone()))
            });
            let network = Standalone::open(conf, delegated).await?;
            let id = wiring::endpoint_id(&conf.name, request.container_id, request.ifname);
            let Some(recorded) = network.get(&id).map_err(netd_error)? else {
                return Err(CniError::new(
                    ErrorCode::UnknownContainer,
                    format!(
                        "no attachment of {} {} on network {}",
                        request.container_id, request.ifname, conf.name
                    ),
                    "ADD it first",
                ));
            };
            let expected = expected_by_check(request, &recorded)?;
            // netd's check covers the firewall rules too.
            network
                .check_expecting(&id, &expected)
                .await
                .map_err(|e| netd_error(e).context("CHECK"))?;
            if conf.ipam_delegate().is_none() {
                let state = network.store().read().map_err(|e| netd_error(e.into()))?;
                let held: BTreeSet<IpAddr> = state.ipam.held_by(&id).into_iter().collect();
                for ip in &recorded.ips {
                    if !held.contains(&ip.address.ip()) {
                        return Err(CniError::internal(
                            format!(
                                "address {} is no longer reserved for this attachment",
                                ip.address
                            ),
                            "run DEL and ADD again",
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn gc(&self, conf: &NetConf, valid: &[Attachment]) -> Result<Vec<Attachment>, CniError> {
        self.runtime.block_on(async {
            let network = Standalone::open(conf, None).await?;
            let prefix = wiring::id_prefix(&conf.name);
            let keep: BTreeSet<String> = valid
                .iter()
                .map(|a| wiring::endpoint_id(&conf.name, &a.container_id, &a.ifname))
                .collect();
            let stale: Vec<netd::Endpoint> = network
                .list()
                .map_err(netd_error)?
                .into_iter()
                .filter(|e| e.id.starts_with(&prefix) && !keep.contains(&e.id))
                .collect();
            let owned = |id: &str| id.starts_with(&prefix);
            let report = network.gc(&owned, &keep).await.map_err(netd_error)?;
            if !report.errors.is_empty() {
                return Err(CniError::internal(
                    format!("GC left {} problem(s)", report.errors.len()),
                    report.errors.join("; "),
                ));
            }
            Ok(stale
                .iter()
                .filter_map(|e| attachment_of(&prefix, e))
                .collect())
        })
    }

    fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        let unavailable = common::unavailable;
        self.validate(conf).map_err(unavailable)?;
        self.runtime.block_on(async {
            let network = Standalone::open(conf, None).await.map_err(unavailable)?;
            let state = network
                .store()
                .read()
                .map_err(|e| unavailable(netd_error(e.into())))?;
            if conf.ipam_delegate().is_none() {
                for subnet in network.config().subnets() {
                    let usage = state.ipam.usage(subnet);
                    if usage.in_use >= usage.capacity {
                        return Err(CniError::new(
                            ErrorCode::Unavailable,
                            format!(
                                "subnet {subnet} is full ({} addresses in use)",
                                usage.in_use
                            ),
                            "DEL containers or configure a larger subnet",
                        ));
                    }
                }
            }
            Ok(())
        })
    }
}
