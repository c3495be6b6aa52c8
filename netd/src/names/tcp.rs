//! DNS over TCP (RFC 7766): length-prefixed messages, answered in order,
//! with a cap on open connections and an idle timeout, so clients holding
//! connections open cannot exhaust the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::counters::DropReason;
use super::query::{Responder, Transport, Verdict};

#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpLimits {
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
}

pub(crate) async fn serve(listener: TcpListener, responder: Arc<Responder>, limits: TcpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!("DNS server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !responder.zone.contains(peer.ip()) {
            responder.counters.dropped(DropReason::OutsideSubnets);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            responder.counters.tcp_refused();
            continue;
        };
        let responder = responder.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(stream, &responder, limits.idle_timeout).await {
                tracing::debug!("DNS server: TCP client {peer}: {e}");
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    responder: &Responder,
    idle_timeout: Duration,
) -> std::io::Result<()> {
    let peer = stream.peer_addr()?.ip();
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            let mut message = vec![0u8; usize::from(len)];
            stream.read_exact(&mut message).await?;
            Ok::<_, std::io::Error>(message)
        };
        let message = match tokio::time::timeout(idle_timeout, read).await {
            Ok(Ok(message)) => message,
            // Closed by the client, cut short, or idle: done either way.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        let reply = match responder.receive(&message, peer, Transport::Tcp) {
            Verdict::Reply(bytes) => bytes,
            Verdict::Drop => return Ok(()),
            Verdict::Forward(pending) => responder.forward(pending).await,
        };
        if reply.is_empty() {
            return Ok(());
        }
        let len = u16::try_from(reply.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        tokio::time::timeout(idle_timeout, stream.write_all(&framed))
            .await
            .map_err(|_| std::io::Error::other("client does not read its answers"))??;
    }
}
