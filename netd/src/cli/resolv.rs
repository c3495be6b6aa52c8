//! `netd attach --dns`: the resolv.conf of a container attached by a named
//! namespace. `ip netns exec NAME` mounts each file of /etc/netns/NAME/
//! over the same file in /etc, so a program started that way reads the
//! network's DNS server from /etc/resolv.conf. A namespace given by another
//! path or a PID has no such place: runtimes write their own resolv.conf
//! (from the CNI result's `dns`).

use std::path::{Path, PathBuf};

use crate::api::DnsStatus;
use crate::error::{Error, Result};

const NAMED_NETNS_DIR: &str = "/run/netns";
const NETNS_ETC_DIR: &str = "/etc/netns";

/// The name of a namespace in /run/netns given as a name or a path there.
pub(super) fn named_netns(netns: &str) -> Result<String> {
    let name = match netns.strip_prefix(NAMED_NETNS_DIR) {
        Some(rest) => rest.strip_prefix('/').unwrap_or(""),
        None if !netns.contains('/') && netns.parse::<u32>().is_err() => netns,
        None => "",
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidInput(format!(
            "--dns: namespace {netns:?} is not a named namespace in {NAMED_NETNS_DIR}; only those have a resolv.conf netd can write (/etc/netns/NAME/resolv.conf)"
        )));
    }
    Ok(name.to_string())
}

/// The file's text: the gateways as nameservers, the search domain.
pub(super) fn resolv_conf_text(dns: &DnsStatus) -> String {
    let mut text = String::from("# written by netd attach --dns\n");
    for ns in &dns.nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    text.push_str(&format!("search {}\n", dns.search));
    text
}

/// Writes /etc/netns/NAME/resolv.conf atomically (a temporary file renamed).
pub(super) fn write_for_netns(name: &str, dns: &DnsStatus) -> Result<PathBuf> {
    write_in(Path::new(NETNS_ETC_DIR), name, dns)
}

fn write_in(etc_netns: &Path, name: &str, dns: &DnsStatus) -> Result<PathBuf> {
    let dir = etc_netns.join(name);
    let path = dir.join("resolv.conf");
    let fail = |what: &str, e: std::io::Error| {
        Error::Setup(format!(
            "--dns: {what} {}: {e}; the container is attached, only its resolv.conf is missing",
            path.display()
        ))
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("create the directory of", e))?;
    // Containers' own users read it.
    crate::atomic_file::write(&path, resolv_conf_text(dns).as_bytes(), 0o644)
        .map_err(|e| fail("write", e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_namespaces_get_a_resolv_conf() {
        assert_eq!(named_netns("c1").unwrap(), "c1");
        assert_eq!(named_netns("/run/netns/c1").unwrap(), "c1");
        for bad in [
            "/proc/42/ns/net",
            "42",
            "/run/netns/",
            "/run/netns/a/b",
            "/var/run/x",
        ] {
            let err = named_netns(bad).unwrap_err().to_string();
            assert!(err.contains("not a named namespace"), "{bad}: {err}");
        }
    }

    #[test]
    fn writes_nameservers_and_search() {
        let dns = DnsStatus {
            nameservers: vec!["10.66.0.1".parse().unwrap(), "fd66::1".parse().unwrap()],
            search: "weft.internal".into(),
        };
        let dir = std::env::temp_dir().join(format!("netd-resolv-{}", std::process::id()));
        let path = write_in(&dir, "c1", &dns).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.contains("nameserver 10.66.0.1\nnameserver fd66::1\nsearch weft.internal\n"),
            "{text}"
        );
    }
}
