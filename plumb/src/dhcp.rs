//! DHCP for a wired guest interface, with busybox's udhcpc as the client and
//! plumb itself as its event script: the lease lands on the interface via
//! netlink inside the guest, and nothing outside the guest (no resolv.conf,
//! no lease file) is touched.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::route::Route;
use crate::Netlink;

/// Set in udhcpc's environment so that plumb, run as its script, knows its role.
pub const SCRIPT_ENV: &str = "PLUMB_DHCP_SCRIPT";

/// Finds a DHCP client: `udhcpc`/`udhcpc6`, or busybox's applet.
fn client(v6: bool) -> Option<(String, Vec<String>)> {
    let applet = if v6 { "udhcpc6" } else { "udhcpc" };
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let direct = format!("{dir}/{applet}");
        if std::path::Path::new(&direct).exists() {
            return Some((direct, Vec::new()));
        }
    }
    for dir in ["/usr/bin", "/bin"] {
        let busybox = format!("{dir}/busybox");
        if std::path::Path::new(&busybox).exists() {
            return Some((busybox, vec![applet.to_string()]));
        }
    }
    None
}

/// Obtains a lease for `ifname` inside `guest` (bounded: 5 tries, 1 s apart).
pub fn acquire(guest: &Netns, ifname: &str, v6: bool) -> Result<()> {
    let (program, mut args) = client(v6).ok_or_else(|| {
        Error::Other("no DHCP client found: install busybox (it provides udhcpc)".into())
    })?;
    let me = std::env::current_exe().map_err(|e| Error::io("find the plumb binary", e))?;
    args.extend(
        ["-i", ifname, "-f", "-q", "-n", "-t", "5", "-T", "1", "-s"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.push(me.display().to_string());
    let mut command = Command::new(&program);
    command
        .args(&args)
        .env(SCRIPT_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = guest
        .run(move || command.output())?
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    if !output.status.success() {
        return Err(Error::Other(format!(
            "no DHCP lease for {ifname} in namespace {}: {}",
            guest.label(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// What udhcpc hands its script in the environment.
#[derive(Debug, PartialEq)]
pub struct Lease {
    /// The interface the lease is for.
    pub interface: String,
    /// The leased address with its prefix length.
    pub address: IpNetwork,
    /// The default gateways the server offered, in its order.
    pub routers: Vec<Ipv4Addr>,
}

impl Lease {
    /// Reads udhcpc's variables (`interface`, `ip`, `mask` or `subnet`,
    /// `router`) through `get`. Errors when one it needs is missing or malformed.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Lease> {
        let interface =
            get("interface").ok_or_else(|| Error::Other("udhcpc gave no interface".into()))?;
        let ip: Ipv4Addr = get("ip")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Other("udhcpc gave no address".into()))?;
        let prefix = match get("mask").and_then(|m| m.parse::<u8>().ok()) {
            Some(p) => p,
            None => get("subnet")
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .map(|m| u32::from(m).count_ones() as u8)
                .unwrap_or(24),
        };
        let address = IpNetwork::new(ip.into(), prefix)
            .map_err(|e| Error::invalid("DHCP lease", ip.to_string(), e.to_string()))?;
        let routers = get("router")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|r| r.parse().ok())
            .collect();
        Ok(Lease {
            interface,
            address,
            routers,
        })
    }
}

/// plumb running as udhcpc's script: applies the event in the current namespace.
pub fn run_script(event: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start runtime", e))?;
    rt.block_on(async {
        let nl = Netlink::current().await?;
        match event {
            "bound" | "renew" => {
                let lease = Lease::from_env(|k| std::env::var(k).ok())?;
                match nl.add_address(&lease.interface, lease.address, false).await {
                    Ok(()) => {}
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e),
                }
                if let Some(router) = lease.routers.first() {
                    nl.replace_route(&Route {
                        gateway: Some((*router).into()),
                        dev: Some(lease.interface.clone()),
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            // deconfig, leasefail, nak: nothing configured yet that needs undoing.
            _ => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_lease_from_udhcpc_variables() {
        let env = |k: &str| match k {
            "interface" => Some("eth1".to_string()),
            "ip" => Some("10.5.0.23".to_string()),
            "subnet" => Some("255.255.255.0".to_string()),
            "router" => Some("10.5.0.1 10.5.0.2".to_string()),
            _ => None,
        };
        let lease = Lease::from_env(env).unwrap();
        assert_eq!(lease.address.to_string(), "10.5.0.23/24");
        assert_eq!(lease.routers.len(), 2);
        assert!(Lease::from_env(|_| None).is_err());
    }
}
