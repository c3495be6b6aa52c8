//! The one behaviour suite every [`Store`] backend passes: the memory store
//! in overlay's unit tests, etcd in `tests/cluster_store.rs`. Each check
//! panics with what differed. Waits use `tokio::time`, so the memory store
//! under a paused clock runs it instantly and etcd in real time (a few seconds,
//! for the lease expiry).

use std::future::Future;
use std::time::Duration;

use super::{Compare, Operation, Revision, Store, StoreError, Txn, Watch, WatchEvent};

/// The longest any single wait in the suite may take.
const BOUND: Duration = Duration::from_secs(15);

/// Runs every check under `prefix` (a fresh prefix per run; nothing else may
/// write under it). `compact(revision)` must compact the store at `revision`.
pub async fn run<S, C, F>(store: &S, prefix: &str, compact: C)
where
    S: Store,
    C: Fn(Revision) -> F,
    F: Future<Output = ()>,
{
    create_if_absent(store, &format!("{prefix}create/")).await;
    compares(store, &format!("{prefix}compare/")).await;
    one_revision_per_txn(store, &format!("{prefix}revision/")).await;
    watch_from_listing(store, &format!("{prefix}watch/")).await;
    lease_revoke(store, &format!("{prefix}revoke/")).await;
    lease_expiry(store, &format!("{prefix}expiry/")).await;
    compaction(store, &format!("{prefix}compact/"), compact).await;
}

async fn txn<S: Store>(store: &S, txn: Txn) -> super::TxnOutcome {
    store.txn(txn).await.expect("transaction")
}

async fn next<W: Watch>(watch: &mut W) -> Vec<WatchEvent> {
    tokio::time::timeout(BOUND, watch.next())
        .await
        .expect("a watch event within the bound")
        .expect("watch")
}

/// Create-if-absent: the first wins, the second takes the failure branch.
async fn create_if_absent<S: Store>(store: &S, p: &str) {
    let key = format!("{p}a");
    let empty = store.list(p).await.expect("list");
    assert!(
        empty.entries.is_empty(),
        "fresh prefix {p} not empty: {empty:?}"
    );
    let create = |value: &str| Txn {
        compares: vec![Compare::Absent(key.clone())],
        on_success: vec![Operation::put(key.clone(), value)],
        on_failure: vec![Operation::put(format!("{p}lost"), value)],
    };
    let first = txn(store, create("one")).await;
    assert!(first.succeeded, "create of an absent key failed");
    let second = txn(store, create("two")).await;
    assert!(!second.succeeded, "create of an existing key succeeded");
    assert!(
        second.revision > first.revision,
        "the failure branch wrote, revision must move"
    );
    let listing = store.list(p).await.expect("list");
    assert!(listing.revision >= second.revision);
    let keys: Vec<_> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, [key.as_str(), &format!("{p}lost")], "sorted keys");
    let a = &listing.entries[0];
    assert_eq!(a.value, b"one");
    assert_eq!(
        (a.create_revision, a.mod_revision),
        (first.revision, first.revision)
    );
    assert_eq!(a.lease, None);
}

