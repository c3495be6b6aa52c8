use super::*;
use hickory_proto::rr::rdata::{A, SOA};

fn query(name: &str) -> Query {
    Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
}

fn a_answer(name: &str, ttls: &[u32]) -> UpstreamAnswer {
    UpstreamAnswer {
        response_code: ResponseCode::NoError,
        answers: ttls
            .iter()
            .map(|&ttl| {
                Record::from_rdata(
                    Name::from_ascii(name).unwrap(),
                    ttl,
                    RData::A(A::new(192, 0, 2, 1)),
                )
            })
            .collect(),
        authorities: vec![],
        additionals: vec![],
    }
}

fn nxdomain(soa_ttl: Option<(u32, u32)>) -> UpstreamAnswer {
    let soa = soa_ttl.map(|(ttl, minimum)| {
        let origin = Name::from_ascii("example.").unwrap();
        Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(origin.clone(), origin, 1, 60, 60, 60, minimum)),
        )
    });
    UpstreamAnswer {
        response_code: ResponseCode::NXDomain,
        answers: vec![],
        authorities: soa.into_iter().collect(),
        additionals: vec![],
    }
}

#[test]
fn an_answer_is_kept_for_its_smallest_ttl_and_handed_out_aged() {
    let mut cache = AnswerCache::new(16);
    let t0 = Instant::now();
    cache.insert(
        &query("www.example."),
        &a_answer("www.example.", &[30, 10]),
        t0,
    );
    // Any case of the name finds it.
    let hit = cache
        .get(&query("WWW.Example."), t0 + Duration::from_secs(4))
        .unwrap();
    assert_eq!(
        hit.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
        [26, 6]
    );
    assert!(cache
        .get(&query("www.example."), t0 + Duration::from_secs(10))
        .is_none());
    assert_eq!(cache.len(), 0, "an expired entry is removed when met");
}

#[test]
fn negative_answers_are_kept_for_the_soa_minimum_and_only_with_an_soa() {
    let mut cache = AnswerCache::new(16);
    let t0 = Instant::now();
    cache.insert(&query("a.example."), &nxdomain(Some((300, 20))), t0);
    cache.insert(&query("b.example."), &nxdomain(None), t0);
    assert!(cache
        .get(&query("a.example."), t0 + Duration::from_secs(19))
        .is_some());
    assert!(cache
        .get(&query("a.example."), t0 + Duration::from_secs(20))
        .is_none());
    assert!(cache.get(&query("b.example."), t0).is_none());
    // TTL 0 and SERVFAIL are never cached.
    cache.insert(&query("c.example."), &a_answer("c.example.", &[0]), t0);
    let mut failed = a_answer("d.example.", &[60]);
    failed.response_code = ResponseCode::ServFail;
    cache.insert(&query("d.example."), &failed, t0);
    assert_eq!(cache.len(), 0);
}

#[test]
fn a_full_cache_drops_the_expired_then_the_soonest_to_expire() {
    let mut cache = AnswerCache::new(2);
    let t0 = Instant::now();
    cache.insert(&query("short."), &a_answer("short.", &[5]), t0);
    cache.insert(&query("long."), &a_answer("long.", &[500]), t0);
    cache.insert(&query("new."), &a_answer("new.", &[100]), t0);
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&query("short."), t0).is_none());
    assert!(cache.get(&query("long."), t0).is_some());
    assert!(cache.get(&query("new."), t0).is_some());
    // A huge TTL is held to the cap.
    cache.insert(&query("long."), &a_answer("long.", &[u32::MAX]), t0);
    let later = t0 + Duration::from_secs(u64::from(MAX_CACHE_TTL));
    assert!(cache.get(&query("long."), later).is_none());
}
