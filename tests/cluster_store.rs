//! The store conformance suite against a real etcd (Debian's 3.4) running in
//! the world's fabric namespace; the client runs in a simulated host.

use overlay::store::{conformance, EtcdConfig, EtcdStore, Store, StoreError};
use world::etcd::{block_on_in, Etcd};
use world::{require_root, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_store_conformance_suite() {
    require_root!();
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
    require_root!();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_suite_over_tls_with_a_client_certificate_and_a_user() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let etcd = Etcd::start_tls(&world).await.unwrap();
    for args in [
        &["user", "add", "root", "--new-user-password=weft-pw"][..],
        &["auth", "enable"],
    ] {
        let out = etcd.etcdctl(args).unwrap();
        assert!(out.success, "etcdctl {args:?}: {}", out.stderr);
    }
    let files = etcd.tls_files().unwrap().clone();
    let config = |user: Option<(&str, &str)>, client_cert: bool| {
        let mut config = EtcdConfig::new(etcd.endpoints());
        config.tls = Some(overlay::store::EtcdTls {
            ca: files.ca.clone(),
            cert: client_cert.then(|| files.client_cert.clone()),
            key: client_cert.then(|| files.client_key.clone()),
        });
        config.user = user.map(|(u, p)| (u.to_string(), p.to_string()));
        config
    };
    let good = config(Some(("root", "weft-pw")), true);
    let wrong_password = config(Some(("root", "wrong")), true);
    let no_client_cert = config(Some(("root", "weft-pw")), false);
    let etcd = &etcd;
    tokio::task::block_in_place(|| {
        block_on_in(&host.netns, || async move {
            let store = EtcdStore::new(good).unwrap();
            conformance::run(&store, "/conformance/", |revision| async move {
                etcd.compact(revision).unwrap();
            })
            .await;
            let refused = EtcdStore::new(wrong_password).unwrap().list("/").await;
            assert!(
                matches!(&refused, Err(StoreError::Rejected { reason, .. }) if reason.contains("authentication")),
                "{refused:?}"
            );
            let no_cert = EtcdStore::new(no_client_cert).unwrap().list("/").await;
            assert!(matches!(no_cert, Err(StoreError::Unavailable { .. })), "{no_cert:?}");
        })
    })
    .unwrap();
}
