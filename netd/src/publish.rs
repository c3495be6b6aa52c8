//! Published ports: netd keeps them in the state with their endpoint, refuses
//! a host port that is already published, and has the firewall backend
//! (`plumb::firewall`, nftables or iptables) forward them. Reconciliation
//! re-applies the whole set when the ruleset was flushed.

use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use plumb::firewall::{Firewall, NetworkRules, PortSpec, PublishedPort};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::network::Network;
use crate::state::{Endpoint, State};

/// The body of `POST` and `DELETE /v1/containers/{id}/ports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsRequest {
    /// `[hostip:]hostport[-end]:ctrport[-end][/proto]`, as with `-p`.
    pub ports: Vec<String>,
}

/// Parses the user's `-p` specs; errors name the container.
pub fn parse_specs(container: &str, specs: &[String]) -> Result<Vec<PortSpec>> {
    specs
        .iter()
        .map(|s| {
            s.parse::<PortSpec>()
                .map_err(|e| Error::Invalid(format!("container {container}: {e}")))
        })
        .collect()
}

/// Binds specs to a container's addresses: a spec with a host address goes
/// to the container address of its family; one without goes to each.
pub fn bind_specs(
    container: &str,
    specs: &[PortSpec],
    ips: &[IpNetwork],
) -> Result<Vec<PublishedPort>> {
    let mut ports = Vec::new();
    for spec in specs {
        let targets: Vec<IpAddr> = ips
            .iter()
            .map(|n| n.ip())
            .filter(|ip| spec.host_ip.is_none_or(|h| h.is_ipv6() == ip.is_ipv6()))
            .collect();
        if targets.is_empty() {
            return Err(Error::Invalid(format!(
                "container {container}: port {spec} has an IPv6 host address but the container has no IPv6 address"
            )));
        }
        for ip in targets {
            ports.push(
                spec.to_container(ip)
                    .map_err(|e| Error::Invalid(format!("container {container}: {e}")))?,
            );
        }
    }
    Ok(ports)
}

/// Refuses ports that clash with each other or with any published port.
pub fn check_conflicts(state: &State, container: &str, ports: &[PublishedPort]) -> Result<()> {
    for (i, port) in ports.iter().enumerate() {
        if let Some(other) = ports[..i].iter().find(|o| o.clashes_with(port)) {
            return Err(Error::Conflict(format!(
                "container {container}: ports {other} and {port} claim the same host port"
            )));
        }
        if let Some((ep, other)) = state.endpoints.port_clash(port) {
            return Err(Error::Conflict(format!(
                "container {container}: host port {} ({}) is already published by container {} ({other}); choose another host port or unpublish it first",
                port.host_ports, port.protocol, ep.name
            )));
        }
    }
    Ok(())
}

/// Every published port in the state.
pub fn all_ports(state: &State) -> Vec<PublishedPort> {
    state
        .endpoints
        .values()
        .flat_map(|e| e.ports.iter().copied())
        .collect()
}

pub fn published_count(state: &State) -> usize {
    state.endpoints.values().map(|e| e.ports.len()).sum()
}

/// Runs a blocking firewall call off the async workers.
pub(crate) async fn firewall_call<T: Send + 'static>(
    firewall: &Arc<dyn Firewall>,
    call: impl FnOnce(&dyn Firewall) -> plumb::Result<T> + Send + 'static,
) -> plumb::Result<T> {
    let fw = firewall.clone();
    tokio::task::spawn_blocking(move || call(fw.as_ref()))
        .await
        .map_err(|e| plumb::Error::Other(format!("firewall task failed: {e}")))?
}

impl Network {
    /// What the firewall needs to know about this host's network.
    pub fn network_rules(&self) -> NetworkRules {
        NetworkRules {
            bridge: self.config.bridge.clone(),
            subnets: self.config.subnets(),
            masquerade: self.config.masquerade,
            cluster_ranges: self.cluster_ranges(),
        }
    }

    /// Publishes more ports of an attached container.
    pub async fn publish(&self, key: &str, specs: &[String]) -> Result<Vec<PublishedPort>> {
        let _op = self.ops.read().await;
        let result = self.publish_inner(key, specs).await;
        if result.is_err() {
            self.metrics.error("publish");
        }
        result
    }

    async fn publish_inner(&self, key: &str, specs: &[String]) -> Result<Vec<PublishedPort>> {
        let parsed = parse_specs(key, specs)?;
        // Record first (conflicts checked under the lock), then apply; undo
        // the record if the firewall refuses.
        let (id, ports) = self
            .store
            .update(|s| -> Result<(String, Vec<PublishedPort>)> {
                let ep = attached(s, key)?;
                let ports = bind_specs(&ep.name, &parsed, &ep.ips)?;
                check_conflicts(s, &ep.name, &ports)?;
                let id = ep.id.clone();
                s.endpoint_mut(&id)
                    .expect("found above")
                    .ports
                    .extend(ports.iter().copied());
                Ok((id, ports))
            })?;
        let apply = ports.clone();
        if let Err(e) = firewall_call(&self.firewall, move |fw| fw.add_ports(&apply)).await {
            self.store.update(|s| -> Result<()> {
                if let Some(mut ep) = s.endpoint_mut(&id) {
                    ep.ports.retain(|p| !ports.contains(p));
                }
                Ok(())
            })?;
            return Err(Error::kernel(
                format!("publish ports of container {key}"),
                e,
            ));
        }
        tracing::info!(container = key, ports = ?ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "published");
        self.relay_ports(&ports);
        Ok(ports)
    }

