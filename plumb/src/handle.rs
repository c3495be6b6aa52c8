//! A route-netlink connection bound to one network namespace.
//!
//! Every request goes through `request_ack` or `dump`, so that kernel errors
//! always carry the object and namespace they concern, and dumps the kernel
//! marks as interrupted (NLM_F_DUMP_INTR, or EINTR on newer kernels) are
//! retried instead of returning a half-consistent view.

use futures::StreamExt;
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result, Target};
use crate::netns::Netns;

/// How often an interrupted dump is retried before giving up.
const DUMP_ATTEMPTS: usize = 10;

/// A netlink connection into one namespace. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    netns: Netns,
    /// The kernel runs one dump at a time per socket and answers a second
    /// with EBUSY, so dumps on a shared connection take turns.
    dump_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a connection inside `netns`. Must be called within a tokio runtime;
    /// the connection's driver is spawned on it.
    pub async fn open(netns: &Netns) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = netns
            .run(move || {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| {
                Error::io(
                    format!("open netlink socket in namespace {}", netns.label()),
                    e,
                )
            })?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns: netns.clone(),
            dump_turn: Default::default(),
        })
    }

    /// A connection in the namespace this process runs in.
    pub async fn current() -> Result<Netlink> {
        Self::open(&Netns::current()?).await
    }

    /// The namespace this connection is bound to.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Describes an operation for error messages.
    pub fn target(&self, action: impl Into<String>, object: impl Into<String>) -> Target {
        Target {
            action: action.into(),
            object: object.into(),
            namespace: self.netns.label().to_string(),
        }
    }

    /// Sends a request that expects an acknowledgement.
    pub async fn request_ack(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        target: impl FnOnce() -> Target,
    ) -> Result<()> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut responses = handle
            .request(request)
            .map_err(|e| Error::Other(format!("netlink request failed: {e}")))?;
        while let Some(response) = responses.next().await {
            if let NetlinkPayload::Error(err) = response.payload {
                if let Some(code) = err.code {
                    return Err(Error::from_errno(-code.get(), target()));
                }
            }
        }
        Ok(())
    }

    /// Sends a request the kernel answers with one object (a GET without
    /// NLM_F_DUMP, e.g. one link by name). Kernel errors carry `target`.
    pub async fn request_one(
        &self,
        message: RouteNetlinkMessage,
        target: impl FnOnce() -> Target,
    ) -> Result<RouteNetlinkMessage> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut responses = handle
            .request(request)
            .map_err(|e| Error::Other(format!("netlink request failed: {e}")))?;
        let mut answer = None;
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(inner) => answer = Some(inner),
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        return Err(Error::from_errno(-code.get(), target()));
                    }
                }
                _ => {}
            }
        }
        answer.ok_or_else(|| {
            let t = target();
            Error::Other(format!(
                "{} {} in namespace {}: the kernel sent no answer",
                t.action, t.object, t.namespace
            ))
        })
    }

    /// Dumps objects of one kind, retrying when the kernel says the dump was
    /// interrupted by a concurrent change.
    pub async fn dump(
        &self,
        message: RouteNetlinkMessage,
        target: impl Fn() -> Target,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let _turn = self.dump_turn.lock().await;
        for _ in 0..DUMP_ATTEMPTS {
            match self.dump_once(message.clone()).await {
                Ok(Some(items)) => return Ok(items),
                Ok(None) => continue,
                Err(code) if code == libc::EINTR => continue,
                Err(code) => return Err(Error::from_errno(code, target())),
            }
        }
        let t = target();
        Err(Error::Other(format!(
            "{} {} in namespace {}: the kernel kept interrupting the dump ({DUMP_ATTEMPTS} attempts)",
            t.action, t.object, t.namespace
        )))
    }

    /// One dump: `Ok(None)` when it was interrupted, `Err(errno)` on a kernel error.
    async fn dump_once(
        &self,
        message: RouteNetlinkMessage,
    ) -> std::result::Result<Option<Vec<RouteNetlinkMessage>>, i32> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(|_| libc::EIO)?;
        let mut items = Vec::new();
        let mut interrupted = false;
        while let Some(response) = responses.next().await {
            if response.header.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match response.payload {
                NetlinkPayload::InnerMessage(inner) => items.push(inner),
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        return Err(-code.get());
                    }
                }
                _ => {}
            }
        }
        Ok((!interrupted).then_some(items))
    }
}
