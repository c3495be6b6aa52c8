//! The upstream resolvers: the `nameserver` lines of netd's own
//! resolv.conf, read again when the file changes (a DHCP client or
//! systemd-resolved rewrites it while netd runs).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// glibc reads at most three nameservers (MAXNS); so do we.
const MAX_NAMESERVERS: usize = 3;

/// How often the file's mtime is looked at: a stat per query would cost
/// more than the query, and a change is picked up within a second anyway.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// The file as last read.
#[derive(Debug)]
struct Read {
    checked: Instant,
    /// (mtime, length) of what was read; None when the file was missing.
    version: Option<(SystemTime, u64)>,
    servers: Vec<SocketAddr>,
}

#[derive(Debug)]
pub(crate) struct Upstreams {
    path: PathBuf,
    /// The server's own listen addresses: a resolv.conf naming them would
    /// send queries in a loop, so they are skipped.
    own: Vec<IpAddr>,
    read: Mutex<Option<Read>>,
}

impl Upstreams {
    pub(crate) fn new(path: PathBuf, own: Vec<IpAddr>) -> Upstreams {
        Upstreams {
            path,
            own,
            read: Mutex::new(None),
        }
    }

    /// The resolvers to ask now, in file order.
    pub(crate) fn current(&self, now: Instant) -> Vec<SocketAddr> {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = read.as_mut() {
            if now.saturating_duration_since(r.checked) < RECHECK_EVERY {
                return r.servers.clone();
            }
            r.checked = now;
            if file_version(&self.path) == r.version {
                return r.servers.clone();
            }
        }
        let fresh = self.load(now);
        let servers = fresh.servers.clone();
        *read = Some(fresh);
        servers
    }

    fn load(&self, now: Instant) -> Read {
        let version = file_version(&self.path);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(
                    "DNS forwarding: cannot read {}: {e}; names outside the network get SERVFAIL until it is back",
                    self.path.display()
                );
                String::new()
            }
        };
        let servers: Vec<SocketAddr> = nameservers(&text)
            .into_iter()
            .filter(|ip| {
                let own = self.own.contains(ip) || ip.is_unspecified();
                if own {
                    tracing::warn!(
                        "DNS forwarding: {} names {ip}, this server itself; skipped so queries do not loop",
                        self.path.display()
                    );
                }
                !own
            })
            .take(MAX_NAMESERVERS)
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        tracing::info!(
            "DNS forwarding: upstreams from {}: {servers:?}",
            self.path.display()
        );
        Read {
            checked: now,
            version,
            servers,
        }
    }
}

fn file_version(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The addresses of `nameserver` lines; comments (# or ;) and other
/// keywords are skipped, as are link-local IPv6 addresses with a zone
/// (`fe80::1%eth0`), which name an interface of another namespace's view.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(address)) => address.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_are_read_and_the_server_itself_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# generated\nsearch example.org\nnameserver 10.66.0.1\nnameserver 192.0.2.53 # main\n; nameserver 192.0.2.9\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver 0.0.0.0\n",
        )
        .unwrap();
        let upstreams = Upstreams::new(path.clone(), vec!["10.66.0.1".parse().unwrap()]);
        let t0 = Instant::now();
        let expected: Vec<SocketAddr> = vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ];
        assert_eq!(upstreams.current(t0), expected);

        // A rewrite is seen once the recheck interval has passed.
        std::fs::write(&path, "nameserver 198.51.100.1\nnameserver 198.51.100.2\nnameserver 198.51.100.3\nnameserver 198.51.100.4\n").unwrap();
        assert_eq!(upstreams.current(t0), expected, "not before the interval");
        let later = t0 + RECHECK_EVERY;
        let now = upstreams.current(later);
        assert_eq!(now.len(), MAX_NAMESERVERS);
        assert_eq!(now[0], "198.51.100.1:53".parse().unwrap());

        // A missing file: no upstreams (SERVFAIL), and back when it is.
        std::fs::remove_file(&path).unwrap();
        assert!(upstreams.current(later + RECHECK_EVERY).is_empty());
    }
}