/// mod_revision and value compares; 0 matches an absent key's mod_revision.
async fn compares<S: Store>(store: &S, p: &str) {
    let key = format!("{p}k");
    let absent_mod = txn(
        store,
        Txn {
            compares: vec![Compare::ModRevision(key.clone(), 0)],
            on_success: vec![Operation::put(key.clone(), "v1")],
            on_failure: vec![],
        },
    )
    .await;
    assert!(
        absent_mod.succeeded,
        "mod_revision == 0 must match an absent key"
    );
    let stale = txn(
        store,
        Txn {
            compares: vec![Compare::ModRevision(key.clone(), absent_mod.revision - 1)],
            on_success: vec![Operation::put(key.clone(), "stale")],
            on_failure: vec![],
        },
    )
    .await;
    assert!(!stale.succeeded, "a stale mod_revision compare held");
    assert_eq!(
        stale.revision, absent_mod.revision,
        "a no-op failure must not bump the revision"
    );
    let fresh = txn(
        store,
        Txn {
            compares: vec![
                Compare::ModRevision(key.clone(), absent_mod.revision),
                Compare::ValueEquals(key.clone(), b"v1".to_vec()),
            ],
            on_success: vec![Operation::put(key.clone(), "v2")],
            on_failure: vec![],
        },
    )
    .await;
    assert!(
        fresh.succeeded,
        "current mod_revision and value compares failed"
    );
    let wrong_value = txn(
        store,
        Txn {
            compares: vec![Compare::ValueEquals(key.clone(), b"v1".to_vec())],
            on_success: vec![Operation::Delete(key.clone())],
            on_failure: vec![],
        },
    )
    .await;
    assert!(
        !wrong_value.succeeded,
        "a value compare against an old value held"
    );
    let absent_value = txn(
        store,
        Txn {
            compares: vec![Compare::ValueEquals(format!("{p}none"), Vec::new())],
            on_success: vec![Operation::put(format!("{p}bad"), "x")],
            on_failure: vec![],
        },
    )
    .await;
    assert!(
        !absent_value.succeeded,
        "a value compare on an absent key held"
    );
    let deleted = txn(
        store,
        Txn {
            compares: vec![],
            on_success: vec![
                Operation::Delete(key.clone()),
                Operation::Delete(format!("{p}none")),
            ],
            on_failure: vec![],
        },
    )
    .await;
    assert!(deleted.succeeded && deleted.revision > fresh.revision);
    assert!(store.list(p).await.expect("list").entries.is_empty());
}

/// A transaction is one revision, however many keys it writes.
async fn one_revision_per_txn<S: Store>(store: &S, p: &str) {
    let outcome = txn(
        store,
        Txn {
            compares: vec![],
            on_success: (0..3)
                .map(|i| Operation::put(format!("{p}{i}"), "x"))
                .collect(),
            on_failure: vec![],
        },
    )
    .await;
    let listing = store.list(p).await.expect("list");
    assert_eq!(listing.entries.len(), 3);
    for entry in &listing.entries {
        assert_eq!(entry.mod_revision, outcome.revision, "{}", entry.key);
    }
}

/// List at R, watch from R+1: later changes arrive in order, other prefixes don't.
async fn watch_from_listing<S: Store>(store: &S, p: &str) {
    txn(store, put_txn(&format!("{p}before"), "0")).await;
    let listing = store.list(p).await.expect("list");
    let mut watch = store.watch(p, listing.revision + 1).await.expect("watch");
    let put = txn(store, put_txn(&format!("{p}x"), "1")).await;
    let elsewhere = format!("{}-elsewhere", p.trim_end_matches('/'));
    txn(store, put_txn(&elsewhere, "no")).await;
    txn(store, put_txn(&format!("{p}x"), "2")).await;
    let deleted = txn(store, del_txn(&format!("{p}before"))).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(next(&mut watch).await);
    }
    assert!(seen.iter().all(|e| e.key().starts_with(p)));
    match &seen[..] {
        [WatchEvent::Put(a), WatchEvent::Put(b), WatchEvent::Delete { key, revision }] => {
            assert_eq!(
                (a.key.as_str(), a.value.as_slice()),
                (format!("{p}x").as_str(), &b"1"[..])
            );
            assert_eq!(a.mod_revision, put.revision);
            assert_eq!(b.value, b"2");
            assert_eq!(
                b.create_revision, put.revision,
                "an update keeps create_revision"
            );
            assert_eq!(
                (key.as_str(), *revision),
                (format!("{p}before").as_str(), deleted.revision)
            );
        }
        other => panic!("watch saw {other:?}"),
    }
}

