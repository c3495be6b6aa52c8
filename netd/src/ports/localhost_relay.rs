//! Published ports through the host's IPv6 localhost, `[::1]`.
//!
//! The host reaches a published port through 127.0.0.1 in the kernel (DNAT
//! with `route_localnet`); IPv6 has no such switch, and a packet from ::1
//! never leaves the host whatever the NAT rules say. Clients that try
//! `localhost` as ::1 first (Node.js, `curl -6`, anything given `[::1]`)
//! would be refused. So the daemon listens on `[::1]:hostport` itself for
//! every TCP and UDP port published on all addresses (or on ::1) and relays
//! to the container, as Docker's userland proxy does. The container sees the
//! bridge's gateway address as the client.
//!
//! Only the daemon relays (it owns the [`LocalhostRelay`] and lends it to
//! each publish, attach, detach and reconciliation): a library caller (the
//! CNI plugin standalone) has no process to hold the sockets. A
//! port whose `[::1]` socket cannot be had (a host program holds it) is still
//! published everywhere else; the next reconciliation tries again.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ports::{Protocol, PublishedPort};
use plumb::Netns;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use crate::metrics::Metrics;

/// A container that does not answer within this is reported as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connections relayed at once, per port; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// A UDP client is forgotten after this long without a datagram either way.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// UDP clients remembered at once, per port; datagrams of more are dropped.
const MAX_UDP_FLOWS: usize = 256;
const MAX_DATAGRAM: usize = 65_535;

/// (protocol, host port): what one `[::1]` socket serves.
type Key = (Protocol, u16);

/// The `[::1]` sockets of the published ports, one per (protocol, host port).
pub struct LocalhostRelay {
    opener: Opener,
    relays: Mutex<HashMap<Key, Relay>>,
    metrics: Arc<Metrics>,
}

/// One listening socket and the task serving it; dropped = closed.
struct Relay {
    target: SocketAddr,
    task: AbortHandle,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalhostRelay {
    /// `host` is where the sockets belong; `None` when netd runs in it.
    pub fn new(host: Option<Netns>, metrics: Arc<Metrics>) -> LocalhostRelay {
        LocalhostRelay {
            opener: Opener { host },
            relays: Mutex::default(),
            metrics,
        }
    }

    /// Starts relaying the ports among `ports` that localhost should reach.
    pub fn open(&self, ports: &[PublishedPort]) {
        let mut relays = self.relays.lock().expect("relay table lock");
        for (key, target) in relayed(ports) {
            match relays.get(&key) {
                // The IPv6 address of a dual-stack container is kept (see `relayed`).
                Some(r) if r.target == target || r.target.is_ipv6() => continue,
                _ => self.start(&mut relays, key, target),
            }
        }
        self.metrics.set_localhost_relays(relays.len());
    }

    /// Stops relaying `withdrawn` (unpublished, or their container
    /// detached). A port number that another container still publishes on
    /// all addresses of the other family (`published`, the whole state) is
    /// relayed to that one from now on.
    pub fn close(&self, withdrawn: &[PublishedPort], published: &[PublishedPort]) {
        let mut relays = self.relays.lock().expect("relay table lock");
        let mut freed = Vec::new();
        for (key, target) in relayed(withdrawn) {
            if relays.get(&key).is_some_and(|r| r.target == target) {
                relays.remove(&key);
                freed.push(key);
            }
        }
        for (key, target) in successors(&freed, withdrawn, published) {
            self.start(&mut relays, key, target);
        }
        self.metrics.set_localhost_relays(relays.len());
    }

    /// Relays exactly `ports` (every published port): closes the rest and
    /// retries sockets that could not be had before.
    pub fn sync(&self, ports: &[PublishedPort]) {
        let wanted = relayed(ports);
        let mut relays = self.relays.lock().expect("relay table lock");
        relays.retain(|key, relay| wanted.get(key) == Some(&relay.target));
        for (key, target) in wanted {
            if !relays.contains_key(&key) {
                self.start(&mut relays, key, target);
            }
        }
        self.metrics.set_localhost_relays(relays.len());
    }

    fn start(&self, relays: &mut HashMap<Key, Relay>, key: Key, target: SocketAddr) {
        let (protocol, port) = key;
        let local = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        let opener = self.opener.clone();
        let task = match protocol {
            Protocol::Tcp => self
                .opener
                .open(|| std::net::TcpListener::bind(local))
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                })
                .map(|l| tokio::spawn(serve_tcp(l, target, opener)).abort_handle()),
            Protocol::Udp => self
                .opener
                .open(|| std::net::UdpSocket::bind(local))
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                })
                .map(|s| tokio::spawn(serve_udp(s, target, opener)).abort_handle()),
            Protocol::Sctp => return,
        };
        match task {
            Ok(task) => {
                tracing::debug!(%local, %target, %protocol, "relaying from IPv6 localhost");
                relays.insert(key, Relay { target, task });
            }
            Err(e) => tracing::warn!(
                "cannot relay [::1]:{port}/{protocol} to {target}: {e}; the port stays published on the host's other addresses"
            ),
        }
    }
}

