//! The test world itself: hosts reach each other over the fabric, and nothing
//! of a world outlives it.

use world::{ping, require_root, tcp_exchange, World};

#[tokio::test]
async fn hosts_reach_each_other_over_the_fabric() {
    require_root!();
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
    require_root!();
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
    require_root!();
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
    require_root!();
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

/// Namespaces named with the world prefix of process `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let own = format!("{}{pid}x", world::PREFIX_ROOT);
    plumb::Netns::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&own))
        .collect()
}

/// Starts weft-demo, sends it `signal` once its fabric and three hosts exist,
/// and checks that it exits with `code` leaving none of its namespaces.
fn interrupt_the_demo(signal: i32, code: i32) {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut demo = Command::new(env!("CARGO_BIN_EXE_weft-demo"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = demo.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while namespaces_of(pid).len() < 4 {
        if let Some(status) = demo.try_wait().unwrap() {
            panic!("weft-demo ended ({status}) before it built its hosts");
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            let _ = demo.wait();
            world::sweep_dead_worlds();
            panic!("weft-demo built no hosts in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) takes no pointers; `pid` is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            let _ = demo.wait();
            world::sweep_dead_worlds();
            panic!("weft-demo still running 30 s after signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut stderr).unwrap();
    let left = namespaces_of(pid);
    if !left.is_empty() {
        world::sweep_dead_worlds();
    }
    assert!(left.is_empty(), "left behind: {left:?}; stderr: {stderr}");
    assert_eq!(status.code(), Some(code), "stderr: {stderr}");
}

#[test]
fn ctrl_c_removes_the_demo_world() {
    require_root!();
    interrupt_the_demo(libc::SIGINT, 130);
}

#[test]
fn sigterm_removes_the_demo_world() {
    require_root!();
    interrupt_the_demo(libc::SIGTERM, 143);
}
