//! Cluster scenarios run on both stores: the memory store in overlay's unit
//! tests (paused clock) and etcd in `tests/cluster_membership.rs` (real time).
//! Like [`store::conformance`](crate::store::conformance), each panics with
//! what differed; waits use `tokio::time`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::records::{host_key, subnet_key, CONFIG_KEY, HOSTS};
use super::{
    BadDataReason, ClusterConfig, HostAdvert, HostId, Member, PeerView, PeerWatcher,
    WatcherSettings,
};
use crate::store::{Operation, Store, Txn};
use crate::PrivateKey;

/// The config the scenarios init: 10.99.0.0/16 in /24s, fd00:99::/48 in /64s, port 51820.
pub fn example_config() -> ClusterConfig {
    ClusterConfig {
        ipv4_range: "10.99.0.0/16".parse().expect("a range"),
        ipv4_subnet_len: 24,
        ipv6_range: Some("fd00:99::/48".parse().expect("a range")),
        ipv6_subnet_len: Some(64),
        overlay_port: 51820,
    }
}

/// An advert with a fresh key and endpoint 198.18.0.1:51820.
pub fn example_advert(name: &str) -> HostAdvert {
    HostAdvert {
        name: name.into(),
        public_key: PrivateKey::generate().expect("a key").public_key(),
        endpoint: Some("198.18.0.1:51820".parse().expect("an endpoint")),
    }
}

/// Waits until `watcher`'s view satisfies `done`, at most `bound` (tokio
/// time); returns how long it took (wall time), or panics naming `what`.
pub async fn wait_for_view(
    watcher: &PeerWatcher,
    bound: Duration,
    what: &str,
    done: impl Fn(&PeerView) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if done(&watcher.view()) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {bound:?}: {what}; view {:?}", watcher.view());
}

/// Each kind of bad data (not JSON, a bad key, a bad endpoint, a subnet another
/// host holds, a changed config) is ignored and counted once by reason, and a
/// host joining afterwards is still seen. `store` holds [`example_config`];
/// `member()` makes a member with a fresh id.
pub async fn bad_data_is_ignored_and_counted<S: Store>(
    store: Arc<S>,
    member: impl Fn() -> Member<S>,
) {
    let put = |key: String, value: Vec<u8>| {
        let store = store.clone();
        async move {
            let txn = Txn {
                compares: vec![],
                on_success: vec![Operation::put(key, value)],
                on_failure: vec![],
            };
            store.txn(txn).await.expect("write bad data");
        }
    };
    let good_record = member().join(&example_advert("good")).await.expect("join");
    let (watcher, _updates) = PeerWatcher::spawn(
        store.clone(),
        Some(example_config()),
        WatcherSettings::default(),
    );
    let bound = Duration::from_secs(10);
    wait_for_view(&watcher, bound, "the good host", |v| v.hosts.len() == 1).await;
    let record_for = |id: &HostId, subnet: &str| {
        let mut r = good_record.clone();
        r.id = id.clone();
        r.ipv4_subnet = subnet.parse().expect("a subnet");
        r.ipv6_subnet = None;
        r
    };
    let new_id = || HostId::generate().expect("an id");
    put(format!("{HOSTS}{}", new_id()), b"{not json".to_vec()).await;
    let id = new_id();
    let mut bad_key = record_for(&id, "10.99.200.0/24");
    bad_key.public_key = "not-a-key".into();
    put(
        subnet_key("10.99.200.0/24".parse().expect("a subnet")),
        id.as_str().into(),
    )
    .await;
    put(host_key(&id), bad_key.to_json()).await;
    let id = new_id();
    let mut bad_endpoint = record_for(&id, "10.99.201.0/24");
    bad_endpoint.endpoint = Some("nowhere:port".into());
    put(
        subnet_key("10.99.201.0/24".parse().expect("a subnet")),
        id.as_str().into(),
    )
    .await;
    put(host_key(&id), bad_endpoint.to_json()).await;
    let id = new_id();
    let squatter = record_for(&id, &good_record.ipv4_subnet.to_string());
    put(host_key(&id), squatter.to_json()).await;
    let mut changed = example_config();
    changed.overlay_port = 4000;
    put(
        CONFIG_KEY.into(),
        serde_json::to_vec(&changed).expect("json"),
    )
    .await;

    let late = member();
    late.join(&example_advert("late"))
        .await
        .expect("join after the bad data");
    wait_for_view(&watcher, bound, "the late host", |v| {
        v.hosts.contains_key(late.id())
    })
    .await;
    let view = watcher.view();
    assert_eq!(view.hosts.len(), 2, "only the good hosts: {view:?}");
    assert_eq!(
        view.config,
        Some(example_config()),
        "the changed config is not applied"
    );
    let counts = watcher.bad_data();
    for reason in [
        BadDataReason::NotJson,
        BadDataReason::BadKey,
        BadDataReason::BadEndpoint,
        BadDataReason::OverlappingSubnet,
        BadDataReason::ConfigChanged,
    ] {
        assert_eq!(counts.get(&reason), Some(&1), "{reason:?} in {counts:?}");
    }
}
