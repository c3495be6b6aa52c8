//! A bounded fuzz of the API's request parser ([`route`]): the corpus in
//! netd/corpus/api/ (one request a file: `METHOD TARGET`, a blank line, the
//! body), each mutated, and generated requests. Whatever comes in, the parser
//! does not panic, and every refusal answers 4xx with a JSON error body that
//! carries a kind. Runs in `cargo test`; more cases with PROPTEST_CASES.

use std::path::PathBuf;

use http_body_util::BodyExt;
use hyper::Method;
use proptest::prelude::*;

use super::route::route;
use super::server::error;

/// One request of the corpus.
#[derive(Debug, Clone)]
struct Sample {
    method: Vec<u8>,
    target: String,
    body: Vec<u8>,
}

fn corpus() -> Vec<Sample> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/api");
    let mut samples: Vec<Sample> = std::fs::read_dir(&dir)
        .expect("netd/corpus/api")
        .map(|entry| {
            let raw = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            let split = raw
                .windows(2)
                .position(|w| w == b"\n\n")
                .unwrap_or(raw.len());
            let head = String::from_utf8_lossy(&raw[..split]).into_owned();
            let (method, target) = head.split_once(' ').unwrap_or((&head, "/"));
            Sample {
                method: method.as_bytes().to_vec(),
                target: target.to_string(),
                body: raw.get(split + 2..).unwrap_or_default().to_vec(),
            }
        })
        .collect();
    samples.sort_by(|a, b| (&a.target, &a.body).cmp(&(&b.target, &b.body)));
    assert!(samples.len() >= 10, "the corpus is in netd/corpus/api");
    samples
}

/// Runs the parser on one request and checks what a refusal answers.
fn check(method: &[u8], target: &str, body: &[u8]) {
    // Methods hyper would refuse itself never reach the parser.
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Err(e) = route(&method, path, query, body) else {
        return;
    };
    let answer = error(&e);
    assert!(
        answer.status().is_client_error(),
        "{method} {target}: refused with {} ({e})",
        answer.status()
    );
    let bytes = block_on(answer.into_body().collect())
        .expect("a full body")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error body");
    assert!(json["kind"].is_string(), "no kind in {json}");
    assert!(
        json["error"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {json}"
    );
}

/// The answer's body is in memory: one poll finishes it.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(future)
}

#[test]
fn the_corpus_is_parsed_or_refused_with_a_kind() {
    for sample in corpus() {
        check(&sample.method, &sample.target, &sample.body);
    }
}

/// A JSON-ish fragment to splice into a body.
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"null".to_vec()),
        Just(b"\"\\u0000\"".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"1e999".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"{}".to_vec()),
        Just(b"\"..\"".to_vec()),
        Just(b"\"/proc/self/ns/net\"".to_vec()),
        Just(b"\"65536:80\"".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Corpus requests with bytes flipped, cut, and tokens spliced in.
    #[test]
    fn mutated_corpus_requests_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        splice in proptest::option::of((any::<prop::sample::Index>(), token())),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        target_noise in proptest::option::of("[/a-z0-9.%?=&]{0,12}"),
    ) {
        let samples = corpus();
        let mut sample = pick.get(&samples).clone();
        if !sample.body.is_empty() {
            for (at, byte) in &flips {
                let i = at.index(sample.body.len());
                sample.body[i] ^= byte;
            }
        }
        if let Some((at, token)) = splice {
            let i = at.index(sample.body.len() + 1);
            sample.body.splice(i..i, token);
        }
        if let Some(cut) = cut {
            let at = cut.index(sample.body.len() + 1);
            sample.body.truncate(at);
        }
        if let Some(noise) = target_noise {
            sample.target.push_str(&noise);
        }
        check(&sample.method, &sample.target, &sample.body);
    }

    /// Requests made up from scratch: any method, path and body.
    #[test]
    fn generated_requests_never_panic(
        method in prop_oneof![
            Just(b"GET".to_vec()), Just(b"POST".to_vec()), Just(b"DELETE".to_vec()),
            "[A-Z]{1,8}".prop_map(String::into_bytes),
        ],
        path in "(/(v1|containers|ports|check|status|reconcile|peers|[a-z0-9._%-]{0,6})){0,5}/?",
        query in proptest::option::of("[a-z0-9=&]{0,16}"),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        check(&method, &target, &body);
    }
}
