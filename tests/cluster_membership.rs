//! Cluster membership against a real etcd (Debian's 3.4) in the world's
//! fabric namespace; the members run inside a simulated host's namespace.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overlay::cluster::{
    checks, forget, init, ClusterConfig, ClusterError, HostAdvert, HostId, Member, PeerView,
    PeerWatcher, SystemClock, Timing, WatcherSettings,
};
use overlay::store::{EtcdConfig, EtcdStore};
use world::etcd::{block_on_in, Etcd};
use world::{require_root, World};

fn config() -> ClusterConfig {
    checks::example_config()
}

/// Short timings: etcd calls a TTL under 5 s tests-only, which this is.
fn timing() -> Timing {
    Timing {
        liveness_ttl: Duration::from_secs(2),
        keep_alive_every: None,
        reservation_expiry: Duration::from_secs(3),
        reservation_refresh: Duration::from_secs(1),
        reclaim_every: Duration::from_secs(1),
    }
}

fn advert(name: &str) -> HostAdvert {
    checks::example_advert(name)
}

fn member(store: &Arc<EtcdStore>) -> Arc<Member<EtcdStore>> {
    Arc::new(Member::new(
        store.clone(),
        HostId::generate().unwrap(),
        timing(),
        Arc::new(SystemClock),
    ))
}

async fn until(
    watcher: &PeerWatcher,
    bound: Duration,
    what: &str,
    done: impl Fn(&PeerView) -> bool,
) -> Duration {
    checks::wait_for_view(watcher, bound, what, done).await
}

/// Starts a world with etcd and runs `body` in host a's namespace.
fn with_etcd<F, Fut>(body: F)
where
    F: FnOnce(Arc<EtcdStore>, Arc<Mutex<Etcd>>) -> Fut + Send,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (world, host, etcd) = runtime.block_on(async {
        let world = World::new().await.unwrap();
        let host = world.host("a").await.unwrap();
        let etcd = Etcd::start(&world).await.unwrap();
        (world, host, etcd)
    });
    let endpoints = etcd.endpoints();
    let etcd = Arc::new(Mutex::new(etcd));
    block_on_in(&host.netns, move || async move {
        let store = Arc::new(EtcdStore::new(EtcdConfig::new(endpoints)).unwrap());
        init(&*store, &config()).await.unwrap();
        // A clone: a body that ignores etcd must not stop it by dropping the last handle.
        body(store, etcd.clone()).await;
        drop(etcd);
    })
    .unwrap();
    drop(world);
}

#[test]
fn twenty_concurrent_joins_get_twenty_subnets_kept_on_restart_freed_by_leave() {
    require_root!();
    with_etcd(|store, _etcd| async move {
        let members: Vec<_> = (0..20).map(|_| member(&store)).collect();
        let mut joins = tokio::task::JoinSet::new();
        for (i, m) in members.iter().enumerate() {
            let m = m.clone();
            joins.spawn(async move { m.join(&advert(&format!("h{i}"))).await.unwrap() });
        }
        let records = joins.join_all().await;
        let v4: HashSet<_> = records.iter().map(|r| r.ipv4_subnet).collect();
        let v6: HashSet<_> = records.iter().map(|r| r.ipv6_subnet).collect();
        assert_eq!(
            (v4.len(), v6.len()),
            (20, 20),
            "distinct subnets for 20 concurrent joins"
        );

        // join_all gives records in the order the joins finished: take
        // members[0]'s, so that h1 and h2 below are other hosts.
        let first = records
            .iter()
            .find(|r| &r.id == members[0].id())
            .expect("members[0] joined");
        let restarted = Member::new(
            store.clone(),
            first.id.clone(),
            timing(),
            Arc::new(SystemClock),
        );
        let again = restarted.join(&advert("h0")).await.unwrap();
        assert_eq!(
            (again.ipv4_subnet, again.ipv6_subnet),
            (first.ipv4_subnet, first.ipv6_subnet)
        );
        assert_eq!(
            again.key_epoch,
            first.key_epoch + 1,
            "a new key bumps the epoch"
        );

        restarted.go_alive("h0").await.unwrap();
        restarted.leave().await.unwrap();
        let listing = overlay::store::Store::list(&*store, "/weft/v1/")
            .await
            .unwrap();
        assert!(
            listing
                .entries
                .iter()
                .all(|e| !e.key.contains(first.id.as_str())
                    && e.value != first.id.as_str().as_bytes())
        );

        // A host that is not alive is forgotten without force. Before any
        // liveness task runs: its reclaim sweep could take h2 first.
        let gone = forget(&*store, members[2].id().as_str(), false)
            .await
            .unwrap();
        assert_eq!(gone.name, "h2");
        let alive = &members[1];
        alive.go_alive("h1").await.unwrap();
        // No view: this task's reclaim sweep has no candidates.
        let no_view = tokio::sync::watch::channel(Arc::default()).1;
        let _liveness = alive.spawn_liveness("h1".into(), no_view);
        let refused = forget(&*store, alive.id().as_str(), false).await;
        assert!(
            matches!(refused, Err(ClusterError::HostAlive { .. })),
            "{refused:?}"
        );
        forget(&*store, alive.id().as_str(), true).await.unwrap();
    });
}

