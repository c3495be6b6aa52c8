//! What the benchmark reads from the outside: Prometheus text over HTTP from
//! a listener inside a namespace (etcd's `/metrics`, netd's metrics), and a
//! process's memory and CPU time from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use plumb::Netns;

/// `GET /metrics` from `addr` inside `netns`, bounded to 5 s. The socket is
/// made by a thread in `netns` and used from here: it stays in that namespace.
pub fn metrics(netns: &Netns, addr: SocketAddr) -> Result<String> {
    let stream = netns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
        .with_context(|| format!("connect to {addr} in {}", netns.label()))?;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .with_context(|| format!("read the metrics of {addr}"))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("metrics of {addr}: no HTTP header in {} bytes", text.len());
    };
    let ok = head.split_whitespace().nth(1) == Some("200");
    if !head.starts_with("HTTP/1.") || !ok {
        bail!(
            "metrics of {addr}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_string())
}

/// The sum of every sample of metric `name` whose labels contain all of
/// `labels` (`key="value"` pairs), in Prometheus text format.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Per-method sums of `name` (label `grpc_method`), largest first.
pub fn by_method(text: &str, name: &str) -> Vec<(String, f64)> {
    let mut methods: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let Some(start) = line.find("grpc_method=\"") else {
            continue;
        };
        let method = &line[start + 13..];
        let Some(end) = method.find('"') else {
            continue;
        };
        let method = &method[..end];
        let value = sum(line, name, &[("grpc_method", method)]);
        match methods.iter_mut().find(|(m, _)| m == method) {
            Some((_, v)) => *v += value,
            None => methods.push((method.to_string(), value)),
        }
    }
    methods.sort_by(|a, b| b.1.total_cmp(&a.1));
    methods
}

/// A process's resident memory, in KiB: all of it, and its anonymous part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub total_kib: u64,
    pub anon_kib: u64,
}

pub fn rss(pid: u32) -> Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?)
    };
    Ok(Rss {
        total_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// CPU time a process's threads have run so far (the sum of each thread's
/// /proc schedstat, in nanoseconds: finer than the 10 ms ticks of /proc/stat).
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("list the threads of {pid}"))?
    {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("{}: {text:?}", path.display()))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP grpc_server_msg_received_total Total number of RPC stream messages received on the server.
grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 30
grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 4
grpc_server_msg_received_total{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2.5e+01
weft_netd_cluster_hosts{state=\"alive\"} 2
weft_netd_cluster_hosts{state=\"dead\"} 1
etcd_server_proposals_committed_total 77
";

    #[test]
    fn sums_filter_by_name_and_labels() {
        assert_eq!(sum(TEXT, "grpc_server_msg_received_total", &[]), 59.0);
        assert_eq!(
            sum(
                TEXT,
                "grpc_server_msg_received_total",
                &[("grpc_method", "Range")]
            ),
            4.0
        );
        assert_eq!(
            sum(TEXT, "weft_netd_cluster_hosts", &[("state", "dead")]),
            1.0
        );
        assert_eq!(
            sum(TEXT, "etcd_server_proposals_committed_total", &[]),
            77.0
        );
        assert_eq!(sum(TEXT, "absent", &[]), 0.0);
    }

    #[test]
    fn methods_are_summed_and_ordered() {
        let methods = by_method(TEXT, "grpc_server_msg_received_total");
        assert_eq!(methods[0], ("LeaseKeepAlive".to_string(), 30.0));
        assert_eq!(methods[1], ("Txn".to_string(), 25.0));
        assert_eq!(methods.len(), 3);
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss(pid).unwrap().total_kib > 0);
        assert!(cpu_ns(pid).unwrap() > 0);
    }

    /// The counters the benchmark reads exist under these names in the
    /// etcd the test world runs (Debian's 3.4), read from the fabric namespace.
    #[test]
    fn etcd_serves_the_counters_the_benchmark_reads() {
        world::require_root!();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let world = world::World::new().await.unwrap();
            let etcd = world::etcd::Etcd::start(&world).await.unwrap();
            let out = etcd.etcdctl(&["put", "/bench/probe", "1"]).unwrap();
            assert!(out.success, "{}", out.stderr);
            let addr = SocketAddr::from((world::etcd::ETCD_IP, world::etcd::ETCD_PORT));
            let text = metrics(world.fabric(), addr).unwrap();
            assert!(sum(&text, "grpc_server_msg_received_total", &[]) >= 2.0);
            assert!(sum(&text, "grpc_server_handled_total", &[]) >= 2.0);
            assert!(sum(&text, "etcd_server_proposals_committed_total", &[]) >= 1.0);
            assert!(by_method(&text, "grpc_server_msg_received_total")
                .iter()
                .any(|(m, n)| m == "Put" && *n >= 1.0));
            drop(etcd);
        });
    }
}
