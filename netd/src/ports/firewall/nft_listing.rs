//! Reading back `nft -j list table inet weft`: whether the table still
//! holds what the network needs (someone may have flushed the ruleset).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::nft_rules::{network_elements, rules};
use super::nft_syntax::{CHAINS, PORT_MAPS};
use super::NetworkRules;

/// The parts of nft's JSON listing that tell whether the table is intact:
/// which chains hold how many rules, and which sets hold how many elements.
#[derive(Debug, Deserialize)]
pub(super) struct Listing {
    nftables: Vec<ListedObject>,
}

#[derive(Debug, Deserialize)]
struct ListedObject {
    chain: Option<Named>,
    rule: Option<ListedRule>,
    set: Option<ListedSet>,
    map: Option<ListedSet>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ListedRule {
    chain: String,
}

#[derive(Debug, Deserialize)]
struct ListedSet {
    name: String,
    #[serde(default)]
    elem: Vec<serde_json::Value>,
}

impl Listing {
    /// True when every chain holds exactly the rules `net` needs, every map
    /// exists and every network set holds the right number of prefixes.
    pub(super) fn matches(&self, net: &NetworkRules) -> bool {
        let mut rule_counts: BTreeMap<&str, usize> = BTreeMap::new();
        for object in &self.nftables {
            if let Some(rule) = &object.rule {
                *rule_counts.entry(rule.chain.as_str()).or_default() += 1;
            }
        }
        let chains: Vec<&str> = self
            .nftables
            .iter()
            .filter_map(|o| o.chain.as_ref().map(|c| c.name.as_str()))
            .collect();
        let expected = rules(net);
        let chains_ok = CHAINS.iter().all(|chain| {
            let want = expected.iter().filter(|r| r.chain == *chain).count();
            chains.contains(&chain.name())
                && rule_counts.get(chain.name()).copied().unwrap_or(0) == want
        });
        let maps: Vec<&str> = self
            .nftables
            .iter()
            .filter_map(|o| o.map.as_ref().map(|m| m.name.as_str()))
            .collect();
        let maps_ok = PORT_MAPS.iter().all(|m| maps.contains(&m.name));
        let sets_ok = network_elements(net).iter().all(|(set, elements)| {
            self.nftables
                .iter()
                .filter_map(|o| o.set.as_ref())
                .any(|s| s.name == set.name && s.elem.len() == elements.len())
        });
        chains_ok && maps_ok && sets_ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::example_network as net;
    use super::*;

    #[test]
    fn listings_are_checked_against_the_network() {
        let net = net();
        let mut objects = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
        for chain in CHAINS {
            objects.push(serde_json::json!({"chain": {"name": chain.name()}}));
        }
        for rule in rules(&net) {
            objects.push(serde_json::json!({"rule": {"chain": rule.chain.name(), "expr": []}}));
        }
        for map in PORT_MAPS {
            objects.push(serde_json::json!({"map": {"name": map.name}}));
        }
        for (set, elements) in network_elements(&net) {
            let elem: Vec<serde_json::Value> =
                elements.iter().map(|e| serde_json::json!(e)).collect();
            objects.push(serde_json::json!({"set": {"name": set.name, "elem": elem}}));
        }
        let full = serde_json::json!({ "nftables": objects.clone() });
        let listing: Listing = serde_json::from_value(full).unwrap();
        assert!(listing.matches(&net));
        // One rule short: not intact.
        let rule_at = objects
            .iter()
            .position(|o| o.get("rule").is_some())
            .unwrap();
        let mut short = objects.clone();
        short.remove(rule_at);
        let listing: Listing =
            serde_json::from_value(serde_json::json!({ "nftables": short })).unwrap();
        assert!(!listing.matches(&net));
        // A different network (another subnet) is not what the kernel holds.
        let mut other = net.clone();
        other.subnets.push("10.10.0.0/24".parse().unwrap());
        let listing: Listing =
            serde_json::from_value(serde_json::json!({ "nftables": objects })).unwrap();
        assert!(!listing.matches(&other));
    }
}
