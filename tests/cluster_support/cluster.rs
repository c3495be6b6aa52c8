//! A cluster of netd hosts on a real etcd in the world's fabric namespace:
//! `netd cluster init`, then `netd run` with `[cluster] store` on every
//! host, one container `c1` attached on each.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use world::etcd::{Etcd, ETCD_IP, ETCD_PORT};
use world::{ping, Container, NetdHost, World};

pub const RANGE: &str = "10.96.0.0/16";
pub const RANGE6: &str = "fd96::/48";

/// A directory per test, removed on drop.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Hosts joined through etcd, one container `c1` on each.
pub struct Cluster {
    pub netds: Vec<NetdHost>,
    pub containers: Vec<Container>,
    /// Each container's addresses (IPv4, IPv6), from its attach result.
    pub addrs: Vec<Vec<IpAddr>>,
    pub etcd: Etcd,
    // Dropped last: netd is killed before its directory goes.
    pub world: World,
    pub dir: Dir,
}

pub fn store() -> String {
    format!("etcd://{ETCD_IP}:{ETCD_PORT}")
}

impl Cluster {
    pub async fn new(names: &[&str]) -> Cluster {
        Cluster::with_config(names, "").await
    }

    /// As [`Cluster::new`], with `extra` (top-level netd.toml keys) in every
    /// host's config.
    pub async fn with_config(names: &[&str], extra: &str) -> Cluster {
        let world = World::new().await.unwrap();
        let dir = Dir(std::env::temp_dir().join(format!("weft-cluster-{}", world.prefix())));
        let etcd = Etcd::start(&world).await.unwrap();
        let mut cl = Cluster {
            netds: Vec::new(),
            containers: Vec::new(),
            addrs: Vec::new(),
            etcd,
            world,
            dir,
        };
        for name in names {
            cl.add_host(name).await;
            if !extra.is_empty() {
                let path = cl.netds.last().unwrap().config_path();
                let config = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, format!("{extra}\n{config}")).unwrap();
            }
        }
        // `init` from the first host, as an admin would.
        let out = cl.netds[0]
            .run(&[
                "cluster",
                "init",
                "--store",
                &store(),
                "--range",
                RANGE,
                "--range6",
                RANGE6,
            ])
            .unwrap();
        assert!(out.success, "cluster init: {}", out.stderr);
        for i in 0..cl.netds.len() {
            cl.start(i);
        }
        cl
    }

    /// Prepares host `name` (its key, its netd.toml with the store) without starting it.
    pub async fn add_host(&mut self, name: &str) -> usize {
        let host = self.world.host(name).await.unwrap();
        let netd = NetdHost::prepare(&host, &self.dir.0.join(name), "-").unwrap();
        std::fs::write(
            netd.config_path(),
            format!(
                "reconcile_interval_secs = 1\nmetrics_addr = \"127.0.0.1:9590\"\n[cluster]\nstore = \"{}\"\nhost_name = \"{name}\"\nliveness_ttl = 2\n",
                store()
            ),
        )
        .unwrap();
        self.containers.push(host.container("c1").unwrap());
        self.addrs.push(Vec::new());
        self.netds.push(netd);
        self.netds.len() - 1
    }

    /// Starts host `i`'s netd and attaches its container (again after a restart).
    pub fn start(&mut self, i: usize) {
        self.netds[i].start().unwrap();
        // A host that answers lists itself with its reservation at once (the
        // view it starts from holds its own join).
        let hosts = self.netds[i].json(&["cluster", "hosts"]).unwrap();
        let own: Vec<&Value> = hosts
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["this_host"] == true)
            .collect();
        assert_eq!(own.len(), 1, "a started host lists itself: {hosts}");
        let status = self.netds[i].json(&["cluster", "status"]).unwrap();
        self.netds[i].subnet = status["subnets"][0].as_str().unwrap().to_string();
        assert_eq!(own[0]["subnets"][0], status["subnets"][0]);
        if self.addrs[i].is_empty() {
            let c = &self.containers[i];
            let result = self.netds[i]
                .json(&["attach", &c.netns_name, "--name", &c.name])
                .unwrap();
            self.addrs[i] = result["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ip| {
                    let cidr = ip["address"].as_str().unwrap();
                    cidr.split('/').next().unwrap().parse().unwrap()
                })
                .collect();
        }
    }

    /// Container `i`'s addresses (IPv4, IPv6).
    pub fn addrs(&self, i: usize) -> Vec<IpAddr> {
        self.addrs[i].clone()
    }

    /// Polls `netd cluster hosts` on host `i` until `done`, for at most `bound`.
    pub fn wait_hosts(
        &self,
        i: usize,
        bound: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let hosts = self.netds[i].json(&["cluster", "hosts"]).unwrap();
            let hosts = hosts.as_array().unwrap();
            if done(hosts) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < bound,
                "{what}: not within {bound:?} on {}: {hosts:?}\n{}",
                self.netds[i].host.name,
                self.netds[i].log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every host sees every host alive.
    pub fn wait_all_alive(&self) {
        let n = self.netds.len();
        for i in 0..n {
            self.wait_hosts(i, Duration::from_secs(10), "all hosts alive", |h| {
                h.len() == n && h.iter().all(|h| h["alive"] == true)
            });
        }
    }

    /// Every container reaches every other, on each of their addresses.
    pub fn all_pairs_reach(&self, skip: &[usize]) {
        let n = self.netds.len();
        for from in (0..n).filter(|i| !skip.contains(i)) {
            for to in (0..n).filter(|i| *i != from && !skip.contains(i)) {
                for addr in self.addrs(to) {
                    assert!(
                        ping(&self.containers[from].netns, addr).unwrap(),
                        "{}/c1 → {}/c1 at {addr}\n{}",
                        self.netds[from].host.name,
                        self.netds[to].host.name,
                        self.netds[from].log_text()
                    );
                }
            }
        }
    }
}

pub fn host<'a>(hosts: &'a [Value], name: &str) -> Option<&'a Value> {
    hosts.iter().find(|h| h["name"] == name)
}