#[test]
fn a_stopped_host_is_dead_within_15_s_and_reclaimed_after_its_reservation_ends() {
    require_root!();
    with_etcd(|store, _etcd| async move {
        let (a, b) = (member(&store), member(&store));
        a.join(&advert("a")).await.unwrap();
        let b_record = b.join(&advert("b")).await.unwrap();
        a.go_alive("a").await.unwrap();
        b.go_alive("b").await.unwrap();
        let (watcher, _updates) =
            PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
        let a_task = a.spawn_liveness("a".into(), watcher.views());
        let b_task = b.spawn_liveness("b".into(), watcher.views());
        until(&watcher, Duration::from_secs(10), "both alive", |v| {
            v.hosts.len() == 2 && v.hosts.values().all(|h| h.alive)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(4)).await; // twice the TTL: keep-alives hold
        assert!(watcher.view().hosts.values().all(|h| h.alive));
        b_task.stop();
        let dead_after = until(&watcher, Duration::from_secs(15), "b dead", |v| {
            !v.hosts[b.id()].alive
        })
        .await;
        eprintln!("b shown dead {dead_after:?} after its keep-alive stopped (TTL 2 s)");
        assert_eq!(
            watcher.view().hosts[b.id()].subnets,
            b_record.subnets(),
            "dead keeps its subnets"
        );
        until(&watcher, Duration::from_secs(20), "b reclaimed", |v| {
            !v.hosts.contains_key(b.id())
        })
        .await;
        assert!(
            a_task
                .counters()
                .reclaimed
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    });
}

#[test]
fn a_watch_that_hits_compaction_lists_again_and_misses_no_host() {
    require_root!();
    with_etcd(|store, etcd| async move {
        member(&store).join(&advert("a")).await.unwrap();
        let settings = WatcherSettings {
            hold_after_first_list: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        let (watcher, _updates) = PeerWatcher::spawn(store.clone(), Some(config()), settings);
        until(&watcher, Duration::from_secs(10), "a", |v| {
            v.hosts.len() == 1
        })
        .await;
        let mut late = Vec::new();
        for i in 0..3 {
            let m = member(&store);
            m.join(&advert(&format!("l{i}"))).await.unwrap();
            late.push(m.id().clone());
        }
        let revision = overlay::store::Store::list(&*store, "/weft/v1/")
            .await
            .unwrap()
            .revision;
        etcd.lock().unwrap().compact(revision).unwrap();
        until(&watcher, Duration::from_secs(15), "every late host", |v| {
            late.iter().all(|id| v.hosts.contains_key(id))
        })
        .await;
        assert_eq!(watcher.relists(), 1, "one re-list, after the compaction");
    });
}

#[test]
fn etcd_stopped_and_restarted_keeps_the_view_reports_down_then_up() {
    require_root!();
    with_etcd(|store, etcd| async move {
        let a = member(&store);
        a.join(&advert("a")).await.unwrap();
        let (watcher, _updates) =
            PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
        until(&watcher, Duration::from_secs(10), "a", |v| {
            v.hosts.len() == 1
        })
        .await;
        etcd.lock().unwrap().stop();
        let start = Instant::now();
        while watcher.status().up {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "status still up 15 s after etcd stopped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            watcher.view().hosts.len(),
            1,
            "the last view stays while etcd is down"
        );
        assert!(watcher.status().last_error.is_some());
        etcd.lock().unwrap().restart().unwrap();
        let b = member(&store);
        b.join(&advert("b")).await.unwrap();
        until(
            &watcher,
            Duration::from_secs(20),
            "b after the restart",
            |v| v.hosts.contains_key(b.id()),
        )
        .await;
        assert!(watcher.status().up);
        assert!(watcher.relists() >= 1);
    });
}

#[test]
fn each_kind_of_bad_data_is_ignored_and_counted_and_the_cluster_keeps_working() {
    require_root!();
    with_etcd(|store, _etcd| async move {
        let new_member = || {
            Member::new(
                store.clone(),
                HostId::generate().unwrap(),
                timing(),
                Arc::new(SystemClock),
            )
        };
        checks::bad_data_is_ignored_and_counted(store.clone(), new_member).await;
    });
}

#[test]
fn with_the_default_10_s_lease_a_stopped_host_is_dead_within_15_s() {
    require_root!();
    with_etcd(|store, _etcd| async move {
        let b = Arc::new(Member::new(
            store.clone(),
            HostId::generate().unwrap(),
            Timing::default(),
            Arc::new(SystemClock),
        ));
        b.join(&advert("b")).await.unwrap();
        b.go_alive("b").await.unwrap();
        let (watcher, _updates) =
            PeerWatcher::spawn(store.clone(), Some(config()), WatcherSettings::default());
        let b_task = b.spawn_liveness("b".into(), watcher.views());
        until(&watcher, Duration::from_secs(10), "b alive", |v| {
            v.hosts.get(b.id()).is_some_and(|h| h.alive)
        })
        .await;
        b_task.stop();
        let dead_after = until(&watcher, Duration::from_secs(15), "b dead", |v| {
            !v.hosts[b.id()].alive
        })
        .await;
        eprintln!("b shown dead {dead_after:?} after its keep-alive stopped (TTL 10 s, renewed every 3.3 s)");
        assert!(
            watcher.view().hosts.contains_key(b.id()),
            "dead, not removed"
        );
    });
}
