//! Membership and peer-view logic on the memory store, under tokio's paused clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::records::{alive_key, host_key, subnet_key};
use super::*;
use crate::store::{MemoryStore, Operation, Store, Txn};
use crate::PrivateKey;

/// Wall time that moves with tokio's (paused) clock.
struct TokioClock {
    wall: SystemTime,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + self.start.elapsed()
    }
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(TokioClock {
        wall: SystemTime::now(),
        start: tokio::time::Instant::now(),
    })
}

fn config() -> ClusterConfig {
    checks::example_config()
}

fn timing() -> Timing {
    Timing {
        liveness_ttl: Duration::from_secs(3),
        keep_alive_every: None,
        reservation_expiry: Duration::from_secs(60),
        reservation_refresh: Duration::from_secs(10),
        reclaim_every: Duration::from_secs(5),
    }
}

fn advert(name: &str) -> HostAdvert {
    checks::example_advert(name)
}

fn member(store: &Arc<MemoryStore>, clock: &Arc<dyn Clock>) -> Arc<Member<MemoryStore>> {
    Arc::new(Member::new(
        store.clone(),
        HostId::generate().unwrap(),
        timing(),
        clock.clone(),
    ))
}

async fn put(store: &MemoryStore, key: &str, value: &[u8]) {
    store
        .txn(Txn {
            compares: vec![],
            on_success: vec![Operation::put(key, value)],
            on_failure: vec![],
        })
        .await
        .unwrap();
}

async fn until(watcher: &PeerWatcher, what: &str, done: impl Fn(&PeerView) -> bool) {
    checks::wait_for_view(watcher, Duration::from_secs(60), what, done).await;
}

#[tokio::test(start_paused = true)]
async fn init_writes_once_and_names_both_configs_on_a_mismatch() {
    let store = MemoryStore::new();
    assert!(init(&store, &config()).await.unwrap());
    assert!(!init(&store, &config()).await.unwrap());
    let mut other = config();
    other.ipv4_range = "10.77.0.0/16".parse().unwrap();
    let err = init(&store, &other).await.unwrap_err().to_string();
    assert!(
        err.contains("10.99.0.0/16") && err.contains("10.77.0.0/16"),
        "{err}"
    );
    assert_eq!(read_config(&store).await.unwrap(), config());
}

