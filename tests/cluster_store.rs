//! The store conformance suite against a real etcd (Debian's 3.4) running in
//! the world's fabric namespace; the client runs in a simulated host.

use overlay::store::{conformance, EtcdConfig, EtcdStore, Store, StoreError};
use world::etcd::{block_on_in, Etcd};
use world::{root_or_skip, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_store_conformance_suite() {
    root_or_skip!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let etcd = Etcd::start(&world).await.unwrap();
    let endpoints = etcd.endpoints();
    let etcd = &etcd;
    tokio::task::block_in_place(|| {
        block_on_in(&host.netns, || async move {
            let store = EtcdStore::new(EtcdConfig::new(endpoints)).unwrap();
            conformance::run(&store, "/conformance/", |revision| async move {
                etcd.compact(revision).unwrap();
            })
            .await;
        })
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_reports_an_outage_and_reconnects() {
    root_or_skip!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let mut etcd = Etcd::start(&world).await.unwrap();
    let endpoints = etcd.endpoints();
    let etcd = &mut etcd;
    tokio::task::block_in_place(|| {
        block_on_in(&host.netns, || async move {
            let store = EtcdStore::new(EtcdConfig::new(endpoints)).unwrap();
            let before = store.list("/outage/").await.unwrap();
            let mut watch = store.watch("/outage/", before.revision + 1).await.unwrap();
            etcd.stop();
            let ended = tokio::time::timeout(
                std::time::Duration::from_secs(15),
                overlay::store::Watch::next(&mut watch),
            )
            .await
            .expect("the watch ends within 15 s of etcd's death");
            assert!(
                matches!(ended, Err(StoreError::WatchEnded { .. })),
                "{ended:?}"
            );
            let down = store.list("/outage/").await;
            assert!(
                matches!(down, Err(StoreError::Unavailable { .. })),
                "{down:?}"
            );
            etcd.restart().unwrap();
            let after = store
                .list("/outage/")
                .await
                .expect("the store reconnects after etcd returns");
            assert!(after.revision >= before.revision);
        })
    })
    .unwrap();
}

#[test]
fn etcd_store_refuses_a_bad_configuration() {
    let none = EtcdStore::new(EtcdConfig::new(vec![]));
    assert!(matches!(none, Err(StoreError::Config(_))));
    let scheme = EtcdStore::new(EtcdConfig::new(vec!["198.18.0.9:2379".into()]));
    assert!(matches!(scheme, Err(StoreError::Config(m)) if m.contains("http://")));
    let mut tls = EtcdConfig::new(vec!["https://198.18.0.9:2379".into()]);
    tls.tls = Some(overlay::store::EtcdTls {
        ca: "/nonexistent/ca.pem".into(),
        cert: None,
        key: None,
    });
    let missing = EtcdStore::new(tls);
    assert!(matches!(missing, Err(StoreError::Config(m)) if m.contains("/nonexistent/ca.pem")));
}
