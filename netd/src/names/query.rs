//! One query, from bytes to the bytes of its answer (or none): the checks
//! every query passes (source, rate, form), the network's own names, then
//! the forwarder. UDP and TCP share it.

use std::iter;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{
    emit_message_parts, Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
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

/// A [`Verdict`] whose answer was written into the caller's buffer.
pub(crate) enum Outcome {
    Answered,
    Dropped,
    Forward(Box<Pending>),
}

pub(crate) struct Pending {
    request: Request,
    transport: Transport,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What an answer needs of a query: its ID and RD bit, its one question,
/// its EDNS. Read section by section with hickory's decoders, with the
/// checks `Message::read` makes, but without building the message's
/// vectors of records only to drop them.
pub(crate) struct Request {
    id: u16,
    recursion_desired: bool,
    query: Query,
    edns: Option<Edns>,
}

impl Request {
    /// The rest of a query whose `header` `decoder` has read; None when it
    /// does not decode or has not exactly one question (FORMERR).
    fn read(header: &Header, decoder: &mut BinDecoder<'_>) -> Option<Request> {
        let counts = header.counts;
        if counts.queries != 1 {
            return None;
        }
        let query = Query::read(decoder).ok()?;
        let op = header.metadata.op_code;
        Message::read_records(decoder, usize::from(counts.answers), false, op).ok()?;
        Message::read_records(decoder, usize::from(counts.authorities), false, op).ok()?;
        let (_, edns, _) =
            Message::read_records(decoder, usize::from(counts.additionals), true, op).ok()?;
        Some(Request {
            id: header.metadata.id,
            recursion_desired: header.metadata.recursion_desired,
            query,
            edns,
        })
    }

    #[cfg(test)]
    pub(crate) fn decode(packet: &[u8]) -> Option<Request> {
        let mut decoder = BinDecoder::new(packet);
        let header = Header::read(&mut decoder).ok()?;
        Request::read(&header, &mut decoder)
    }
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
        let mut out = Vec::new();
        match self.answer_into(packet, source, transport, &mut out) {
            Outcome::Answered => Verdict::Reply(out),
            Outcome::Dropped => Verdict::Drop,
            Outcome::Forward(pending) => Verdict::Forward(pending),
        }
    }

    /// [`Responder::receive`], writing an answer into `out` (cleared
    /// first), so that a caller answering many queries reuses one buffer.
    /// An answer that could not be encoded at all leaves `out` empty.
    pub(crate) fn answer_into(
        &self,
        packet: &[u8],
        source: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        let counters = &self.counters;
        let drop = |reason| {
            counters.dropped(reason);
            Outcome::Dropped
        };
        if !self.zone.contains(source) {
            return drop(DropReason::OutsideSubnets);
        }
        if !self.limiter.allow(source, Instant::now()) {
            return drop(DropReason::RateLimited);
        }
        let mut decoder = BinDecoder::new(packet);
        let Ok(header) = Header::read(&mut decoder) else {
            return drop(DropReason::Short);
        };
        let meta = header.metadata;
        if meta.message_type == MessageType::Response {
            return drop(DropReason::Response);
        }
        if meta.op_code != OpCode::Query {
            counters.notimp();
            return error(meta.id, meta.op_code, ResponseCode::NotImp, None, out);
        }
        let Some(request) = Request::read(&header, &mut decoder) else {
            counters.formerr();
            return error(meta.id, meta.op_code, ResponseCode::FormErr, None, out);
        };
        let query = &request.query;
        let kind = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(kind, RecordType::AXFR | RecordType::IXFR)
        {
            counters.refused();
            return error(
                meta.id,
                meta.op_code,
                ResponseCode::Refused,
                Some(&request),
                out,
            );
        }
        let (code, records) = match self.zone.answer(&self.table, query) {
            LocalAnswer::Records(records) => {
                counters.answered();
                (ResponseCode::NoError, records)
            }
            LocalAnswer::NxDomain => {
                counters.nxdomain();
                (ResponseCode::NXDomain, Vec::new())
            }
            LocalAnswer::NotOurs => {
                if let Some(cached) = self.forwarder.cached(query) {
                    counters.forwarded(true);
                    write_reply(&request, &cached.sections(), false, transport, out);
                    return Outcome::Answered;
                }
                return match self.forward_slots.clone().try_acquire_owned() {
                    Ok(permit) => Outcome::Forward(Box::new(Pending {
                        request,
                        transport,
                        _permit: permit,
                    })),
                    Err(_) => drop(DropReason::Overloaded),
                };
            }
        };
        let sections = Sections {
            response_code: code,
            answers: &records,
            authorities: &[],
            additionals: &[],
        };
        write_reply(&request, &sections, true, transport, out);
        Outcome::Answered
    }

    /// Resolves a query the upstreams must answer: their answer, or SERVFAIL.
    pub(crate) async fn forward(&self, pending: Box<Pending>) -> Vec<u8> {
        let request = &pending.request;
        let mut out = Vec::new();
        match self.forwarder.resolve(&request.query).await {
            Ok(answer) => {
                self.counters.forwarded(false);
                write_reply(
                    request,
                    &answer.sections(),
                    false,
                    pending.transport,
                    &mut out,
                );
            }
            Err(e) => {
                tracing::debug!("DNS forwarding {}: {e}", request.query);
                self.counters.servfail();
                let failed = Sections {
                    response_code: ResponseCode::ServFail,
                    answers: &[],
                    authorities: &[],
                    additionals: &[],
                };
                write_reply(request, &failed, false, pending.transport, &mut out);
            }
        }
        out
    }
}

/// The parts of an answer, borrowed from wherever they are kept.
pub(crate) struct Sections<'a> {
    pub(crate) response_code: ResponseCode,
    pub(crate) answers: &'a [Record],
    pub(crate) authorities: &'a [Record],
    pub(crate) additionals: &'a [Record],
}

