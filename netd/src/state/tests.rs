//! The store's tests: transactions, concurrency, crashes and damage.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::store::{COMPACT_AFTER, JOURNAL_FILE, STATE_FILE};
use super::*;
use crate::ipam::IpamError;

#[derive(Debug)]
enum TestError {
    #[allow(dead_code)] // read through Debug when a test fails
    Store(StoreError),
    Ipam(IpamError),
}
impl From<StoreError> for TestError {
    fn from(e: StoreError) -> Self {
        TestError::Store(e)
    }
}
impl From<IpamError> for TestError {
    fn from(e: IpamError) -> Self {
        TestError::Ipam(e)
    }
}

fn subnet() -> IpNetwork {
    "10.66.0.0/24".parse().unwrap()
}

#[test]
fn reservations_survive_a_round_trip_and_failed_changes_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    assert_eq!(store.read().unwrap(), State::default());
    let a = store
        .update(|s| {
            s.ipam
                .allocate(subnet(), "c1", None)
                .map_err(TestError::Ipam)
        })
        .unwrap();
    let again = Store::open(dir.path().join("state")).unwrap();
    let state = again.read().unwrap();
    assert_eq!(state.ipam.held_by("c1"), vec![a]);
    let failed: Result<(), TestError> = again.update(|s| {
        s.ipam.allocate(subnet(), "c2", None)?;
        s.ipam.allocate(subnet(), "c3", Some(a))?;
        Ok(())
    });
    assert!(matches!(
        failed,
        Err(TestError::Ipam(IpamError::Taken { .. }))
    ));
    assert_eq!(again.read().unwrap().ipam.owners().len(), 1);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(again.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
}

#[test]
fn concurrent_stores_never_hand_out_one_address_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Each thread opens its own lock file description, as separate
    // processes would: flock excludes them from one another.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                (0..25)
                    .map(|i| {
                        store
                            .update(|s| {
                                s.ipam
                                    .allocate(subnet(), &format!("t{t}-{i}"), None)
                                    .map_err(TestError::Ipam)
                            })
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<IpAddr> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), 200);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "an address was handed out twice");
    let state = Store::open(&path).unwrap().read().unwrap();
    assert_eq!(state.ipam.usage(subnet()).in_use, 201);
}

const WORKER_ENV: &str = "WEFT_TEST_IPAM_WORKER_DIR";

/// Several processes (this test binary re-run as workers) allocate from
/// one state directory at once: flock keeps every address unique.
#[test]
fn concurrent_processes_never_hand_out_one_address_twice() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "state::tests::ipam_worker",
                    "--ignored",
                    "--nocapture",
                ])
                .env(WORKER_ENV, dir.path())
                .env("WEFT_TEST_IPAM_WORKER_ID", w.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for worker in workers {
        let out = worker.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the worker did not run: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let state = Store::open(dir.path()).unwrap().read().unwrap();
    let pool = &state.ipam.pools[&subnet().to_string()];
    assert_eq!(pool.len(), 100, "addresses were lost or shared");
    for w in 0..4 {
        let held = pool
            .iter()
            .filter(|(_, o)| o.starts_with(&format!("w{w}-")))
            .count();
        assert_eq!(held, 25);
    }
}

/// The worker half of the test above; does nothing unless run by it.
#[test]
#[ignore = "run by concurrent_processes_never_hand_out_one_address_twice"]
fn ipam_worker() {
    let Some(dir) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    let id = std::env::var("WEFT_TEST_IPAM_WORKER_ID").unwrap();
    let store = Store::open(dir).unwrap();
    for i in 0..25 {
        store
            .update(|s| {
                s.ipam
                    .allocate(subnet(), &format!("w{id}-{i}"), None)
                    .map_err(TestError::Ipam)
            })
            .unwrap();
    }
}

fn attached(id: &str) -> Endpoint {
    Endpoint {
        id: id.into(),
        name: format!("name-{id}"),
        netns: format!("/run/netns/{id}").into(),
        netns_inode: 1,
        ifname: "eth0".into(),
        host_ifname: crate::endpoints::host_ifname(id),
        mac: None,
        mtu: None,
        ips: vec![],
        gateways: vec![],
        ports: vec![],
        routes: vec![],
        bridge_addresses: vec![],
        dns_names: vec![],
        phase: Phase::Attached,
    }
}

/// Attaches `id` the way an attach records it: endpoint and address in one transaction.
fn add(store: &Store, id: &str) {
    store
        .update(|s| -> Result<(), TestError> {
            let ip = s.ipam.allocate("10.66.0.0/16".parse().unwrap(), id, None)?;
            let mut ep = attached(id);
            ep.ips = vec![IpNetwork::new(ip, 16).unwrap()];
            s.endpoints.insert(id.into(), ep.into());
            Ok(())
        })
        .unwrap();
}

fn journal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(JOURNAL_FILE)).map_or(0, |m| m.len())
}

