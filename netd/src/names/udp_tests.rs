use super::*;
use crate::names::limits::RateLimit;
use crate::names::query::tests::responder_in;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

/// A responder for names on loopback: the client is 127.0.0.1.
fn responder() -> Arc<Responder> {
    Arc::new(responder_in(
        "127.0.0.0/8",
        "127.0.0.2",
        RateLimit::default(),
        4,
    ))
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn queued_queries_are_all_answered_and_dropping_frees_the_port() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let responder = responder();
    let server = UdpServer::start(socket, responder.clone(), Handle::current()).unwrap();

    // An empty datagram (first: counted before any answer leaves), more
    // queries than one batch takes, sent before any is read, an unknown
    // name in the domain and an outside name (forwarded, no upstream:
    // SERVFAIL from the runtime).
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(&[], address).unwrap();
    let sent = 3 * BATCH as u16;
    for id in 0..sent {
        client.send_to(&query(id, "WEB."), address).unwrap();
    }
    client
        .send_to(&query(1000, "nobody.weft.internal."), address)
        .unwrap();
    client
        .send_to(&query(1001, "example.org."), address)
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    for _ in 0..sent + 2 {
        let (n, _) = tokio::task::block_in_place(|| client.recv_from(&mut buf)).unwrap();
        let answer = Message::from_vec(&buf[..n]).unwrap();
        let code = answer.metadata.response_code;
        match answer.metadata.id {
            1000 => assert_eq!(code, ResponseCode::NXDomain),
            1001 => assert_eq!(code, ResponseCode::ServFail),
            id => {
                assert_eq!(answer.answers[0].data.to_string(), "127.0.0.2", "{id}");
                assert_eq!(answer.answers[0].name.to_ascii(), "WEB.");
            }
        }
        seen.push(answer.metadata.id);
    }
    seen.sort_unstable();
    let mut expected: Vec<u16> = (0..sent).collect();
    expected.extend([1000, 1001]);
    assert_eq!(seen, expected);
    let counters = responder.counters.snapshot();
    assert_eq!(
        (
            counters.answered,
            counters.nxdomain,
            counters.servfail,
            counters.dropped_short
        ),
        (u64::from(sent), 1, 1, 1)
    );

    // Dropped: the thread is gone and the port is free at once.
    drop(server);
    UdpSocket::bind(address).expect("the port is free after the drop");
}