    /// Withdraws published ports of a container; specs that are not published are skipped.
    pub async fn unpublish(&self, key: &str, specs: &[String]) -> Result<Vec<PublishedPort>> {
        let _op = self.ops.read().await;
        let parsed = parse_specs(key, specs)?;
        let ports = self.store.update(|s| -> Result<Vec<PublishedPort>> {
            let ep = attached(s, key)?;
            let wanted = bind_specs(&ep.name, &parsed, &ep.ips)?;
            let id = ep.id.clone();
            let mut ep = s.endpoint_mut(&id).expect("found above");
            let removed: Vec<PublishedPort> = ep
                .ports
                .iter()
                .copied()
                .filter(|p| wanted.contains(p))
                .collect();
            ep.ports.retain(|p| !wanted.contains(p));
            Ok(removed)
        })?;
        let apply = ports.clone();
        firewall_call(&self.firewall, move |fw| fw.remove_ports(&apply))
            .await
            .map_err(|e| {
                self.metrics.error("publish");
                Error::kernel(format!("unpublish ports of container {key}"), e)
            })?;
        self.stop_relaying(&ports);
        Ok(ports)
    }

    /// Makes the firewall hold exactly the network rules and the ports in the state.
    pub(crate) async fn sync_firewall(&self) -> Result<()> {
        let ports = all_ports(&self.store.read()?);
        let rules = self.network_rules();
        firewall_call(&self.firewall, move |fw| fw.sync(&rules, &ports))
            .await
            .map_err(|e| Error::kernel("re-apply the firewall rules", e))
    }

    /// False when the network's NAT rules are no longer in place (someone
    /// flushed the ruleset or deleted the table); CNI's CHECK asks this.
    pub async fn firewall_intact(&self) -> Result<bool> {
        let rules = self.network_rules();
        firewall_call(&self.firewall, move |fw| fw.is_intact(&rules))
            .await
            .map_err(|e| Error::kernel("check the firewall rules", e))
    }
}

fn attached<'a>(state: &'a State, key: &str) -> Result<&'a Endpoint> {
    match state.find(key) {
        Some(ep) if ep.phase == crate::state::Phase::Attached => Ok(ep),
        Some(ep) => Err(Error::Conflict(format!(
            "container {} is not fully attached yet; try again",
            ep.name
        ))),
        None => Err(Error::Invalid(format!(
            "container {key} is not attached; attach it first (netd ls shows what is)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, ports: &[&str]) -> Endpoint {
        Endpoint::for_tests(name, name, 1, ports)
    }

    fn bound(specs: &[&str], ips: &[&str]) -> Result<Vec<PublishedPort>> {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        let ips: Vec<IpNetwork> = ips.iter().map(|s| s.parse().unwrap()).collect();
        bind_specs("c", &parse_specs("c", &specs)?, &ips)
    }

    #[test]
    fn host_ports_are_claimed_once() {
        let mut state = State::default();
        state.endpoints.insert(
            "a".into(),
            endpoint("a", &["8080:80", "9000-9010:9000-9010/udp"]).into(),
        );
        let ok = |s: &[&str]| check_conflicts(&state, "c", &bound(s, &["10.66.0.3/24"]).unwrap());
        assert!(ok(&["8081:80"]).is_ok());
        assert!(ok(&["8080:80/udp"]).is_ok());
        let err = ok(&["8080:81"]).unwrap_err().to_string();
        assert!(
            err.contains("host port 8080 (tcp) is already published by container a"),
            "{err}"
        );
        assert!(
            ok(&["127.0.0.1:8080:80"]).is_err(),
            "a specific address clashes with all addresses"
        );
        assert!(ok(&["9005:53/udp"]).is_err(), "inside a published range");
        assert!(ok(&["8999-9000:1-2/udp"]).is_err(), "overlapping a range");
        let err = ok(&["7000:80", "7000:81"]).unwrap_err().to_string();
        assert!(err.contains("claim the same host port"), "{err}");
    }

    #[test]
    fn specs_bind_to_the_addresses_of_their_family() {
        let ports = bound(&["8080:80"], &["10.66.0.3/24", "fd66::3/64"]).unwrap();
        assert_eq!(ports.len(), 2);
        let ports = bound(&["[fd00::1]:8080:80"], &["10.66.0.3/24", "fd66::3/64"]).unwrap();
        assert_eq!(ports.len(), 1);
        assert!(ports[0].is_ipv6());
        let err = bound(&["[fd00::1]:8080:80"], &["10.66.0.3/24"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no IPv6 address"), "{err}");
        let err = bound(&["8080-8081:80"], &["10.66.0.3/24"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("container c:"), "{err}");
    }
}