/// The `[::1]` sockets `ports` call for, and where each one relays to. A
/// port published on all addresses of a dual-stack container exists once per
/// family; its IPv6 address is taken, as an IPv6 client would expect.
fn relayed(ports: &[PublishedPort]) -> HashMap<Key, SocketAddr> {
    let mut targets: HashMap<Key, SocketAddr> = HashMap::new();
    for port in ports {
        // No host address stands for all of them (0.0.0.0 and :: included).
        if port.protocol == Protocol::Sctp
            || port.host_ip.is_some_and(|ip| ip != Ipv6Addr::LOCALHOST)
        {
            continue;
        }
        for f in port.forwards() {
            let target = SocketAddr::new(f.container_ip, f.container_port);
            targets
                .entry((f.protocol, f.host_port))
                .and_modify(|t| {
                    if target.is_ipv6() {
                        *t = target
                    }
                })
                .or_insert(target);
        }
    }
    targets
}

/// Where the `[::1]` sockets of `freed` relay once `withdrawn` is gone: to
/// a port of the same number that is still published (another container's,
/// of the other family), if there is one.
fn successors(
    freed: &[Key],
    withdrawn: &[PublishedPort],
    published: &[PublishedPort],
) -> Vec<(Key, SocketAddr)> {
    if freed.is_empty() {
        return Vec::new();
    }
    let remaining: Vec<PublishedPort> = published
        .iter()
        .filter(|p| !withdrawn.contains(p))
        .copied()
        .collect();
    let wanted = relayed(&remaining);
    freed
        .iter()
        .filter_map(|key| wanted.get(key).map(|&target| (*key, target)))
        .collect()
}

/// Opens sockets in the host's namespace: directly when netd runs in it,
/// else on a thread that entered it (a socket stays where it was made).
#[derive(Clone)]
struct Opener {
    host: Option<Netns>,
}

impl Opener {
    fn open<T: Send>(&self, make: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match &self.host {
            None => make(),
            Some(ns) => ns.run(make).map_err(io::Error::other)?,
        }
    }
}

async fn serve_tcp(listener: TcpListener, target: SocketAddr, opener: Opener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors, most likely: give the others time to finish.
                tracing::warn!(%target, "accept on IPv6 localhost: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let opener = opener.clone();
        tokio::spawn(async move {
            relay_tcp(client, target, &opener).await;
            drop(slot);
        });
    }
}

async fn relay_tcp(mut client: TcpStream, target: SocketAddr, opener: &Opener) {
    let upstream = async {
        let socket = opener.open(|| match target {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        })?;
        socket.connect(target).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, upstream).await {
        Ok(Ok(mut upstream)) => {
            // Half-closes are passed on; errors just end the relay.
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        refused => {
            tracing::debug!(%target, ?refused, "relay from IPv6 localhost: no connection");
            // A reset, as the client would get from a closed port.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ =
                nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger);
        }
    }
}

async fn serve_udp(socket: UdpSocket, target: SocketAddr, opener: Opener) {
    let socket = Arc::new(socket);
    let clock = Instant::now();
    let mut flows: HashMap<SocketAddr, UdpFlow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(UDP_IDLE / 4);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, client)) = received else { continue };
                if !flows.contains_key(&client) {
                    if flows.len() >= MAX_UDP_FLOWS {
                        continue;
                    }
                    match UdpFlow::open(&socket, client, target, &opener, clock) {
                        Ok(flow) => { flows.insert(client, flow); }
                        Err(e) => {
                            tracing::debug!(%target, "relay from IPv6 localhost: {e}");
                            continue;
                        }
                    }
                }
                let flow = &flows[&client];
                flow.touch(clock);
                let _ = flow.upstream.send(&buf[..len]).await;
            }
            _ = sweep.tick() => flows.retain(|_, flow| !flow.idle(clock)),
        }
    }
}

/// One UDP client on `[::1]` and its own socket towards the container, so
/// that the container's answers find their way back to that client.
struct UdpFlow {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the relay's clock started, at the last datagram.
    last: Arc<AtomicU64>,
    replies: AbortHandle,
}

