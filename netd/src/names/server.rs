//! The DNS server of one network: UDP and TCP sockets on the gateway
//! addresses, opened inside the network's namespace; UDP served by a thread
//! per socket ([`super::udp`]), TCP and forwarded queries from tokio.
//! Dropping the server stops it and closes its sockets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use plumb::Netns;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::answer::{Zone, DEFAULT_SEARCH_DOMAIN};
use super::counters::{DnsCounters, DnsCountersSnapshot};
use super::error::NamesError;
use super::forward::Forwarder;
use super::limits::{RateLimit, SourceLimiter};
use super::query::Responder;
use super::resolv_conf::Upstreams;
use super::table::NameTable;
use super::tcp;
use super::udp::UdpServer;

/// How one network's DNS server runs. [`DnsServerConfig::new`] fills in
/// the defaults; tests change the port, the resolv.conf and the limits.
#[derive(Debug, Clone)]
pub struct DnsServerConfig {
    /// The gateway addresses (IPv4, and IPv6 with `subnet6`). Only these:
    /// the fabric side of the host never reaches the server.
    pub listen: Vec<IpAddr>,
    /// 53; another port for tests.
    pub port: u16,
    /// The network's subnets: queries from elsewhere are dropped, and
    /// reverse lookups inside them are answered here.
    pub subnets: Vec<IpNetwork>,
    pub search_domain: String,
    /// The file naming the upstream resolvers, read in netd's namespace.
    pub resolv_conf: PathBuf,
    /// When a forwarded query gets SERVFAIL if no upstream has answered.
    pub forward_deadline: Duration,
    /// Upstream answers kept at most.
    pub cache_entries: usize,
    pub rate_limit: RateLimit,
    pub max_forwards_in_flight: usize,
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long (or slower to send a query) is closed.
    pub tcp_idle_timeout: Duration,
}

impl DnsServerConfig {
    pub fn new(listen: Vec<IpAddr>, subnets: Vec<IpNetwork>) -> DnsServerConfig {
        DnsServerConfig {
            listen,
            port: 53,
            subnets,
            search_domain: DEFAULT_SEARCH_DOMAIN.to_string(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            // Two seconds: glibc and dig wait 5 s before trying again, so
            // SERVFAIL arrives well before the client gives up on us.
            forward_deadline: Duration::from_secs(2),
            cache_entries: 2048,
            rate_limit: RateLimit::default(),
            max_forwards_in_flight: 256,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A running DNS server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    counters: Arc<DnsCounters>,
    addresses: Vec<SocketAddr>,
    udp: Vec<UdpServer>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Opens the sockets in `netns` (from a thread that enters it, never a
    /// runtime worker) and starts serving `table` on the current runtime.
    /// The upstream sockets are opened in `netns` too.
    pub async fn start(
        netns: &Netns,
        table: Arc<NameTable>,
        config: DnsServerConfig,
    ) -> Result<DnsServer, NamesError> {
        if config.listen.is_empty() {
            return Err(NamesError::InvalidConfig("no listen address".into()));
        }
        if let Some(outside) = config.listen.iter().find(|ip| ip.is_unspecified()) {
            return Err(NamesError::InvalidConfig(format!(
                "listen address {outside} would serve every interface, the fabric's too; give the gateway addresses"
            )));
        }
        let zone = Zone::new(&config.search_domain, config.subnets.clone())?;
        let addresses: Vec<SocketAddr> = config
            .listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, config.port))
            .collect();
        let (udp, tcp) = open_sockets(netns, &addresses)?;

        let counters = Arc::new(DnsCounters::default());
        let upstreams = Upstreams::new(config.resolv_conf.clone(), config.listen.clone());
        let responder = Arc::new(Responder {
            table,
            zone,
            forwarder: Forwarder::new(
                netns.clone(),
                upstreams,
                config.cache_entries,
                config.forward_deadline,
            ),
            counters: counters.clone(),
            limiter: SourceLimiter::new(config.rate_limit),
            forward_slots: Arc::new(Semaphore::new(config.max_forwards_in_flight)),
        });
        let runtime = tokio::runtime::Handle::current();
        let mut udp_servers = Vec::new();
        for (socket, address) in udp.into_iter().zip(&addresses) {
            let server = UdpServer::start(socket, responder.clone(), runtime.clone())
                .map_err(|e| listen_error("UDP", netns, address, e))?;
            udp_servers.push(server);
        }
        let mut tasks = Vec::new();
        let limits = tcp::TcpLimits {
            max_connections: config.max_tcp_connections,
            idle_timeout: config.tcp_idle_timeout,
        };
        for listener in tcp {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| listen_error("TCP", netns, &addresses[0], e))?;
            tasks.push(tokio::spawn(tcp::serve(
                listener,
                responder.clone(),
                limits,
            )));
        }
        tracing::info!("DNS server on {addresses:?} in namespace {}", netns.label());
        Ok(DnsServer {
            counters,
            addresses,
            udp: udp_servers,
            tasks,
        })
    }

    /// The addresses served (UDP and TCP each).
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// The counters now.
    pub fn counters(&self) -> DnsCountersSnapshot {
        self.counters.snapshot()
    }

    /// The live counters, for a metrics endpoint that outlives this call.
    pub fn counters_handle(&self) -> Arc<DnsCounters> {
        self.counters.clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Aborting a TCP task drops its listener and the JoinSet of its
        // connections, which aborts those in turn.
        for task in &self.tasks {
            task.abort();
        }
        // Stops and joins the UDP threads: their sockets are closed now.
        self.udp.clear();
    }
}

type Sockets = (Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>);

fn open_sockets(netns: &Netns, addresses: &[SocketAddr]) -> Result<Sockets, NamesError> {
    let addresses = addresses.to_vec();
    let opened = netns
        .run(
            move || -> Result<Sockets, (&'static str, SocketAddr, std::io::Error)> {
                let mut udp = Vec::new();
                let mut tcp = Vec::new();
                for address in addresses {
                    // Blocking: its thread waits in the receive.
                    let socket =
                        std::net::UdpSocket::bind(address).map_err(|e| ("UDP", address, e))?;
                    udp.push(socket);
                    let listener =
                        std::net::TcpListener::bind(address).map_err(|e| ("TCP", address, e))?;
                    listener
                        .set_nonblocking(true)
                        .map_err(|e| ("TCP", address, e))?;
                    tcp.push(listener);
                }
                Ok((udp, tcp))
            },
        )
        .map_err(|e| NamesError::Namespace {
            namespace: netns.label().to_string(),
            source: Box::new(e),
        })?;
    opened.map_err(|(proto, address, source)| listen_error(proto, netns, &address, source))
}

fn listen_error(
    proto: &'static str,
    netns: &Netns,
    address: &SocketAddr,
    source: std::io::Error,
) -> NamesError {
    NamesError::Listen {
        proto,
        address: *address,
        namespace: netns.label().to_string(),
        source,
    }
}
