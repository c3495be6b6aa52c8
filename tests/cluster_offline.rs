//! A cluster host's netd started while etcd is down: it runs from the
//! reservation and view it saved with the store up (its subnets, its peers
//! and their routes), its containers keep talking across hosts, and it joins
//! with the same subnets and key once etcd is back. A host that never joined
//! cannot start without the store, and says why.
//!
//! Build the daemon first: `cargo build -p netd`.

use std::time::{Duration, Instant};

use cluster_support::{host, Cluster, Stream};
use serde_json::Value;
use world::require_root;

mod cluster_support;
mod overlay_support;

/// The hosts in the view host `i` saved, once all `n` are in it and alive.
fn wait_saved_view(cl: &Cluster, i: usize, n: usize) -> Value {
    let path = cl.netds[i].state_dir().join("cluster-view.json");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let saved: Value = serde_json::from_str(&text).unwrap();
            let hosts = saved["view"]["hosts"].as_object().unwrap();
            if hosts.len() == n && hosts.values().all(|h| h["alive"] == true) {
                return saved;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} has not saved a view with {n} hosts alive",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn a_host_restarted_while_etcd_is_down_runs_from_its_saved_view_and_joins_when_it_is_back() {
    require_root!();
    let mut cl = Cluster::new(&["a", "b", "c"]).await;
    cl.wait_all_alive();
    cl.all_pairs_reach(&[]);
    wait_saved_view(&cl, 1, 3);
    let saved = std::fs::read(cl.netds[1].state_dir().join("cluster-view.json")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cl.netds[1].state_dir().join("cluster-view.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the saved view is root-only");
    assert!(!saved.is_empty());
    let (subnet, key) = (cl.netds[1].subnet.clone(), cl.netds[1].public_key.clone());
    // a ↔ c carry on through all of it.
    let stream = Stream::start(
        &cl.containers[0].netns,
        &cl.containers[2].netns,
        cl.addrs(2)[0],
    );

    cl.etcd.stop();
    cl.netds[1].signal(libc::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cl.start(1);
    let status = cl.netds[1].json(&["cluster", "status"]).unwrap();
    assert_eq!(status["joined"], false, "{status}");
    assert_eq!(status["subnets"][0], subnet.as_str(), "{status}");
    assert_eq!(status["store_up"], false, "{status}");
    let peers = cl.netds[1].peers().unwrap();
    assert_eq!(peers.len(), 2, "the saved peers: {peers:?}");
    assert!(peers.iter().all(|p| p["source"] == "store"), "{peers:?}");
    // Every pair, b's container included, across the overlay both ways.
    cl.all_pairs_reach(&[]);
    let metrics = cluster_support::scrape(&cl.netds[1].host.netns);
    assert!(metrics.contains("weft_netd_cluster_joined 0"), "{metrics}");

    cl.etcd.restart().unwrap();
    let back = Instant::now();
    let status = loop {
        let s = cl.netds[1].json(&["cluster", "status"]).unwrap();
        if s["joined"] == true {
            break s;
        }
        assert!(
            back.elapsed() < Duration::from_secs(40),
            "b has not joined 40 s after etcd came back: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("b joined {:?} after etcd came back", back.elapsed());
    assert_eq!(status["subnets"][0], subnet.as_str(), "{status}");
    assert_eq!(status["key_epoch"], 1, "same key, same epoch: {status}");
    assert_eq!(status["join_error"], Value::Null, "{status}");
    for i in [0, 2] {
        cl.wait_hosts(i, Duration::from_secs(20), "b alive again", |h| {
            host(h, "b").is_some_and(|b| b["alive"] == true && b["public_key"] == key.as_str())
        });
    }
    cl.all_pairs_reach(&[]);
    let (sent, received, gap, intact) = stream.finish();
    eprintln!("a → c stream: {sent} bytes sent, {received} received, longest gap {gap:?}");
    assert_eq!(sent, received, "bytes lost");
    assert!(intact, "the stream's bytes arrived changed");
    assert!(gap < Duration::from_secs(1), "a stall of {gap:?}");
}

#[tokio::test]
async fn a_host_that_never_joined_does_not_start_without_etcd_and_says_why() {
    require_root!();
    let mut cl = Cluster::new(&["a"]).await;
    let d = cl.add_host("d").await;
    cl.etcd.stop();
    let err = cl.netds[d].start().unwrap_err().to_string();
    assert!(err.contains("does not answer"), "{err}");
    assert!(err.contains("never joined"), "{err}");
    assert!(err.contains("cluster-reservation.json"), "{err}");
}
