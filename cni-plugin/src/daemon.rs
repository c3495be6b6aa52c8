//! `mode: daemon`: the same work through netd's API on its unix socket.
//! The daemon owns the bridge, subnet and state; the plugin only refuses a
//! config that names a different bridge or subnet than the daemon manages.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use netd::api::client::Client;
use netd::api::Status;

use crate::backend::common::{self, add_result, attachment_of, expected_by_check, refuse_overlap};
use crate::backend::{AttachRequest, Backend, CheckRequest, DetachRequest};
use crate::error::{api_error, CniError, ErrorCode};
use crate::range;
use crate::result::CniResult;
use crate::types::{Attachment, NetConf};
use crate::wiring;

pub struct Daemon {
    runtime: tokio::runtime::Runtime,
    client: Client,
    socket: PathBuf,
    /// The daemon's DNS server, from the status `validate` reads.
    served_dns: std::sync::OnceLock<Option<netd::api::DnsStatus>>,
}

/// The socket a config names, else netd's default.
pub fn socket_of(conf: &NetConf) -> PathBuf {
    conf.socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(netd::config::DEFAULT_SOCKET))
}

/// True when something accepts connections on `socket` (auto mode's test).
pub fn answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

impl Daemon {
    pub fn new(conf: &NetConf) -> Result<Daemon, CniError> {
        let runtime = common::runtime()?;
        let socket = socket_of(conf);
        Ok(Daemon {
            runtime,
            client: Client::new(&socket),
            socket,
            served_dns: std::sync::OnceLock::new(),
        })
    }

    fn err(&self, e: netd::Error) -> CniError {
        api_error(&self.socket, e)
    }

    async fn status_of(&self) -> Result<Status, CniError> {
        self.client.get("/v1/status").await.map_err(|e| self.err(e))
    }
}

impl Backend for Daemon {
    fn validate(&self, conf: &NetConf) -> Result<(), CniError> {
        wiring::refuse_unsupported(conf)?;
        self.runtime.block_on(async {
            let status = self.status_of().await?;
            let _ = self.served_dns.set(status.dns.clone());
            if status.bridge != conf.bridge_name() {
                return Err(CniError::invalid_config(
                    format!(
                        "network {} names bridge {}, but netd at {} manages {}",
                        conf.name,
                        conf.bridge_name(),
                        self.socket.display(),
                        status.bridge
                    ),
                    "set `bridge` to the daemon's, or use mode standalone",
                ));
            }
            if conf.ipam_delegate().is_none() {
                if let Some(subnet) = wiring::builtin_subnet(conf)? {
                    if !status.subnets.contains(&subnet) {
                        return Err(CniError::invalid_config(
                            format!(
                                "network {} asks for subnet {subnet}, but netd at {} hands out {:?}",
                                conf.name,
                                self.socket.display(),
                                status.subnets
                            ),
                            "drop `subnet` from the CNI config or change netd's",
                        ));
                    }
                }
            }
            let subnets = wiring::configured_subnets(conf)?;
            if conf.ipam_delegate().is_some() {
                refuse_overlap(&subnets, conf.bridge_name()).await?;
            }
            Ok(())
        })
    }

    fn add(&self, request: &AttachRequest) -> Result<CniResult, CniError> {
        let conf = request.network;
        self.runtime.block_on(async {
            let id = wiring::endpoint_id(&conf.name, request.container_id, request.ifname);
            // A range is checked against the daemon's subnet, then netd
            // reserves its first free address.
            let range = if range::asked(conf) {
                range::wanted(conf, self.daemon_subnet().await?)?
            } else {
                None
            };
            let netd_req = wiring::attach_request(request, &id, range)?;
            let attached: netd::AttachResult = self
                .client
                .post("/v1/containers", &netd_req)
                .await
                .map_err(|e| self.err(e))?;
            let mut result = add_result(request, &attached);
            if let Some(Some(served)) = self.served_dns.get() {
                crate::names::names_dns(&mut result, served);
            }
            Ok(result)
        })
    }