#[tokio::test(start_paused = true)]
async fn join_without_config_says_to_init() {
    let store = Arc::new(MemoryStore::new());
    let err = member(&store, &clock())
        .join(&advert("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::NoConfig { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_host_keeps_its_subnets_and_a_new_key_bumps_the_epoch() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let first = member(&store, &clock);
    let before = first.join(&advert("a")).await.unwrap();
    assert!(before.ipv6_subnet.is_some());
    let again = Member::new(store.clone(), first.id().clone(), timing(), clock.clone());
    let mut same_key = advert("a");
    same_key.public_key = before.public_key.parse().unwrap();
    let after = again.join(&same_key).await.unwrap();
    assert_eq!(
        (after.ipv4_subnet, after.ipv6_subnet, after.key_epoch),
        (before.ipv4_subnet, before.ipv6_subnet, 1)
    );
    let rotated = again
        .publish_key(&PrivateKey::generate().unwrap().public_key())
        .await
        .unwrap();
    assert_eq!(
        (rotated.key_epoch, rotated.ipv4_subnet),
        (2, before.ipv4_subnet)
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_joins_take_distinct_subnets_until_the_range_is_full() {
    let store = Arc::new(MemoryStore::new());
    let mut small = config();
    small.ipv4_range = "10.99.0.0/22".parse().unwrap(); // four /24s
    init(&*store, &small).await.unwrap();
    let clock = clock();
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..4 {
        let m = member(&store, &clock);
        joins.spawn(async move { m.join(&advert(&format!("h{i}"))).await.unwrap() });
    }
    let records = joins.join_all().await;
    let v4: HashSet<_> = records.iter().map(|r| r.ipv4_subnet).collect();
    let v6: HashSet<_> = records.iter().map(|r| r.ipv6_subnet).collect();
    assert_eq!((v4.len(), v6.len()), (4, 4));
    let err = member(&store, &clock)
        .join(&advert("late"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::RangeFull {
                family: "IPv4",
                capacity: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reservation_outside_the_range_is_refused() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let m = member(&store, &clock());
    let mut record = m.join(&advert("a")).await.unwrap();
    record.ipv4_subnet = "10.50.0.0/24".parse().unwrap();
    put(&store, &host_key(m.id()), &record.to_json()).await;
    let err = m.join(&advert("a")).await.unwrap_err();
    assert!(
        matches!(&err, ClusterError::CannotHonour { reason, .. } if reason.contains("10.50.0.0/24")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn liveness_ends_without_keep_alive_and_the_reservation_stays_until_it_expires() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let (a, b) = (member(&store, &clock), member(&store, &clock));
    a.join(&advert("a")).await.unwrap();
    let b_record = b.join(&advert("b")).await.unwrap();
    a.go_alive("a").await.unwrap();
    b.go_alive("b").await.unwrap();
    let (watcher, mut updates) =
        PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
    let a_task = a.spawn_liveness("a".into(), watcher.views());
    let b_task = b.spawn_liveness("b".into(), watcher.views());
    let first = updates.recv().await.unwrap();
    assert_eq!(first.diff.added.len(), 2);
    // Well past the TTL, both stay alive on their keep-alives.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(watcher.view().hosts.values().all(|h| h.alive));
    assert!(matches!(
        forget(&*store, b.id().as_str(), false).await,
        Err(ClusterError::HostAlive { .. })
    ));
    b_task.stop();
    until(&watcher, "b dead", |v| !v.hosts[b.id()].alive).await;
    let b_view = &watcher.view().hosts[b.id()];
    assert_eq!(
        b_view.subnets,
        b_record.subnets(),
        "a dead host keeps its subnets"
    );
    // The reservation ends expiry + refresh (70 s) after b's last refresh;
    // then a (alive) reclaims b's subnets on its next sweep.
    let ends = UNIX_EPOCH + Duration::from_secs(b_view.reserved_until);
    let before_end = ends
        .duration_since(clock.now())
        .unwrap()
        .saturating_sub(Duration::from_secs(1));
    tokio::time::sleep(before_end).await;
    assert!(
        watcher.view().hosts.contains_key(b.id()),
        "reclaimed before the reservation's end"
    );
    until(&watcher, "b reclaimed", |v| !v.hosts.contains_key(b.id())).await;
    assert!(
        clock.now() >= ends,
        "reclaimed before the reservation's end"
    );
    assert!(
        a_task
            .counters()
            .reclaimed
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    );
    let listing = store
        .list(&subnet_key(ipnetwork::IpNetwork::V4(b_record.ipv4_subnet)))
        .await
        .unwrap();
    assert!(listing.entries.is_empty(), "b's subnet is free again");
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_granted_again_without_touching_the_reservation() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let m = member(&store, &clock());
    let record = m.join(&advert("a")).await.unwrap();
    m.go_alive("a").await.unwrap();
    let task = m.spawn_liveness("a".into(), tokio::sync::watch::channel(Arc::default()).1);
    store.set_available(false);
    tokio::time::sleep(Duration::from_secs(5)).await; // longer than the TTL
    store.set_available(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counters = task.counters();
    assert!(
        counters
            .keep_alive_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    assert_eq!(
        counters
            .lease_regrants
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let listing = store.list(&alive_key(m.id())).await.unwrap();
    assert_eq!(listing.entries.len(), 1, "alive again");
    let host = store.list(&host_key(m.id())).await.unwrap();
    let now: HostRecord = serde_json::from_slice(&host.entries[0].value).unwrap();
    assert_eq!(now.subnets(), record.subnets());
}

#[tokio::test(start_paused = true)]
async fn leave_frees_the_subnet_at_once_and_forget_removes_a_dead_host() {
    let store = Arc::new(MemoryStore::new());
    let mut tiny = config();
    tiny.ipv4_range = "10.99.0.0/24".parse().unwrap();
    tiny.ipv4_subnet_len = 25; // two subnets
    init(&*store, &tiny).await.unwrap();
    let clock = clock();
    let (a, b) = (member(&store, &clock), member(&store, &clock));
    a.join(&advert("a")).await.unwrap();
    a.go_alive("a").await.unwrap();
    b.join(&advert("b")).await.unwrap();
    assert!(matches!(
        member(&store, &clock).join(&advert("c")).await,
        Err(ClusterError::RangeFull { .. })
    ));
    a.leave().await.unwrap();
    let listing = store.list(records::ROOT).await.unwrap();
    assert!(listing
        .entries
        .iter()
        .all(|e| !e.key.contains(a.id().as_str()) && e.value != a.id().as_str().as_bytes()));
    member(&store, &clock)
        .join(&advert("c"))
        .await
        .expect("a's subnet is free at once");
    let forgotten = forget(&*store, b.id().as_str(), false).await.unwrap();
    assert_eq!(forgotten.name, "b");
    assert!(matches!(
        forget(&*store, b.id().as_str(), false).await,
        Err(ClusterError::UnknownHost { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn bad_data_is_ignored_counted_by_reason_and_the_rest_keeps_working() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let new_member = || {
        Member::new(
            store.clone(),
            HostId::generate().unwrap(),
            timing(),
            clock.clone(),
        )
    };
    checks::bad_data_is_ignored_and_counted(store.clone(), new_member).await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_the_view_reports_down_then_catches_up() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    member(&store, &clock).join(&advert("a")).await.unwrap();
    let (watcher, _updates) =
        PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
    until(&watcher, "a", |v| v.hosts.len() == 1).await;
    assert!(watcher.status().up);
    store.set_available(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let status = watcher.status();
    assert!(
        !status.up && status.last_error.is_some_and(|e| e.contains("outage")),
        "{:?}",
        watcher.status()
    );
    assert_eq!(watcher.view().hosts.len(), 1, "the last view stays");
    store.set_available(true);
    let b = member(&store, &clock);
    b.join(&advert("b")).await.unwrap();
    until(&watcher, "b after the outage", |v| {
        v.hosts.contains_key(b.id())
    })
    .await;
    assert!(watcher.status().up);
    assert!(watcher.relists() >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_watch_that_hits_compaction_lists_again_and_misses_no_host() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    member(&store, &clock).join(&advert("a")).await.unwrap();
    let settings = WatcherSettings {
        hold_after_first_list: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let (watcher, _updates) = PeerWatcher::spawn(store.clone(), Some(config()), settings);
    until(&watcher, "a", |v| v.hosts.len() == 1).await;
    let mut late = Vec::new();
    for i in 0..3 {
        let m = member(&store, &clock);
        m.join(&advert(&format!("l{i}"))).await.unwrap();
        late.push(m.id().clone());
    }
    store.compact(store.revision());
    until(&watcher, "every late host", |v| {
        late.iter().all(|id| v.hosts.contains_key(id))
    })
    .await;
    assert_eq!(watcher.relists(), 1);
    assert!(watcher.status().up);
}

#[tokio::test(start_paused = true)]
async fn an_advertised_endpoint_counts_as_changed_only_when_its_value_changes() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let m = member(&store, &clock());
    let ad = advert("a");
    m.join(&ad).await.unwrap();
    let (watcher, mut updates) =
        PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
    updates.recv().await.unwrap();
    m.refresh_reservation().await.unwrap(); // a rewrite with the same endpoint
    let mut moved = ad.clone();
    moved.endpoint = Some("198.18.0.77:51820".parse().unwrap());
    m.join(&moved).await.unwrap();
    let update = updates.recv().await.unwrap();
    assert_eq!(update.diff.changed.len(), 1);
    assert_eq!(update.diff.changed[0].fields, vec![HostField::Endpoint]);
    drop(watcher);
}

#[tokio::test(start_paused = true)]
async fn a_host_back_after_being_forgotten_takes_its_subnets_back_or_is_told_they_are_lost() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let a = member(&store, &clock);
    let first = a.join(&advert("a")).await.unwrap();
    let kept = |strict| KeptSubnets {
        ipv4: first.ipv4_subnet,
        ipv6: first.ipv6_subnet,
        strict,
    };
    // Forgotten while away, its subnets still free: it takes them back.
    forget(&*store, a.id().as_str(), false).await.unwrap();
    let back = a
        .join_keeping(&advert("a"), Some(&kept(true)))
        .await
        .unwrap();
    assert_eq!(back.subnets(), first.subnets());
    // Forgotten again, and b took its IPv4 subnet meanwhile.
    forget(&*store, a.id().as_str(), false).await.unwrap();
    let b = member(&store, &clock);
    let b_kept = KeptSubnets {
        ipv4: first.ipv4_subnet,
        ipv6: None,
        strict: true,
    };
    let b_record = b.join_keeping(&advert("b"), Some(&b_kept)).await.unwrap();
    assert_eq!(b_record.ipv4_subnet, first.ipv4_subnet);
    let err = a
        .join_keeping(&advert("a"), Some(&kept(true)))
        .await
        .unwrap_err();
    match &err {
        ClusterError::ReservationLost { subnet, holder, .. } => {
            assert_eq!(subnet, &first.ipv4_subnet.to_string());
            assert_eq!(holder, b.id().as_str());
        }
        other => panic!("{other}"),
    }
    assert!(
        store
            .list(&host_key(a.id()))
            .await
            .unwrap()
            .entries
            .is_empty(),
        "a strict join that failed wrote nothing"
    );
    // Not strict (a start with the store up): another subnet.
    let other = a
        .join_keeping(&advert("a"), Some(&kept(false)))
        .await
        .unwrap();
    assert_ne!(other.ipv4_subnet, first.ipv4_subnet);
}

#[tokio::test(start_paused = true)]
async fn names_keys_do_not_rebuild_the_peer_view() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let a = member(&store, &clock);
    a.join(&advert("a")).await.unwrap();
    let (watcher, mut updates) =
        PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
    updates.recv().await.unwrap();
    let revision = watcher.view().revision;
    put(&store, &records::names_key(a.id()), b"{}").await;
    put(
        &store,
        &format!("{}{}", records::NAMES, "junk"),
        b"not json",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(updates.try_recv().is_err(), "no update for names keys");
    assert_eq!(watcher.view().revision, revision);
    assert!(
        watcher.bad_data().is_empty(),
        "names keys are not judged here"
    );
    // A peer key still is followed.
    let b = member(&store, &clock);
    b.join(&advert("b")).await.unwrap();
    let update = updates.recv().await.unwrap();
    assert_eq!(update.diff.added.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_reads_one_snapshot_for_its_join_and_its_watcher_and_misses_no_later_host() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let a = member(&store, &clock);
    a.join(&advert("a")).await.unwrap();
    let mut snapshot = Snapshot::read(&*store).await.unwrap();
    assert_eq!(snapshot.config().unwrap(), config());
    let b = member(&store, &clock);
    assert_eq!(snapshot.record(b.id()), None);
    // Another host takes a subnet after the snapshot: b's first attempt
    // works from it, so a subnet b picks may be gone (the join lists again).
    let c = member(&store, &clock);
    c.join(&advert("c")).await.unwrap();
    let joined = b
        .join_from(&mut snapshot, &advert("b"), None)
        .await
        .unwrap();
    assert_eq!(
        Snapshot::read(&*store).await.unwrap().record(b.id()),
        Some(joined.clone())
    );
    assert_eq!(
        snapshot.record(b.id()),
        Some(joined),
        "the join's writes are in the snapshot"
    );
    assert_eq!(snapshot.record(c.id()), None);
    // The watcher starts from the same snapshot and watches right after it:
    // c, written later, arrives without another listing; b's own join,
    // replayed by the watch, changes nothing.
    let (watcher, mut updates) = PeerWatcher::spawn_from(
        store.clone(),
        Some(config()),
        WatcherSettings::default(),
        snapshot,
    );
    let first = updates.recv().await.unwrap();
    assert_eq!(
        first.diff.added.len(),
        2,
        "the snapshot holds a, and b's join"
    );
    until(&watcher, "a, b and c", |v| {
        [a.id(), b.id(), c.id()]
            .iter()
            .all(|id| v.hosts.contains_key(*id))
    })
    .await;
    assert_eq!(watcher.relists(), 0);
    let subnets: HashSet<_> = watcher
        .view()
        .hosts
        .values()
        .map(|h| h.subnets.clone())
        .collect();
    assert_eq!(subnets.len(), 3, "three distinct subnets");
}

#[tokio::test(start_paused = true)]
async fn a_join_from_a_snapshot_that_lost_its_pick_takes_another_subnet() {
    // A range of two subnets: whatever b picks from a stale snapshot,
    // a host that joined since may hold it, and the join must list again.
    let store = Arc::new(MemoryStore::new());
    let mut small = config();
    small.ipv4_range = "10.99.0.0/23".parse().unwrap();
    small.ipv6_range = None;
    small.ipv6_subnet_len = None;
    init(&*store, &small).await.unwrap();
    let clock = clock();
    for _ in 0..8 {
        let mut snapshot = Snapshot::read(&*store).await.unwrap();
        let (a, b) = (member(&store, &clock), member(&store, &clock));
        let ra = a.join(&advert("a")).await.unwrap();
        let rb = b
            .join_from(&mut snapshot, &advert("b"), None)
            .await
            .unwrap();
        assert_ne!(ra.ipv4_subnet, rb.ipv4_subnet);
        a.leave().await.unwrap();
        b.leave().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_joins_is_built_into_few_views_and_a_lone_change_at_once() {
    let store = Arc::new(MemoryStore::new());
    init(&*store, &config()).await.unwrap();
    let clock = clock();
    let (watcher, mut updates) =
        PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
    // Quiet for a while (the first, empty, listing sends no update): the
    // first change is built at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    member(&store, &clock).join(&advert("first")).await.unwrap();
    let update = updates.recv().await.unwrap();
    assert_eq!(update.diff.added.len(), 1);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait after a quiet spell"
    );
    // Twenty more joins, one write each, 1 ms apart: a handful of views.
    for i in 0..20 {
        member(&store, &clock)
            .join(&advert(&format!("h{i}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    until(&watcher, "21 hosts", |v| v.hosts.len() == 21).await;
    let mut views = 0;
    let mut added = 0;
    while let Ok(update) = updates.try_recv() {
        views += 1;
        added += update.diff.added.len();
    }
    assert_eq!(added, 20, "every host in some view");
    assert!(views <= 3, "{views} views for 20 joins within 21 ms");
}
