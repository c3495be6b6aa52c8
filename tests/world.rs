//! The test world itself: hosts reach each other over the fabric, and nothing
//! of a world outlives it.

use world::{ping, root_or_skip, tcp_exchange, World};

#[tokio::test]
async fn hosts_reach_each_other_over_the_fabric() {
    root_or_skip!();
    let world = World::new().await.unwrap();
    let a = world.host("a").await.unwrap();
    let b = world.host("b").await.unwrap();
    assert_eq!(a.ip.to_string(), "198.18.0.1");
    assert_eq!(b.ip.to_string(), "198.18.0.2");
    assert!(ping(&a.netns, b.ip_addr()).unwrap());
    assert!(ping(&b.netns, std::net::IpAddr::V6(a.ip6)).unwrap());
    tcp_exchange(&b.netns, (b.ip, 7000).into(), &a.netns).unwrap();
}

#[tokio::test]
async fn a_dropped_world_leaves_no_namespace() {
    root_or_skip!();
    let prefix = {
        let world = World::new().await.unwrap();
        let a = world.host("a").await.unwrap();
        a.container("c1").unwrap();
        world.prefix().to_string()
    };
    let left: Vec<String> = plumb::Netns::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_panicking_test_still_cleans_up() {
    root_or_skip!();
    let prefix = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = prefix.clone();
    let outcome = tokio::spawn(async move {
        let world = World::new().await.unwrap();
        world.host("a").await.unwrap();
        *seen.lock().unwrap() = world.prefix().to_string();
        panic!("deliberate");
    })
    .await;
    assert!(outcome.is_err());
    let prefix = prefix.lock().unwrap().clone();
    assert!(!prefix.is_empty());
    let left: Vec<String> = plumb::Netns::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "left behind after panic: {left:?}");
}

#[tokio::test]
async fn leftovers_of_dead_runs_are_swept() {
    root_or_skip!();
    // A PID that has certainly exited: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let name = format!("wt{dead}x0-fab");
    plumb::Netns::create(&name).unwrap();
    // A live process's world (ours) must survive the sweep.
    let world = World::new().await.unwrap();
    let ours = format!("{}-fab", world.prefix());
    let names = plumb::Netns::list_named().unwrap();
    if names.contains(&name) {
        // Should the PID have been reused meanwhile, clean up by hand.
        plumb::Netns::delete(&name).unwrap();
        panic!("namespace {name} of a dead run was not swept");
    }
    assert!(names.contains(&ours));
}
