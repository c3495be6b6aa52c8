//! One query, from bytes to the bytes of its answer (or none): the checks
//! every query passes (source, rate, form), the network's own names, then
//! the forwarder. UDP and TCP share it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::sync::Semaphore;

use super::answer::{LocalAnswer, Zone};
use super::cache::UpstreamAnswer;
use super::counters::{DnsCounters, DropReason};
use super::forward::Forwarder;
use super::limits::SourceLimiter;
use super::table::NameTable;

/// The UDP payload this server offers in its EDNS answers.
const SERVER_UDP_PAYLOAD: u16 = 1232;

/// How the query came: UDP answers must fit the client's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query after the cheap checks.
pub(crate) enum Verdict {
    /// Answered at once (local names, cache, errors).
    Reply(Vec<u8>),
    /// No answer: dropped and counted.
    Drop,
    /// Needs the upstreams: hand it to [`Responder::forward`] off the receive
    /// path, holding the permit for the forwarded-query slot.
    Forward(Box<Pending>),
}

pub(crate) struct Pending {
    request: Message,
    transport: Transport,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Everything a query needs; one per server, shared by its tasks.
pub(crate) struct Responder {
    pub(crate) table: Arc<NameTable>,
    pub(crate) zone: Zone,
    pub(crate) forwarder: Forwarder,
    pub(crate) counters: Arc<DnsCounters>,
    pub(crate) limiter: SourceLimiter,
    /// Forwarded queries in flight at most; beyond, queries are dropped
    /// (the client retries) rather than queued without bound.
    pub(crate) forward_slots: Arc<Semaphore>,
}

impl Responder {
    /// Decides on `packet` from `source` without waiting on anything.
    pub(crate) fn receive(&self, packet: &[u8], source: IpAddr, transport: Transport) -> Verdict {
        let counters = &self.counters;
        let drop = |reason| {
            counters.dropped(reason);
            Verdict::Drop
        };
        if !self.zone.contains(source) {
            return drop(DropReason::OutsideSubnets);
        }
        if !self.limiter.allow(source, Instant::now()) {
            return drop(DropReason::RateLimited);
        }
        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            return drop(DropReason::Short);
        };
        let meta = header.metadata;
        if meta.message_type == MessageType::Response {
            return drop(DropReason::Response);
        }
        if meta.op_code != OpCode::Query {
            counters.notimp();
            return self.error(meta.id, meta.op_code, ResponseCode::NotImp, None);
        }
        let request = match Message::from_vec(packet) {
            Ok(request) if request.queries.len() == 1 => request,
            _ => {
                counters.formerr();
                return self.error(meta.id, meta.op_code, ResponseCode::FormErr, None);
            }
        };
        let query = &request.queries[0];
        let kind = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(kind, RecordType::AXFR | RecordType::IXFR)
        {
            counters.refused();
            return self.error(meta.id, meta.op_code, ResponseCode::Refused, Some(&request));
        }
        match self.zone.answer(&self.table, query) {
            LocalAnswer::Records(records) => {
                counters.answered();
                self.local(&request, ResponseCode::NoError, records, transport)
            }
            LocalAnswer::NxDomain => {
                counters.nxdomain();
                self.local(&request, ResponseCode::NXDomain, Vec::new(), transport)
            }
            LocalAnswer::NotOurs => {
                if let Some(cached) = self.forwarder.cached(query) {
                    counters.forwarded(true);
                    return Verdict::Reply(reply_bytes(&request, &cached, false, transport));
                }
                match self.forward_slots.clone().try_acquire_owned() {
                    Ok(permit) => Verdict::Forward(Box::new(Pending {
                        request,
                        transport,
                        _permit: permit,
                    })),
                    Err(_) => drop(DropReason::Overloaded),
                }
            }
        }
    }

    /// Resolves a query the upstreams must answer: their answer, or SERVFAIL.
    pub(crate) async fn forward(&self, pending: Box<Pending>) -> Vec<u8> {
        let request = &pending.request;
        match self.forwarder.resolve(&request.queries[0]).await {
            Ok(answer) => {
                self.counters.forwarded(false);
                reply_bytes(request, &answer, false, pending.transport)
            }
            Err(e) => {
                tracing::debug!("DNS forwarding {}: {e}", request.queries[0]);
                self.counters.servfail();
                let failed = UpstreamAnswer {
                    response_code: ResponseCode::ServFail,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                    additionals: Vec::new(),
                };
                reply_bytes(request, &failed, false, pending.transport)
            }
        }
    }

    fn local(
        &self,
        request: &Message,
        code: ResponseCode,
        answers: Vec<Record>,
        transport: Transport,
    ) -> Verdict {
        let answer = UpstreamAnswer {
            response_code: code,
            answers,
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        Verdict::Reply(reply_bytes(request, &answer, true, transport))
    }

    fn error(
        &self,
        id: u16,
        op_code: OpCode,
        code: ResponseCode,
        request: Option<&Message>,
    ) -> Verdict {
        let mut reply = Message::error_msg(id, op_code, code);
        if let Some(request) = request {
            reply.metadata.recursion_desired = request.metadata.recursion_desired;
            reply.add_queries(request.queries.iter().cloned());
        }
        match reply.to_vec() {
            Ok(bytes) => Verdict::Reply(bytes),
            Err(_) => Verdict::Drop,
        }
    }
}

/// The answer message for `request`, cut to the client's UDP buffer (the
/// TC bit then tells it to ask again over TCP).
fn reply_bytes(
    request: &Message,
    answer: &UpstreamAnswer,
    authoritative: bool,
    transport: Transport,
) -> Vec<u8> {
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.authoritative = authoritative;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = answer.response_code;
    reply.add_queries(request.queries.iter().cloned());
    reply.insert_answers(answer.answers.clone());
    reply.insert_authorities(answer.authorities.clone());
    reply.insert_additionals(answer.additionals.clone());
    let limit = match (&request.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(edns), Transport::Udp) => {
            usize::from(edns.max_payload().clamp(512, SERVER_UDP_PAYLOAD))
        }
        (None, Transport::Udp) => 512,
    };
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(SERVER_UDP_PAYLOAD);
        reply.set_edns(edns);
    }
    match reply.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        // Too big, or records that cannot be written back (rare upstream
        // data): the question alone with TC, or SERVFAIL as the last resort.
        encoded => {
            let mut cut = reply.truncate();
            if encoded.is_err() {
                cut.metadata.truncation = false;
                cut.metadata.response_code = ResponseCode::ServFail;
            }
            cut.to_vec().unwrap_or_default()
        }
    }
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