    fn del(&self, request: &DetachRequest) -> Result<(), CniError> {
        let conf = request.network;
        let id = wiring::endpoint_id(&conf.name, request.container_id, request.ifname);
        self.runtime.block_on(async {
            let _: netd::DetachReport = self
                .client
                .delete(&detach_path(&id))
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn check(&self, request: &CheckRequest) -> Result<(), CniError> {
        let conf = request.network;
        let id = wiring::endpoint_id(&conf.name, request.container_id, request.ifname);
        self.runtime.block_on(async {
            let recorded: netd::AttachResult = self
                .client
                .get(&format!("/v1/containers/{id}"))
                .await
                .map_err(|e| {
                    CniError::new(
                        ErrorCode::UnknownContainer,
                        format!(
                            "no attachment of {} {}",
                            request.container_id, request.ifname
                        ),
                        e.to_string(),
                    )
                })?;
            let expected = expected_by_check(request, &recorded)?;
            let _: serde_json::Value = self
                .client
                .post(&format!("/v1/containers/{id}/check"), &expected)
                .await
                .map_err(|e| self.err(e).context("CHECK"))?;
            Ok(())
        })
    }

    fn gc(&self, conf: &NetConf, valid: &[Attachment]) -> Result<Vec<Attachment>, CniError> {
        let prefix = wiring::id_prefix(&conf.name);
        let keep: BTreeSet<String> = valid
            .iter()
            .map(|a| wiring::endpoint_id(&conf.name, &a.container_id, &a.ifname))
            .collect();
        self.runtime.block_on(async {
            let endpoints: Vec<netd::Endpoint> = self
                .client
                .get("/v1/containers")
                .await
                .map_err(|e| self.err(e))?;
            let mut removed = Vec::new();
            let mut errors = Vec::new();
            for ep in endpoints
                .iter()
                .filter(|e| e.id.starts_with(&prefix) && !keep.contains(&e.id))
            {
                let answer: Result<netd::DetachReport, _> =
                    self.client.delete(&detach_path(&ep.id)).await;
                match answer {
                    Ok(_) => removed.extend(attachment_of(&prefix, ep)),
                    Err(e) => errors.push(format!("{}: {e}", ep.id)),
                }
            }
            if errors.is_empty() {
                Ok(removed)
            } else {
                Err(CniError::internal(
                    format!("GC could not detach {} endpoint(s)", errors.len()),
                    errors.join("; "),
                ))
            }
        })
    }

    fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        let unavailable = common::unavailable;
        self.validate(conf).map_err(unavailable)?;
        let status = self
            .runtime
            .block_on(self.status_of())
            .map_err(unavailable)?;
        if conf.ipam_delegate().is_none() {
            if let Some(full) = status.ipam.iter().find(|u| u.in_use >= u.capacity) {
                return Err(CniError::new(
                    ErrorCode::Unavailable,
                    format!("subnet {} is full", full.subnet),
                    "DEL containers or configure a larger subnet",
                ));
            }
        }
        Ok(())
    }
}

/// netd answers a plain detach once the container is cut off and deletes
/// its veth pair in the background; CNI's DEL (and GC) promise that the
/// resources are released when they return, so the plugin waits for that.
fn detach_path(id: &str) -> String {
    format!("/v1/containers/{id}?wait=1")
}

impl Daemon {
    /// The daemon's IPv4 container subnet, from its status.
    async fn daemon_subnet(&self) -> Result<ipnetwork::Ipv4Network, CniError> {
        let status: Status = self
            .client
            .get("/v1/status")
            .await
            .map_err(|e| self.err(e))?;
        status
            .subnets
            .iter()
            .find_map(|s| match s {
                ipnetwork::IpNetwork::V4(v4) => Some(*v4),
                ipnetwork::IpNetwork::V6(_) => None,
            })
            .ok_or_else(|| {
                CniError::internal(
                    "netd's status names no IPv4 subnet",
                    format!("subnets: {:?}", status.subnets),
                )
            })
    }
}