#[test]
fn stores_see_each_others_records_and_the_journal_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path()).unwrap();
    let b = Store::open(dir.path()).unwrap();
    assert!(b.read().unwrap().endpoints.is_empty());
    for i in 0..600 {
        add(&a, &format!("c{i}"));
        if i % 97 == 0 {
            // b caught up from its cache, across compactions too.
            assert_eq!(b.read_with(|s| s.endpoints.len()).unwrap(), i + 1);
        }
    }
    b.update(|s| -> Result<(), StoreError> {
        s.endpoints.remove("c5");
        s.ipam.release_owner("c5");
        Ok(())
    })
    .unwrap();
    let snapshot = std::fs::metadata(dir.path().join(STATE_FILE))
        .unwrap()
        .len();
    assert!(snapshot > 0, "600 records never compacted");
    assert!(
        journal_len(dir.path()) <= COMPACT_AFTER.max(snapshot) + 4096,
        "the journal grew past its bound: {} bytes",
        journal_len(dir.path())
    );
    let fresh = Store::open(dir.path()).unwrap().read().unwrap();
    assert_eq!(fresh, a.read().unwrap());
    assert_eq!(fresh.endpoints.len(), 599);
    assert!(fresh.ipam.held_by("c5").is_empty());
    assert_eq!(fresh.ipam.owners().len(), 599);
}

#[test]
fn a_transaction_appends_as_much_with_many_containers_as_with_few() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let appended = |id: &str| {
        let before = journal_len(dir.path());
        add(&store, id);
        journal_len(dir.path()).checked_sub(before)
    };
    for i in 0..3 {
        add(&store, &format!("c{i}"));
    }
    let few = appended("few").unwrap();
    for i in 3..400 {
        add(&store, &format!("c{i}"));
    }
    // The next record right after a compaction would start a new journal.
    let many = (0..3)
        .filter_map(|i| appended(&format!("many{i}")))
        .min()
        .unwrap();
    // The ids are longer, and the sequence number has two more digits.
    assert!(
        many <= few + 16 + 2,
        "a record grew with the state: {few} → {many} bytes"
    );
}

#[test]
fn a_torn_record_is_ignored_then_cut_off_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    add(&store, "a");
    let whole = journal_len(dir.path());
    // A writer killed half-way through its line.
    let mut journal = OpenOptions::new()
        .append(true)
        .open(dir.path().join(JOURNAL_FILE))
        .unwrap();
    journal
        .write_all(br#"{"endpoints":{"b":{"id":"b","#)
        .unwrap();
    let other = Store::open(dir.path()).unwrap();
    assert_eq!(other.read().unwrap().endpoints.len(), 1);
    add(&other, "c");
    let state = Store::open(dir.path()).unwrap().read().unwrap();
    assert_eq!(
        state.endpoints.keys().collect::<Vec<_>>(),
        vec!["a", "c"],
        "the torn record was not cut off before the next one"
    );
    assert!(journal_len(dir.path()) > whole);
    assert_eq!(store.read().unwrap(), state);
}

#[test]
fn a_damaged_journal_line_in_the_middle_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    add(&store, "a");
    let path = dir.path().join(JOURNAL_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("not json\n{text}")).unwrap();
    let err = Store::open(dir.path()).unwrap().read().unwrap_err();
    assert!(
        err.is_damage()
            && err.to_string().contains("state.log is damaged: at byte 0")
            && err.to_string().contains("netd recover"),
        "{err}"
    );
}

#[test]
fn a_corrupt_state_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
    let err = Store::open(dir.path()).unwrap().read().unwrap_err();
    assert!(err.to_string().contains("state.json is damaged"), "{err}");
}

#[test]
fn owner_processes_are_told_apart_by_start_time() {
    let me = OwnerProcess::current();
    assert!(me.is_alive());
    assert!(me.start > 0);
    let reused = OwnerProcess {
        pid: me.pid,
        start: me.start + 1,
    };
    assert!(!reused.is_alive());
}

/// An endpoint as netd wrote it before extra routes and bridge addresses
/// existed loads with none, and one without them is written as before (an
/// older netd reads it); one with them keeps them through the store.
#[test]
fn endpoints_from_before_routes_and_bridge_addresses_still_load() {
    let old = r#"{"id":"c1","name":"c1","netns":"/run/netns/c1","netns_inode":7,
        "ifname":"eth0","host_ifname":"wv0","mac":null,"mtu":null,
        "ips":["10.66.0.2/24"],"gateways":["10.66.0.1"],"ports":[],"phase":"attached"}"#;
    let ep: Endpoint = serde_json::from_str(old).unwrap();
    assert!(ep.routes.is_empty() && ep.bridge_addresses.is_empty());
    let written = serde_json::to_string(&ep).unwrap();
    assert!(
        !written.contains("routes") && !written.contains("bridge_addresses"),
        "{written}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut with = attached("c2");
    with.routes = vec![ContainerRoute {
        dst: "192.0.2.0/24".parse().unwrap(),
        gw: Some("10.7.0.1".parse().unwrap()),
        metric: Some(10),
        table: None,
    }];
    with.bridge_addresses = vec!["10.7.0.1/24".parse().unwrap()];
    let store = Store::open(dir.path()).unwrap();
    store
        .update(|s| -> Result<(), StoreError> {
            s.endpoints.insert("c1".into(), ep.clone().into());
            s.endpoints.insert("c2".into(), with.clone().into());
            Ok(())
        })
        .unwrap();
    let reread = Store::open(dir.path()).unwrap().read().unwrap();
    assert_eq!(**reread.endpoints.get("c1").unwrap(), ep);
    assert_eq!(**reread.endpoints.get("c2").unwrap(), with);
}
