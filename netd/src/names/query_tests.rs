use super::*;
use crate::names::forward::Forwarder;
use crate::names::limits::RateLimit;
use crate::names::resolv_conf::Upstreams;
use crate::names::table::{ContainerNames, NameSource};
use hickory_proto::op::Query;
use hickory_proto::rr::Name;

fn responder(rate: RateLimit) -> Responder {
    responder_in("10.66.0.0/24", "10.66.0.2", rate, 1)
}

/// A responder for clients in `subnet` that knows "web" at `web`, with no
/// upstream (forwarded queries fail) and `forward_slots` slots.
pub(crate) fn responder_in(
    subnet: &str,
    web: &str,
    rate: RateLimit,
    forward_slots: usize,
) -> Responder {
    let table = NameTable::new();
    table
        .insert(ContainerNames {
            container: "c1".into(),
            name: "web".into(),
            aliases: vec![],
            ipv4: Some(web.parse().unwrap()),
            ipv6: None,
            host: "a".into(),
            source: NameSource::Local,
        })
        .unwrap();
    Responder {
        table: Arc::new(table),
        zone: Zone::new("weft.internal", vec![subnet.parse().unwrap()]).unwrap(),
        forwarder: Forwarder::new(
            plumb::Netns::current().unwrap(),
            Upstreams::new("/nonexistent/resolv.conf".into(), vec![]),
            16,
            std::time::Duration::from_millis(100),
        ),
        counters: Arc::new(DnsCounters::default()),
        limiter: SourceLimiter::new(rate),
        forward_slots: Arc::new(Semaphore::new(forward_slots)),
    }
}

fn query_bytes(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m.to_vec().unwrap()
}

fn reply(verdict: Verdict) -> Message {
    match verdict {
        Verdict::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
        Verdict::Drop => panic!("dropped"),
        Verdict::Forward(_) => panic!("forwarded"),
    }
}

const CLIENT: &str = "10.66.0.3";

#[test]
fn bad_queries_get_the_fitting_error_or_are_dropped_and_all_are_counted() {
    let r = responder(RateLimit::default());
    let client = CLIENT.parse().unwrap();
    let good = query_bytes("web.weft.internal.", RecordType::A);
    let answer = reply(r.receive(&good, client, Transport::Udp));
    assert_eq!(answer.metadata.id, 0x1234);
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.answers[0].data.to_string(), "10.66.0.2");

    // Too short for a header; a response; from outside the subnets.
    assert!(matches!(
        r.receive(&good[..5], client, Transport::Udp),
        Verdict::Drop
    ));
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(matches!(
        r.receive(&response, client, Transport::Udp),
        Verdict::Drop
    ));
    let outside = "192.0.2.1".parse().unwrap();
    assert!(matches!(
        r.receive(&good, outside, Transport::Udp),
        Verdict::Drop
    ));
    // The question cut off: FORMERR with the client's ID.
    let cut = reply(r.receive(&good[..good.len() - 3], client, Transport::Udp));
    assert_eq!(cut.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(cut.metadata.id, 0x1234);
    // A name longer than 255 bytes (label after label) is FORMERR too.
    let mut long = good[..12].to_vec();
    for _ in 0..10 {
        long.push(63);
        long.extend_from_slice(&[b'a'; 63]);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let long = reply(r.receive(&long, client, Transport::Udp));
    assert_eq!(long.metadata.response_code, ResponseCode::FormErr);
    // Opcode STATUS: NOTIMP; class CH: REFUSED; AXFR: REFUSED.
    let mut status = good.clone();
    status[2] = (status[2] & 0x87) | (2 << 3);
    let status = reply(r.receive(&status, client, Transport::Udp));
    assert_eq!(status.metadata.response_code, ResponseCode::NotImp);
    let mut chaos = Message::new(7, MessageType::Query, OpCode::Query);
    let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    let chaos = reply(r.receive(&chaos.to_vec().unwrap(), client, Transport::Udp));
    assert_eq!(chaos.metadata.response_code, ResponseCode::Refused);
    let axfr = query_bytes("weft.internal.", RecordType::AXFR);
    let axfr = reply(r.receive(&axfr, client, Transport::Tcp));
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
    // An unknown type for a known name: NODATA.
    let unknown = query_bytes("web.", RecordType::Unknown(65_000));
    let unknown = reply(r.receive(&unknown, client, Transport::Udp));
    assert_eq!(unknown.metadata.response_code, ResponseCode::NoError);
    assert!(unknown.answers.is_empty());

    let c = r.counters.snapshot();
    assert_eq!((c.answered, c.formerr, c.notimp, c.refused), (2, 2, 1, 2));
    assert_eq!(
        (
            c.dropped_short,
            c.dropped_response,
            c.dropped_outside_subnets
        ),
        (1, 1, 1)
    );
    assert_eq!(c.total(), 10);
}

#[tokio::test]
async fn outside_names_are_forwarded_within_bounds_and_fail_as_servfail() {
    let r = responder(RateLimit {
        per_second: 1,
        burst: 3,
    });
    let client = CLIENT.parse().unwrap();
    let outside = query_bytes("example.org.", RecordType::A);
    let Verdict::Forward(first) = r.receive(&outside, client, Transport::Udp) else {
        panic!("an outside name is forwarded")
    };
    // One forwarding slot: a second forwarded query meanwhile is dropped.
    assert!(matches!(
        r.receive(&outside, client, Transport::Udp),
        Verdict::Drop
    ));
    // No resolv.conf: SERVFAIL.
    let failed = Message::from_vec(&r.forward(first).await).unwrap();
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(failed.queries[0].name().to_ascii(), "example.org.");
    // SERVFAIL is not cached: the next query is forwarded again (its slot
    // is free now); then the burst of 3 is spent: the source is cut off,
    // another is not.
    let Verdict::Forward(third) = r.receive(&outside, client, Transport::Udp) else {
        panic!("forwarded again")
    };
    drop(third);
    assert!(matches!(
        r.receive(&outside, client, Transport::Udp),
        Verdict::Drop
    ));
    let other = "10.66.0.4".parse().unwrap();
    let good = query_bytes("web.", RecordType::A);
    assert!(matches!(
        r.receive(&good, other, Transport::Udp),
        Verdict::Reply(_)
    ));
    let c = r.counters.snapshot();
    assert_eq!(
        (
            c.servfail,
            c.dropped_overloaded,
            c.dropped_rate_limited,
            c.answered
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn an_answer_too_big_for_udp_is_truncated() {
    let table = NameTable::new();
    let request = Request::decode(&query_bytes("big.example.", RecordType::A)).unwrap();
    let records: Vec<Record> = (0..100u8)
        .map(|i| {
            Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, i)),
            )
        })
        .collect();
    let answer = UpstreamAnswer {
        response_code: ResponseCode::NoError,
        answers: records,
        authorities: vec![],
        additionals: vec![],
    };
    let encoded = |transport| {
        let mut out = Vec::new();
        write_reply(&request, &answer.sections(), false, transport, &mut out);
        Message::from_vec(&out).unwrap()
    };
    let udp = encoded(Transport::Udp);
    assert!(udp.metadata.truncation);
    assert!(udp.answers.is_empty());
    let tcp = encoded(Transport::Tcp);
    assert_eq!(tcp.answers.len(), 100);
    drop(table);
}