impl UpstreamAnswer {
    pub(crate) fn sections(&self) -> Sections<'_> {
        Sections {
            response_code: self.response_code,
            answers: &self.answers,
            authorities: &self.authorities,
            additionals: &self.additionals,
        }
    }
}

/// An error answer: the header, and the question when it was read.
fn error(
    id: u16,
    op_code: OpCode,
    code: ResponseCode,
    request: Option<&Request>,
    out: &mut Vec<u8>,
) -> Outcome {
    let mut reply = Message::error_msg(id, op_code, code);
    if let Some(request) = request {
        reply.metadata.recursion_desired = request.recursion_desired;
        reply.add_query(request.query.clone());
    }
    match reply.emit(&mut BinEncoder::new(out)) {
        Ok(()) => Outcome::Answered,
        Err(_) => {
            out.clear();
            Outcome::Dropped
        }
    }
}

/// Writes the answer to `request` into `out`, cut to the client's UDP
/// buffer (the TC bit then tells it to ask again over TCP). Written with
/// hickory's encoder from the borrowed parts, no message built.
fn write_reply(
    request: &Request,
    answer: &Sections<'_>,
    authoritative: bool,
    transport: Transport,
    out: &mut Vec<u8>,
) {
    let mut metadata = Metadata::new(request.id, MessageType::Response, OpCode::Query);
    metadata.authoritative = authoritative;
    metadata.recursion_desired = request.recursion_desired;
    metadata.recursion_available = true;
    metadata.response_code = answer.response_code;
    let limit = match (&request.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(edns), Transport::Udp) => {
            usize::from(edns.max_payload().clamp(512, SERVER_UDP_PAYLOAD))
        }
        (None, Transport::Udp) => 512,
    };
    let edns = request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(SERVER_UDP_PAYLOAD);
        edns
    });
    let emit = |metadata: &Metadata, sections: &Sections<'_>, out: &mut Vec<u8>| {
        out.clear();
        emit_message_parts(
            metadata,
            &mut iter::once(&request.query),
            &mut sections.answers.iter(),
            &mut sections.authorities.iter(),
            &mut sections.additionals.iter(),
            edns.as_ref(),
            None,
            &mut BinEncoder::new(out),
        )
    };
    let encoded = emit(&metadata, answer, out);
    if encoded.is_ok() && out.len() <= limit {
        return;
    }
    // Too big, or records that cannot be written back (rare upstream
    // data): the question alone with TC, or SERVFAIL as the last resort.
    if encoded.is_ok() {
        metadata.truncation = true;
    } else {
        metadata.response_code = ResponseCode::ServFail;
    }
    let question_only = Sections {
        response_code: metadata.response_code,
        answers: &[],
        authorities: &[],
        additionals: &[],
    };
    if emit(&metadata, &question_only, out).is_err() {
        out.clear();
    }
}

#[cfg(test)]
#[path = "query_tests.rs"]
pub(crate) mod tests;
