//! The fault matrix's process part: bursts of attaches, detaches and
//! publishes, some of whose clients vanish at random moments, with netd
//! killed (SIGKILL) at a random point of each burst and started again. Each
//! round counts containers lost (an acknowledged attach or publish that is
//! gone), resurrected (an acknowledged detach that is back) and stuck (half
//! attached or half detached, or the kernel and the state disagreeing): all
//! must be zero, and every attached container reaches its gateway.
//!
//! Seeded (WEFT_TEST_SEED to repeat a run); bounded: 5 rounds × 10 ops.
//! The state files' own damage (journal cuts, bit flips, snapshots, ENOSPC)
//! is tested in netd/src/state/{damage,full_disk}_tests.rs and
//! tests/netd_state_damage.rs.
//!
//! Needs the netd binary: `cargo build -p netd`.

mod lifecycle_support;
mod netd_support;

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use lifecycle_support::{call, host_link, in_flight, request, ruleset, state, Seeded};
use netd_support::{default_args, eventually, Netd, TestDir};
use serde_json::json;
use world::{require_root, World};

const ROUNDS: usize = 5;
const CONTAINERS: usize = 10;
const GATEWAY: &str = "10.69.0.1";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Attach,
    Detach,
    Publish(u16),
}

/// What the client learnt: the operation succeeded, or nothing certain
/// (an error answer, a vanished client, netd killed under it).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Acknowledged,
    Unknown,
}

#[derive(Default, Debug)]
struct Tally {
    lost: Vec<String>,
    stuck: Vec<String>,
    resurrected: Vec<String>,
    unreachable: Vec<String>,
}

/// Nothing under way and no endpoint half-way, twice a second apart.
fn settled(netd: &Netd) -> bool {
    let quiet = || {
        in_flight(&netd.socket) == Some(0)
            && state(&netd.state_dir)
                .endpoints
                .values()
                .all(|e| e.phase == netd::Phase::Attached)
    };
    eventually(Duration::from_secs(30), || {
        quiet() && {
            std::thread::sleep(Duration::from_secs(1));
            quiet()
        }
    })
}

fn run_op(
    socket: &std::path::Path,
    name: &str,
    netns: &str,
    op: Op,
    vanish: Option<u64>,
) -> Outcome {
    let (method, path, body) = match op {
        Op::Attach => (
            "POST",
            "/v1/containers".to_string(),
            json!({"netns": netns, "name": name}).to_string(),
        ),
        Op::Detach => ("DELETE", format!("/v1/containers/{name}"), String::new()),
        Op::Publish(port) => (
            "POST",
            format!("/v1/containers/{name}/ports"),
            json!({"ports": [format!("{port}:80")]}).to_string(),
        ),
    };
    if let Some(ms) = vanish {
        if let Ok(mut stream) = UnixStream::connect(socket) {
            let _ = stream.write_all(&request(method, &path, &body));
            std::thread::sleep(Duration::from_millis(ms));
        }
        return Outcome::Unknown;
    }
    match call(socket, method, &path, &body) {
        Ok((200, _)) => Outcome::Acknowledged,
        _ => Outcome::Unknown,
    }
}

