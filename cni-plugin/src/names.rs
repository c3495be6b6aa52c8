//! Names: what the plugin tells netd a container is called (the runtime's
//! container name, the `aliases` capability), and the result's `dns` when
//! the daemon serves names. See docs/dns.md.

use crate::error::CniError;
use crate::result::CniResult;
use crate::types::NetConf;

/// The names netd's DNS server answers for the container: the runtime's
/// container name (`K8S_POD_NAME`, when it is a valid DNS name; podman's
/// names always are) and the `aliases` capability's list for this network.
pub fn dns_aliases(conf: &NetConf, pod_name: Option<&str>) -> Result<Vec<String>, CniError> {
    let mut aliases: Vec<String> = pod_name
        .filter(|n| netd::names::normalized_name("", n).is_ok())
        .map(String::from)
        .into_iter()
        .collect();
    let given = conf
        .runtime_config
        .aliases
        .as_ref()
        .and_then(|by_network| by_network.get(&conf.name));
    if let Some(given) = given {
        let bad = || {
            CniError::invalid_config(
                format!(
                    "runtimeConfig.aliases.{} is {given}, not a list of names",
                    conf.name
                ),
                "the aliases capability maps each network's name to a list of DNS names",
            )
        };
        for alias in given.as_array().ok_or_else(bad)? {
            let alias = alias.as_str().ok_or_else(bad)?;
            if !aliases.iter().any(|a| a.eq_ignore_ascii_case(alias)) {
                aliases.push(alias.to_string());
            }
        }
    }
    Ok(aliases)
}

/// The CNI result's `dns` for a network whose daemon serves names: the
/// gateways, the search domain. Kept only when neither the network config
/// nor a delegated IPAM gave DNS settings of their own.
pub fn names_dns(result: &mut CniResult, served: &netd::api::DnsStatus) {
    if result.dns.is_empty() {
        result.dns = crate::result::Dns {
            nameservers: served.nameservers.iter().map(|ip| ip.to_string()).collect(),
            search: vec![served.search.clone()],
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: serde_json::Value) -> NetConf {
        NetConf::parse(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn dns_aliases_are_the_pod_name_and_this_networks_aliases() {
        let c = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "weftnet", "type": "weft",
            "runtimeConfig": {"aliases": {"weftnet": ["www", "WEB", "api"], "other": ["no"]}}
        }));
        assert_eq!(dns_aliases(&c, Some("web")).unwrap(), ["web", "www", "api"]);
        // A runtime's name that is no DNS name is not answered.
        assert_eq!(
            dns_aliases(&c, Some("a..b")).unwrap(),
            ["www", "WEB", "api"]
        );
        let plain = conf(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "weft"}));
        assert!(dns_aliases(&plain, None).unwrap().is_empty());
        let bad = conf(serde_json::json!({
            "cniVersion": "1.0.0", "name": "n", "type": "weft",
            "runtimeConfig": {"aliases": {"n": "web"}}
        }));
        let e = dns_aliases(&bad, None).unwrap_err();
        assert_eq!(e.code.number(), 7, "{e}");
        assert!(e.msg.contains("runtimeConfig.aliases.n"), "{e}");
    }

    #[test]
    fn a_daemon_serving_names_fills_an_empty_dns() {
        let served = netd::api::DnsStatus {
            nameservers: vec!["10.66.0.1".parse().unwrap()],
            search: "weft.internal".into(),
        };
        let mut result = CniResult::default();
        names_dns(&mut result, &served);
        assert_eq!(result.dns.nameservers, ["10.66.0.1"]);
        assert_eq!(result.dns.search, ["weft.internal"]);
        // The network config's own dns wins.
        let mut given = CniResult::default();
        given.dns.nameservers = vec!["192.0.2.53".into()];
        names_dns(&mut given, &served);
        assert_eq!(given.dns.nameservers, ["192.0.2.53"]);
        assert!(given.dns.search.is_empty());
    }
}
