//! netd's two modes and the kernel floor under them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use world::{Container, Host};

use super::{container_id, host_port, Driver, NETD_LOG_ENV};

pub(super) struct NetdLib {
    network: netd::Network,
}

/// netd's defaults, in `host`, with its state under `dir` (no daemon: the
/// socket is never made).
pub(super) fn library_config(host: &Host, dir: &Path) -> netd::Config {
    netd::Config {
        state_dir: dir.join("state"),
        socket: dir.join("unused.sock"),
        netns: Some(host.netns.path_buf().display().to_string()),
        ..Default::default()
    }
}

impl NetdLib {
    pub(super) async fn new(host: &Host, dir: &Path) -> Result<NetdLib> {
        Ok(NetdLib {
            network: netd::Network::open(library_config(host, dir)).await?,
        })
    }
}

pub(super) fn netd_request(i: usize, c: &Container) -> netd::AttachRequest {
    netd::AttachRequest {
        netns: c.netns.path_buf().display().to_string(),
        id: Some(container_id(i)),
        name: Some(format!("bench{i}")),
        ports: vec![netd::PortMapping::new(
            netd::ports::Protocol::Tcp,
            None,
            netd::ports::PortRange::single(host_port(i)),
            netd::ports::PortRange::single(80),
        )
        .expect("a valid mapping")],
        ..Default::default()
    }
}

impl Driver for NetdLib {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        self.network.attach(netd_request(i, c)).await?;
        Ok(())
    }

    async fn detach(&mut self, i: usize, _c: &Container) -> Result<()> {
        let report = self.network.detach(&container_id(i)).await?;
        if !report.found {
            bail!("netd did not know container {i}");
        }
        Ok(())
    }
}

/// The bridge comes from netd (same settings: its MAC, no multicast
/// snooping, forward delay 0); each container's links are then made with
/// exactly the requests `netd::Network::attach` sends, in its order.
pub(super) struct KernelFloor {
    host: plumb::Netns,
    nl: plumb::Netlink,
    bridge: u32,
    port_mac: plumb::MacAddr,
    subnet: ipnetwork::Ipv4Network,
}

impl KernelFloor {
    pub(super) async fn new(host: &Host, dir: &Path) -> Result<KernelFloor> {
        let config = library_config(host, dir);
        let subnet = config.subnet;
        let bridge_name = config.bridge.clone();
        netd::Network::open(config).await?.ensure_host().await?;
        let nl = plumb::Netlink::open(&host.netns).await?;
        let bridge = nl.require_link(&bridge_name).await?.index;
        Ok(KernelFloor {
            host: host.netns.clone(),
            nl,
            bridge,
            port_mac: plumb::MacAddr::from_seed("bench-attach kernel floor ports"),
            subnet,
        })
    }

    fn host_ifname(i: usize) -> String {
        format!("wk{i:x}")
    }
}

impl Driver for KernelFloor {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        use plumb::{LinkChange, LinkOptions, Route};
        // netd opens this connection while it validates the request.
        let cnl = plumb::Netlink::open(&c.netns).await?;
        let host_if = Self::host_ifname(i);
        let host_opts = LinkOptions {
            mac: Some(self.port_mac),
            controller: Some(self.bridge),
            ..Default::default()
        };
        let peer_opts = LinkOptions {
            up: true,
            no_ipv6_link_local: true,
            ..Default::default()
        };
        let peer = self
            .nl
            .add_veth_beside(&host_if, &host_opts, &cnl, "eth0", &peer_opts)
            .await?;
        plumb::sysctl::write(
            &self.host,
            &format!("net/ipv6/conf/{host_if}/disable_ipv6"),
            "1",
        )?;
        let ip = self.subnet.nth(i as u32 + 2).context("subnet too small")?;
        let address = ipnetwork::Ipv4Network::new(ip, self.subnet.prefix())?;
        cnl.add_address_at(&peer, address.into(), true).await?;
        let gateway = self.subnet.nth(1).context("subnet too small")?;
        let route = Route {
            gateway: Some(gateway.into()),
            dev: Some("eth0".into()),
            ..Default::default()
        };
        cnl.add_route_at(&route, &peer).await?;
        let host_end = LinkChange {
            up: Some(true),
            alias: Some(format!("bench-attach kernel floor {i}")),
            hairpin: Some(true),
            ..Default::default()
        };
        self.nl.set_link(&host_if, &host_end).await?;
        Ok(())
    }

    async fn detach(&mut self, i: usize, _c: &Container) -> Result<()> {
        self.nl.delete_link(&Self::host_ifname(i)).await?;
        Ok(())
    }
}

pub(super) struct NetdApi {
    client: netd::api::client::Client,
}

impl NetdApi {
    pub(super) async fn new(host: &Host, dir: &Path) -> Result<NetdApi> {
        let socket = dir.join("netd.sock");
        // WEFT_BENCH_NETD_LOG=FILE keeps the daemon's debug log (attach step timings).
        let (log_path, filter) = match std::env::var_os(NETD_LOG_ENV) {
            Some(path) => (PathBuf::from(path), "netd=debug,warn"),
            None => (dir.join("netd.log"), "warn"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut command = Command::new(world::workspace_bin("netd"));
        command
            .arg("run")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .env_remove("WEFT_CONFIG")
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        host.spawn(command)?;
        let client = netd::api::client::Client::new(&socket);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get::<Value>("/v1/status").await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    bail!("netd did not answer within 20 s: {e}\n{log}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(NetdApi { client })
    }
}

impl NetdApi {
    /// DELETE /v1/containers/<id> with `query` (`?wait=1`: answer once the
    /// veth pair is gone, not once the container is cut off).
    async fn delete(&mut self, i: usize, query: &str) -> Result<()> {
        let report: netd::DetachReport = self
            .client
            .delete(&format!("/v1/containers/{}{query}", container_id(i)))
            .await?;
        if !report.found {
            bail!("netd did not know container {i}");
        }
        Ok(())
    }
}

impl Driver for NetdApi {
    async fn attach(&mut self, i: usize, c: &Container) -> Result<()> {
        let _: netd::AttachResult = self
            .client
            .post("/v1/containers", &netd_request(i, c))
            .await?;
        Ok(())
    }

    async fn detach(&mut self, i: usize, _c: &Container) -> Result<()> {
        self.delete(i, "").await
    }

    async fn detach_fully(&mut self, i: usize, _c: &Container) -> Result<()> {
        self.delete(i, "?wait=1").await
    }

    /// The daemon forgets an endpoint once its veth pair is deleted.
    async fn settle(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left: Vec<Value> = self.client.get("/v1/containers").await?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} containers still detaching after 120 s", left.len());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
