//! Port mappings bound to a container's addresses and checked against every
//! port already published. Pure functions of the state: the `Ports` part
//! applies them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::mapping::{PortMapping, PublishedPort};
use crate::error::{Error, Result};
use crate::state::{Endpoint, Phase, State};

/// The body of `POST` and `DELETE /v1/containers/{id}/ports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsRequest {
    /// Typed mappings; the `-p` strings older clients send are read too.
    pub ports: Vec<PortMapping>,
}

/// Binds specs to a container's addresses: a spec with a host address goes
/// to the container address of its family; one without goes to each.
pub fn bind_specs(
    container: &str,
    specs: &[PortMapping],
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
            return Err(Error::InvalidInput(format!(
                "container {container}: port {spec} has an IPv6 host address but the container has no IPv6 address"
            )));
        }
        for ip in targets {
            ports.push(
                spec.to_container(ip)
                    .map_err(|e| Error::InvalidInput(format!("container {container}: {e}")))?,
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

/// The endpoint `key` names, when it is fully attached.
pub fn attached<'a>(state: &'a State, key: &str) -> Result<&'a Endpoint> {
    match state.find(key) {
        Some(ep) if ep.phase == Phase::Attached => Ok(ep),
        Some(ep) => Err(Error::Busy(format!(
            "container {} is not fully attached yet; try again",
            ep.name
        ))),
        None => Err(Error::NotFound(format!(
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
        let ips: Vec<IpNetwork> = ips.iter().map(|s| s.parse().unwrap()).collect();
        let specs: Vec<PortMapping> = specs
            .iter()
            .map(|s| s.parse())
            .collect::<std::result::Result<_, _>>()?;
        bind_specs("c", &specs, &ips)
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
        // A mapping is checked once, where it is parsed: ranges of unequal
        // length never reach the binding.
        let err = bound(&["8080-8081:80"], &["10.66.0.3/24"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be the same length"), "{err}");
    }

    #[test]
    fn api_requests_take_typed_and_older_string_mappings() {
        let req: PortsRequest = serde_json::from_str(
            r#"{"ports": ["8080:80", {"protocol": "udp", "host_ports": {"start": 53, "end": 53}, "container_ports": {"start": 53, "end": 53}}]}"#,
        )
        .unwrap();
        assert_eq!(
            req.ports,
            [
                "8080:80/tcp".parse::<PortMapping>().unwrap(),
                "53:53/udp".parse().unwrap()
            ]
        );
        // What a client sends now: the typed form.
        let sent = serde_json::to_value(&req).unwrap();
        assert_eq!(sent["ports"][0]["host_ports"]["start"], 8080);
        let err = serde_json::from_str::<PortsRequest>(r#"{"ports": ["8080:0"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid port mapping \"8080:0\": container port: port 0"),
            "{err}"
        );
        let err = serde_json::from_str::<PortsRequest>(r#"{"ports": ["8080:80"], "port": []}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `port`"), "{err}");
    }
}