impl UdpFlow {
    fn open(
        listener: &Arc<UdpSocket>,
        client: SocketAddr,
        target: SocketAddr,
        opener: &Opener,
        clock: Instant,
    ) -> io::Result<UdpFlow> {
        let any = match target {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let std_socket = opener.open(|| {
            let s = std::net::UdpSocket::bind(any)?;
            s.connect(target)?;
            Ok(s)
        })?;
        std_socket.set_nonblocking(true)?;
        let upstream = Arc::new(UdpSocket::from_std(std_socket)?);
        let last = Arc::new(AtomicU64::new(elapsed_ms(clock)));
        let replies = tokio::spawn({
            let (upstream, listener, last) = (upstream.clone(), listener.clone(), last.clone());
            async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    // An error here is the container's ICMP "port unreachable"
                    // for an earlier datagram: the client just gets no answer.
                    if let Ok(len) = upstream.recv(&mut buf).await {
                        last.store(elapsed_ms(clock), Ordering::Relaxed);
                        let _ = listener.send_to(&buf[..len], client).await;
                    }
                }
            }
        })
        .abort_handle();
        Ok(UdpFlow {
            upstream,
            last,
            replies,
        })
    }

    fn touch(&self, clock: Instant) {
        self.last.store(elapsed_ms(clock), Ordering::Relaxed);
    }

    fn idle(&self, clock: Instant) -> bool {
        elapsed_ms(clock).saturating_sub(self.last.load(Ordering::Relaxed))
            > UDP_IDLE.as_millis() as u64
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

fn elapsed_ms(clock: Instant) -> u64 {
    clock.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(spec: &str, ip: &str) -> PublishedPort {
        PublishedPort::parse(spec, ip.parse().unwrap()).unwrap()
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ports_on_all_addresses_and_on_ipv6_localhost_are_relayed() {
        let relays = relayed(&[
            port("8080:80", "10.66.0.2"),
            port("5353:53/udp", "10.66.0.2"),
            port("8000-8001:9000-9001", "10.66.0.2"),
            port("[::1]:7000:70", "fd66::2"),
            port("[::]:7001:71", "fd66::2"),
            port("0.0.0.0:8081:80", "10.66.0.2"),
        ]);
        assert_eq!(relays.len(), 7, "{relays:?}");
        assert_eq!(relays[&(Protocol::Tcp, 8080)], sa("10.66.0.2:80"));
        assert_eq!(relays[&(Protocol::Udp, 5353)], sa("10.66.0.2:53"));
        assert_eq!(relays[&(Protocol::Tcp, 8001)], sa("10.66.0.2:9001"));
        assert_eq!(relays[&(Protocol::Tcp, 7000)], sa("[fd66::2]:70"));
        assert_eq!(relays[&(Protocol::Tcp, 7001)], sa("[fd66::2]:71"));
    }

    #[test]
    fn other_host_addresses_and_sctp_are_not_relayed() {
        let relays = relayed(&[
            port("127.0.0.1:8080:80", "10.66.0.2"),
            port("198.18.0.1:8082:80", "10.66.0.2"),
            port("[fd00::1]:8083:80", "fd66::2"),
            port("8084:80/sctp", "10.66.0.2"),
        ]);
        assert!(relays.is_empty(), "{relays:?}");
    }

    #[test]
    fn a_withdrawn_port_hands_its_number_to_one_still_published() {
        // An IPv4-only container (addresses from the runtime's IPAM) and a
        // dual-stack one on [::1] share the number 8081.
        let v4 = port("8081:80", "10.66.0.3");
        let v6 = port("[::1]:8081:80", "fd66::2");
        let freed = [(Protocol::Tcp, 8081)];
        assert_eq!(relayed(&[v4, v6])[&freed[0]], sa("[fd66::2]:80"));
        let expected = vec![(freed[0], sa("10.66.0.3:80"))];
        // Whether or not the state still holds the withdrawn port.
        assert_eq!(successors(&freed, &[v6], &[v4, v6]), expected);
        assert_eq!(successors(&freed, &[v6], &[v4]), expected);
        assert!(successors(&freed, &[v4, v6], &[v4, v6]).is_empty());
        assert!(successors(&[], &[v6], &[v4]).is_empty());
    }

    #[test]
    fn a_dual_stack_container_is_reached_over_ipv6() {
        for order in [["10.66.0.2", "fd66::2"], ["fd66::2", "10.66.0.2"]] {
            let ports: Vec<PublishedPort> = order.iter().map(|ip| port("8080:80", ip)).collect();
            assert_eq!(relayed(&ports)[&(Protocol::Tcp, 8080)], sa("[fd66::2]:80"));
        }
    }
}