#[tokio::test]
async fn kills_and_vanishing_clients_lose_strand_and_resurrect_nothing() {
    require_root!();
    let world = World::new().await.unwrap();
    let host = world.host("a").await.unwrap();
    let dir = TestDir::new(&world).unwrap();
    let mut netd = Netd::start(&world, &host, &dir.0, &default_args("10.69.0.0/24")).unwrap();
    let containers: Vec<_> = (0..CONTAINERS)
        .map(|i| host.container(&format!("m{i}")).unwrap())
        .collect();
    let mut rng = Seeded::new(0xfa17_0016);
    let mut tally = Tally::default();
    let gateway: IpAddr = GATEWAY.parse().unwrap();
    for round in 0..ROUNDS {
        let before = state(&netd.state_dir);
        // One operation per container: its outcome tells what must hold after.
        let plan: Vec<(Op, Option<u64>)> = (0..CONTAINERS)
            .map(|i| {
                let name = format!("m{i}");
                let op = if !before.endpoints.contains_key(&name) {
                    Op::Attach
                } else if rng.below(2) == 0 {
                    Op::Detach
                } else {
                    Op::Publish(40000 + (round * CONTAINERS + i) as u16)
                };
                let vanish = (rng.below(3) == 0).then(|| rng.below(21));
                (op, vanish)
            })
            .collect();
        // From before the first operation lands to after the last one finished.
        let kill_after = Duration::from_millis(rng.below(250));
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = plan
                .iter()
                .enumerate()
                .map(|(i, &(op, vanish))| {
                    let socket = netd.socket.clone();
                    let netns = format!("/run/netns/{}", containers[i].netns_name);
                    s.spawn(move || run_op(&socket, &format!("m{i}"), &netns, op, vanish))
                })
                .collect();
            std::thread::sleep(kill_after);
            netd.kill9().unwrap();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        netd.restart().unwrap();
        assert!(
            settled(&netd),
            "round {round}: netd did not settle after its restart\n{}",
            netd.log_text()
        );
        let after = state(&netd.state_dir);
        let ruleset = ruleset(&host.netns);
        for (i, c) in containers.iter().enumerate() {
            let name = format!("m{i}");
            let (op, _) = plan[i];
            let outcome = outcomes[i];
            let now = after.endpoints.get(&name);
            let was = before.endpoints.contains_key(&name);
            let tag = format!("round {round} {name} {op:?} {outcome:?}");
            match (op, outcome, now.is_some()) {
                (Op::Attach, Outcome::Acknowledged, false) => tally.lost.push(tag.clone()),
                (Op::Detach, Outcome::Acknowledged, true) => tally.resurrected.push(tag.clone()),
                (Op::Publish(_), _, false) if was => tally.lost.push(tag.clone()),
                _ => {}
            }
            if let (Op::Publish(port), Outcome::Acknowledged, Some(ep)) = (op, outcome, now) {
                if !ep.ports.iter().any(|p| p.host_ports.start == port) {
                    tally
                        .lost
                        .push(format!("{tag}: port {port} not in the state"));
                }
            }
            // The kernel agrees with the state, whatever it says.
            let (link, up) = host_link(&host.netns, &name);
            let inside = netd_support::addresses(&c.netns, "eth0");
            match now {
                Some(ep) => {
                    let ip = ep.ips[0].to_string();
                    if !(link && up) || inside != [ip.clone()] {
                        tally.stuck.push(format!(
                            "{tag}: link {link} up {up}, eth0 {inside:?}, want {ip}"
                        ));
                    } else if !world::ping(&c.netns, gateway).unwrap() {
                        tally.unreachable.push(tag.clone());
                    }
                    for port in &ep.ports {
                        if !ruleset.contains(&port.host_ports.start.to_string()) {
                            tally.stuck.push(format!(
                                "{tag}: port {} not in the firewall",
                                port.host_ports.start
                            ));
                        }
                    }
                }
                None => {
                    if link || !inside.is_empty() || after.ipam.owners().contains(&name) {
                        tally.stuck.push(format!(
                            "{tag}: detached but link {link}, eth0 {inside:?}, reserved {}",
                            after.ipam.owners().contains(&name)
                        ));
                    }
                }
            }
        }
        let attached = after.endpoints.len();
        eprintln!(
            "round {round}: killed after {kill_after:?}; {attached} attached; {} acknowledged",
            outcomes
                .iter()
                .filter(|o| **o == Outcome::Acknowledged)
                .count()
        );
    }
    eprintln!(
        "lost {}, stuck {}, resurrected {}, unreachable {}",
        tally.lost.len(),
        tally.stuck.len(),
        tally.resurrected.len(),
        tally.unreachable.len()
    );
    assert!(
        tally.lost.is_empty()
            && tally.stuck.is_empty()
            && tally.resurrected.is_empty()
            && tally.unreachable.is_empty(),
        "{tally:#?}\n{}",
        netd.log_text()
    );
}
