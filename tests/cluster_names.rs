//! Names across the cluster: three netd hosts on etcd with names on; a
//! container on host a resolves one on host b by name (bare and under
//! weft.internal), by alias and by address (PTR), through a's DNS server
//! on its gateway. A detach on b is NXDOMAIN on a and c within 1 s; a
//! `kill -9` of c's netd drops its names on a and b when its liveness lease
//! (2 s here) ends; c's netd started again serves them again, nobody
//! attaching anew. Bad data under the names prefix is ignored and counted.
//!
//! Build the daemon first: `cargo build -p netd`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cluster_support::{Cluster, Dir};
use dig_support::{dig_with, Dig};
use plumb::Netns;
use serde_json::Value;
use world::{require_root, Container};

#[allow(dead_code)] // the helpers of the other cluster tests are not all used here
mod cluster_support;
mod dig_support;

fn dig(netns: &Netns, server: Ipv4Addr, args: &[&str]) -> Dig {
    let server = format!("@{server}");
    let mut full = vec![server.as_str()];
    full.extend_from_slice(args);
    dig_with(netns, "dig", &full, 2)
}

/// The gateway of host `i`: its subnet's first address.
fn gateway(cl: &Cluster, i: usize) -> Ipv4Addr {
    let network: Ipv4Addr = cl.netds[i]
        .subnet
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Ipv4Addr::from(u32::from(network) + 1)
}

/// A container `web-<host>` with alias `www-<host>` on host `i`: it, its
/// id and its IPv4 address. The queries come from the hosts' `c1`.
fn attach_web(cl: &Cluster, i: usize) -> (Container, String, String) {
    let host = cl.netds[i].host.name.clone();
    let c = cl.netds[i].host.container(&format!("web-{host}")).unwrap();
    let result = cl.netds[i]
        .json(&[
            "attach",
            &c.netns_name,
            "--name",
            &format!("web-{host}"),
            "--alias",
            &format!("www-{host}"),
        ])
        .unwrap();
    let ip = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap())
        .find(|ip| ip.contains('.'))
        .unwrap()
        .to_string();
    let id = result["id"].as_str().unwrap().to_string();
    (c, id, ip)
}

/// dig from host `i`'s container `c1` to its gateway.
fn dig_on(cl: &Cluster, i: usize, args: &[&str]) -> Dig {
    dig(&cl.containers[i].netns, gateway(cl, i), args)
}

/// Polls dig of `name` on host `via` until `done`, for at most `bound`;
/// returns the time it took.
fn wait_dig(
    cl: &Cluster,
    via: usize,
    name: &str,
    bound: Duration,
    done: impl Fn(&Dig) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let d = dig_on(cl, via, &[name]);
        if done(&d) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{name} on {}: not within {bound:?}: {d:?}\n{}",
            cl.netds[via].host.name,
            cl.netds[via].log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls dig of `name` on each of `hosts` until NXDOMAIN, at most `bound`
/// from now (just after `event`) on each; prints when each saw it.
fn wait_nxdomain(cl: &Cluster, hosts: &[usize], name: &str, bound: Duration, event: &str) {
    let since = Instant::now();
    for &via in hosts {
        let left = bound.saturating_sub(since.elapsed());
        wait_dig(cl, via, name, left, |d| d.status == "NXDOMAIN");
        eprintln!(
            "{name} NXDOMAIN on {} {:?} after {event}",
            cl.netds[via].host.name,
            since.elapsed()
        );
    }
}

fn names_row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in `netd names`: {rows}"))
}

#[tokio::test]
async fn names_resolve_across_hosts_and_go_with_a_detach_or_a_dead_host() {
    require_root!();
    // Outside names go nowhere: nothing listens on the hosts' loopback.
    let conf = Dir(std::env::temp_dir().join(format!("weft-names-{}", std::process::id())));
    std::fs::create_dir_all(&conf.0).unwrap();
    let resolv = conf.0.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let extra = format!("dns_resolv_conf = \"{}\"", resolv.display());
    let mut cl = Cluster::with_config(&["a", "b", "c"], &extra).await;
    cl.wait_all_alive();
    let webs: Vec<(Container, String, String)> = (0..3).map(|i| attach_web(&cl, i)).collect();
    let (ip_b, ip_c) = (webs[1].2.clone(), webs[2].2.clone());

    // From a: b's container by name, under the search domain, by alias, PTR.
    let took = wait_dig(&cl, 0, "web-b", Duration::from_secs(5), |d| {
        d.answers == [ip_b.as_str()]
    });
    eprintln!("web-b resolved on a {took:?} after the attach");
    for name in ["web-b.weft.internal", "www-b", "WWW-B.weft.internal"] {
        let d = dig_on(&cl, 0, &[name]);
        assert_eq!(d.answers, [ip_b.as_str()], "{name}: {d:?}");
    }
    let d = dig_on(&cl, 0, &["-x", &ip_b]);
    assert_eq!(d.answers, ["web-b.weft.internal."], "{d:?}");
    // And the other way round: c's from b, a's from c.
    wait_dig(&cl, 1, "web-c", Duration::from_secs(5), |d| {
        d.answers == [ip_c.as_str()]
    });
    wait_dig(&cl, 2, "web-a.weft.internal", Duration::from_secs(5), |d| {
        d.answers == [webs[0].2.as_str()]
    });

    // `netd names` on a lists b's names with their host and source.
    let rows = cl.netds[0].json(&["names"]).unwrap();
    let row = names_row(&rows, "www-b");
    assert_eq!(row["host"], "b", "{row}");
    assert_eq!(row["source"], "cluster", "{row}");
    assert_eq!(row["alias"], true, "{row}");
    assert_eq!(names_row(&rows, "web-a")["source"], "local");

    // Bad data under the names prefix is ignored and counted; names keep working.
    let bad = "/weft/v1/names/00000000000000000000000000000bad";
    let out = cl.etcd.etcdctl(&["put", bad, "{not json"]).unwrap();
    assert!(out.success, "{}", out.stderr);
    let start = Instant::now();
    loop {
        let status = cl.netds[0].json(&["cluster", "status"]).unwrap();
        if status["names"]["bad_data"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cl.netds[0].log_text().contains(bad),
        "the log names the key"
    );
    let d = dig_on(&cl, 0, &["web-b"]);
    assert_eq!(d.answers, [ip_b.as_str()], "{d:?}");

    // Detach on b: NXDOMAIN on a and c within 1 s.
    cl.netds[1].json(&["detach", &webs[1].1]).unwrap();
    wait_nxdomain(
        &cl,
        &[0, 2],
        "web-b.weft.internal",
        Duration::from_secs(1),
        "the detach",
    );

    // kill -9 of c's netd: its names go on a and b with its lease.
    cl.netds[2].signal(libc::SIGKILL).unwrap();
    wait_nxdomain(
        &cl,
        &[0, 1],
        "web-c.weft.internal",
        Duration::from_secs(15),
        "kill -9 of c's netd",
    );

    // c's netd again: its names from its state, nobody attaching anew.
    cl.start(2);
    let started = Instant::now();
    wait_dig(&cl, 0, "web-c", Duration::from_secs(10), |d| {
        d.answers == [ip_c.as_str()]
    });
    eprintln!(
        "web-c served on a {:?} after c's netd was ready",
        started.elapsed()
    );
    let status = cl.netds[2].json(&["cluster", "status"]).unwrap();
    assert!(status["names"]["puts"].as_u64().unwrap() >= 1, "{status}");
}