/// Revoking a lease deletes its keys at once; it is gone afterwards.
async fn lease_revoke<S: Store>(store: &S, p: &str) {
    let lease = store
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    assert!(
        lease.ttl >= Duration::from_secs(30),
        "granted {:?}",
        lease.ttl
    );
    let key = format!("{p}leased");
    txn(
        store,
        Txn {
            compares: vec![],
            on_success: vec![Operation::Put {
                key: key.clone(),
                value: b"x".to_vec(),
                lease: Some(lease.id),
            }],
            on_failure: vec![],
        },
    )
    .await;
    let listing = store.list(p).await.expect("list");
    assert_eq!(listing.entries[0].lease, Some(lease.id));
    let ttl = store.keep_alive(lease.id).await.expect("keep alive");
    assert!(ttl > Duration::ZERO);
    let mut watch = store.watch(p, listing.revision + 1).await.expect("watch");
    store.revoke_lease(lease.id).await.expect("revoke");
    assert!(
        matches!(next(&mut watch).await.as_slice(), [WatchEvent::Delete { key: k, .. }] if *k == key),
        "revoke did not delete the leased key"
    );
    assert!(store.list(p).await.expect("list").entries.is_empty());
    assert!(matches!(
        store.keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    assert!(matches!(
        store.revoke_lease(lease.id).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    // A put on an ended lease fails whole: the plain put beside it is not applied either.
    let orphan = store
        .txn(Txn {
            compares: vec![],
            on_success: vec![
                Operation::put(format!("{p}plain"), "x"),
                Operation::Put {
                    key: key.clone(),
                    value: b"x".to_vec(),
                    lease: Some(lease.id),
                },
            ],
            on_failure: vec![],
        })
        .await;
    assert!(
        matches!(orphan, Err(StoreError::LeaseNotFound { .. })),
        "{orphan:?}"
    );
    assert!(store.list(p).await.expect("list").entries.is_empty());
}

/// A lease not kept alive ends after its TTL and takes its keys with it;
/// a lease kept alive outlives its TTL.
async fn lease_expiry<S: Store>(store: &S, p: &str) {
    let short = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    let kept = store
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    let mut ops = Vec::new();
    for (name, lease) in [("short", short.id), ("kept", kept.id)] {
        ops.push(Operation::Put {
            key: format!("{p}{name}"),
            value: b"x".to_vec(),
            lease: Some(lease),
        });
    }
    let written = txn(
        store,
        Txn {
            compares: vec![],
            on_success: ops,
            on_failure: vec![],
        },
    )
    .await;
    let mut watch = store.watch(p, written.revision + 1).await.expect("watch");
    let keeper = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            store.keep_alive(kept.id).await.expect("keep alive");
        }
    };
    let events = tokio::select! {
        events = next(&mut watch) => events,
        () = keeper => unreachable!(),
    };
    assert!(
        matches!(events.as_slice(), [WatchEvent::Delete { key, .. }] if *key == format!("{p}short")),
        "expected the short lease's key to vanish alone, saw {events:?}"
    );
    let keys: Vec<String> = store
        .list(p)
        .await
        .expect("list")
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, [format!("{p}kept")]);
    store.revoke_lease(kept.id).await.expect("revoke");
}

/// A watch from a compacted revision fails with the compaction revision.
async fn compaction<S, C, F>(store: &S, p: &str, compact: C)
where
    S: Store,
    C: Fn(Revision) -> F,
    F: Future<Output = ()>,
{
    let first = txn(store, put_txn(&format!("{p}k"), "0")).await;
    let mut last = first;
    for i in 1..4 {
        last = txn(store, put_txn(&format!("{p}k"), &i.to_string())).await;
    }
    compact(last.revision).await;
    let error = match store.watch(p, first.revision).await {
        Err(e) => e,
        Ok(mut watch) => tokio::time::timeout(BOUND, watch.next())
            .await
            .expect("the compacted watch ends within the bound")
            .expect_err("a watch from a compacted revision delivered events"),
    };
    match error {
        StoreError::Compacted { compact_revision } => {
            assert_eq!(compact_revision, last.revision, "compaction revision")
        }
        other => panic!("expected Compacted, got {other}"),
    }
    // From the compaction revision on, watching works again.
    let mut watch = store.watch(p, last.revision + 1).await.expect("watch");
    let after = txn(store, put_txn(&format!("{p}k"), "after")).await;
    let events = next(&mut watch).await;
    assert!(
        matches!(events.as_slice(), [WatchEvent::Put(kv)] if kv.mod_revision == after.revision)
    );
}

fn put_txn(key: &str, value: &str) -> Txn {
    Txn {
        compares: vec![],
        on_success: vec![Operation::put(key, value)],
        on_failure: vec![],
    }
}

fn del_txn(key: &str) -> Txn {
    Txn {
        compares: vec![],
        on_success: vec![Operation::Delete(key.to_string())],
        on_failure: vec![],
    }
}

#[cfg(test)]
mod tests {
    use crate::store::MemoryStore;

    #[tokio::test(start_paused = true)]
    async fn memory_store_passes_the_conformance_suite() {
        let store = MemoryStore::new();
        super::run(&store, "/conformance/", |revision| {
            store.compact(revision);
            std::future::ready(())
        })
        .await;
    }
}
