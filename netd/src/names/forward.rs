//! Forwarding what is not the network's own to the resolvers of netd's
//! namespace: UDP first, TCP when the answer is truncated, the next
//! upstream when one does not answer, and SERVFAIL once the deadline has
//! passed, well within a client's own timeout (5 s for glibc and dig).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use plumb::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cache::{AnswerCache, UpstreamAnswer};
use super::resolv_conf::Upstreams;

/// The largest UDP answer asked of an upstream (the DNS flag day 2020
/// value: no IP fragmentation on any usual path).
const UPSTREAM_UDP_PAYLOAD: u16 = 1232;

#[derive(Debug)]
pub(crate) struct Forwarder {
    /// Where the upstream sockets are opened: netd's namespace, whose
    /// resolv.conf names the upstreams.
    netns: Netns,
    upstreams: Upstreams,
    cache: Mutex<AnswerCache>,
    deadline: Duration,
}

/// Why no upstream answer came back; the client gets SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream resolver configured")]
    NoUpstreams,
    #[error("no upstream answered within {0:?}, or all failed")]
    Timeout(Duration),
}

impl Forwarder {
    pub(crate) fn new(
        netns: Netns,
        upstreams: Upstreams,
        cache_entries: usize,
        deadline: Duration,
    ) -> Forwarder {
        Forwarder {
            netns,
            upstreams,
            cache: Mutex::new(AnswerCache::new(cache_entries)),
            deadline,
        }
    }

    /// The cached answer to `query`, if any.
    pub(crate) fn cached(&self, query: &Query) -> Option<UpstreamAnswer> {
        self.cache().get(query, Instant::now())
    }

    /// Asks the upstreams in turn, each given an equal share of what is
    /// left of the deadline.
    pub(crate) async fn resolve(&self, query: &Query) -> Result<UpstreamAnswer, ForwardError> {
        let start = Instant::now();
        let servers = self.upstreams.current(start);
        if servers.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        for (i, server) in servers.iter().enumerate() {
            let left = self.deadline.saturating_sub(start.elapsed());
            let share = left / (servers.len() - i) as u32;
            match tokio::time::timeout(share, self.ask(*server, query)).await {
                // An upstream that fails or refuses the question: the next
                // one may do better, as glibc's resolver also tries.
                Ok(Ok(message)) if upstream_failed(message.metadata.response_code) => {
                    tracing::debug!(
                        "DNS forwarding: upstream {server}: {}",
                        message.metadata.response_code
                    );
                }
                Ok(Ok(message)) => {
                    let answer = UpstreamAnswer::from_message(message);
                    self.cache().insert(query, &answer, Instant::now());
                    return Ok(answer);
                }
                Ok(Err(e)) => tracing::debug!("DNS forwarding: upstream {server}: {e}"),
                Err(_) => {
                    tracing::debug!("DNS forwarding: upstream {server}: no answer in {share:?}")
                }
            }
        }
        Err(ForwardError::Timeout(self.deadline))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, AnswerCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One upstream over UDP, and over TCP when the UDP answer is truncated.
    async fn ask(&self, server: SocketAddr, query: &Query) -> std::io::Result<Message> {
        let id: u16 = rand::random();
        let mut request = Message::new(id, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_UDP_PAYLOAD);
        request.set_edns(edns);
        let bytes = request.to_vec().map_err(std::io::Error::other)?;

        let socket = self.udp_socket(server).await?;
        socket.connect(server).await?;
        socket.send(&bytes).await?;
        let mut buf = vec![0u8; usize::from(UPSTREAM_UDP_PAYLOAD).max(4096)];
        let reply = loop {
            let n = socket.recv(&mut buf).await?;
            // Anything that is not the answer to this very question (a late
            // answer, a spoofing attempt) is ignored; the deadline bounds it.
            if let Some(reply) = matching_reply(&buf[..n], id, query) {
                break reply;
            }
        };
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        self.ask_tcp(server, &bytes, id, query).await
    }

    async fn ask_tcp(
        &self,
        server: SocketAddr,
        request: &[u8],
        id: u16,
        query: &Query,
    ) -> std::io::Result<Message> {
        let socket = self
            .in_netns(move || match server {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            })
            .await?;
        let mut stream = socket.connect(server).await?;
        let len = u16::try_from(request.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        matching_reply(&buf, id, query).ok_or_else(|| {
            std::io::Error::other(format!(
                "upstream {server} answered another question over TCP"
            ))
        })
    }

    /// A UDP socket on a random port in netd's namespace.
    async fn udp_socket(&self, server: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
        let any: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = self
            .in_netns(move || {
                let socket = std::net::UdpSocket::bind(any)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .await?;
        tokio::net::UdpSocket::from_std(socket)
    }

    /// Runs `open` on a thread inside netd's namespace (never on a runtime
    /// worker, which must not change namespace); when the process already
    /// runs there, as netd does, no thread is started.
    async fn in_netns<T: Send + 'static>(
        &self,
        open: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let netns = self.netns.clone();
        tokio::task::spawn_blocking(move || netns.run(open))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?
    }
}

fn upstream_failed(code: ResponseCode) -> bool {
    matches!(
        code,
        ResponseCode::ServFail
            | ResponseCode::Refused
            | ResponseCode::NotImp
            | ResponseCode::FormErr
    )
}

/// The reply to question `query` with `id`, or None.
fn matching_reply(bytes: &[u8], id: u16, query: &Query) -> Option<Message> {
    let reply = Message::from_vec(bytes).ok()?;
    let same_question = reply.queries.len() == 1
        && reply.queries[0].name() == query.name()
        && reply.queries[0].query_type() == query.query_type()
        && reply.queries[0].query_class() == query.query_class();
    (reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && same_question)
        .then_some(reply)
}
