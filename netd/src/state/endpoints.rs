//! The state's endpoints by container id, with the indexes an attach checks
//! against: names, interfaces per namespace and published host ports. Each
//! endpoint is a heap allocation of its own, so looking at every one of them
//! (three times per attach) cost a cache miss each: at 1,000 containers that
//! was most of what netd itself added to an attach. With the indexes an
//! attach costs the same with 1 or 1,000 containers.
//!
//! The collection also remembers which ids a transaction touched, so that
//! telling what it changed (the journal record) and undoing it on failure
//! look at those alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::ports::mapping::{Protocol, PublishedPort};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Endpoint;

/// Where a published port sits in the index: ports are found by their
/// first host port, per protocol and family.
type PortKey = (Protocol, bool, u16);

#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    by_id: BTreeMap<String, Arc<Endpoint>>,
    /// Name → id.
    names: HashMap<String, String>,
    /// (namespace inode, interface) → id; ordered, so one namespace's
    /// interfaces are one range.
    interfaces: BTreeMap<(u64, String), String>,
    /// Published ports by their first host port → (id, port).
    ports: BTreeMap<PortKey, Vec<(String, PublishedPort)>>,
    /// The longest host port range ever indexed, less one: how far below a
    /// port a range that covers it can start. Never lowered (a bound, not a
    /// count).
    widest: u16,
    /// Ids inserted, removed or changed since `settle`.
    touched: BTreeSet<String>,
}

impl PartialEq for Endpoints {
    fn eq(&self, other: &Endpoints) -> bool {
        self.by_id == other.by_id
    }
}

impl Eq for Endpoints {}

impl Serialize for Endpoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_id.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Endpoints {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Endpoints, D::Error> {
        let by_id = BTreeMap::<String, Arc<Endpoint>>::deserialize(deserializer)?;
        let mut endpoints = Endpoints::default();
        for (id, ep) in by_id {
            endpoints.insert(id, ep);
        }
        endpoints.settle();
        Ok(endpoints)
    }
}

impl Endpoints {
    pub fn get(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.by_id.get(id)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.by_id.keys()
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_id.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Endpoint>)> {
        self.by_id.iter()
    }

    /// The endpoint called `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.names.get(name).and_then(|id| self.by_id.get(id))
    }

    /// The endpoint holding interface `ifname` in the namespace with inode `netns_inode`.
    pub fn on_interface(&self, netns_inode: u64, ifname: &str) -> Option<&Arc<Endpoint>> {
        self.interfaces
            .get(&(netns_inode, ifname.to_string()))
            .and_then(|id| self.by_id.get(id))
    }

    /// Every endpoint in the namespace with inode `netns_inode`.
    pub fn in_namespace(&self, netns_inode: u64) -> impl Iterator<Item = &Arc<Endpoint>> {
        let start = (netns_inode, String::new());
        self.interfaces
            .range(start..)
            .take_while(move |((inode, _), _)| *inode == netns_inode)
            .filter_map(|(_, id)| self.by_id.get(id))
    }

    /// A published port of some endpoint that claims a host port `port` claims too.
    pub fn port_clash(&self, port: &PublishedPort) -> Option<(&Endpoint, PublishedPort)> {
        let v6 = port.is_ipv6();
        let lowest = port.host_ports.start.saturating_sub(self.widest);
        self.ports
            .range((port.protocol, v6, lowest)..=(port.protocol, v6, port.host_ports.end))
            .flat_map(|(_, held)| held)
            .find(|(_, other)| other.clashes_with(port))
            .and_then(|(id, other)| Some((&**self.by_id.get(id)?, *other)))
    }

    pub fn insert(&mut self, id: String, ep: Arc<Endpoint>) -> Option<Arc<Endpoint>> {
        let old = self.remove(&id);
        self.index(&id, &ep);
        self.by_id.insert(id, ep);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<Endpoint>> {
        let old = self.by_id.remove(id)?;
        self.unindex(id, &old);
        self.touched.insert(id.to_string());
        Some(old)
    }

    /// The endpoint `id`, to change in place (copied first if the store's
    /// other copy still shares it); indexed again when the guard goes.
    pub fn get_mut(&mut self, id: &str) -> Option<EndpointMut<'_>> {
        let ep = self.by_id.get(id)?.clone();
        self.unindex(id, &ep);
        Some(EndpointMut {
            endpoints: self,
            id: id.to_string(),
        })
    }

    /// The ids touched since the last `settle`.
    pub(super) fn touched(&self) -> &BTreeSet<String> {
        &self.touched
    }

    /// Forgets which ids were touched: the copy now matches the files.
    pub(super) fn settle(&mut self) {
        self.touched.clear();
    }

    /// Undoes what was touched since the last `settle`, from `persisted`.
    pub(super) fn revert_to(&mut self, persisted: &Endpoints) {
        for id in std::mem::take(&mut self.touched) {
            match persisted.get(&id) {
                Some(ep) => {
                    self.insert(id, ep.clone());
                }
                None => {
                    self.remove(&id);
                }
            }
        }
        self.settle();
    }

    fn index(&mut self, id: &str, ep: &Endpoint) {
        self.touched.insert(id.to_string());
        self.names.insert(ep.name.clone(), id.to_string());
        self.interfaces
            .insert((ep.netns_inode, ep.ifname.clone()), id.to_string());
        for port in &ep.ports {
            let span = port.host_ports.end.saturating_sub(port.host_ports.start);
            self.widest = self.widest.max(span);
            self.ports
                .entry((port.protocol, port.is_ipv6(), port.host_ports.start))
                .or_default()
                .push((id.to_string(), *port));
        }
    }

    fn unindex(&mut self, id: &str, ep: &Endpoint) {
        // Only this id's entries: a state written by an older netd may hold
        // two endpoints of one name, and the other one stays indexed.
        if self.names.get(&ep.name).is_some_and(|held| held == id) {
            self.names.remove(&ep.name);
        }
        let iface = (ep.netns_inode, ep.ifname.clone());
        if self.interfaces.get(&iface).is_some_and(|held| held == id) {
            self.interfaces.remove(&iface);
        }
        for port in &ep.ports {
            let key = (port.protocol, port.is_ipv6(), port.host_ports.start);
            if let Some(held) = self.ports.get_mut(&key) {
                held.retain(|(holder, p)| !(holder == id && p == port));
                if held.is_empty() {
                    self.ports.remove(&key);
                }
            }
        }
    }
}

/// An endpoint being changed in place; see [`Endpoints::get_mut`].
pub struct EndpointMut<'a> {
    endpoints: &'a mut Endpoints,
    id: String,
}

impl Deref for EndpointMut<'_> {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoints.by_id[&self.id]
    }
}

impl DerefMut for EndpointMut<'_> {
    fn deref_mut(&mut self) -> &mut Endpoint {
        Arc::make_mut(
            self.endpoints
                .by_id
                .get_mut(&self.id)
                .expect("the guard's endpoint stays while it lives"),
        )
    }
}

impl Drop for EndpointMut<'_> {
    fn drop(&mut self) {
        let ep = self.endpoints.by_id[&self.id].clone();
        self.endpoints.index(&self.id, &ep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, inode: u64, ports: &[&str]) -> Arc<Endpoint> {
        Arc::new(Endpoint::for_tests(id, &format!("name-{id}"), inode, ports))
    }

    fn port(spec: &str) -> PublishedPort {
        PublishedPort::parse(spec, "10.66.0.9".parse().unwrap()).unwrap()
    }

    #[test]
    fn names_interfaces_and_ports_are_found_and_forgotten() {
        let mut eps = Endpoints::default();
        eps.insert("a".into(), endpoint("a", 7, &["8080:80"]));
        eps.insert("b".into(), endpoint("b", 8, &["9000-9100:9000-9100/udp"]));
        assert_eq!(eps.named("name-a").unwrap().id, "a");
        assert_eq!(eps.on_interface(8, "eth0").unwrap().id, "b");
        assert!(eps.on_interface(8, "eth1").is_none());
        assert_eq!(eps.in_namespace(7).count(), 1);

        // Found by any port of a range, not only its first.
        assert_eq!(eps.port_clash(&port("9050:53/udp")).unwrap().0.id, "b");
        assert!(eps.port_clash(&port("9050:53/tcp")).is_none());
        assert!(eps.port_clash(&port("9101:53/udp")).is_none());
        assert_eq!(eps.port_clash(&port("8000-8080:80-160")).unwrap().0.id, "a");
        // A port on all addresses clashes with one on a single address;
        // two different single addresses do not.
        assert_eq!(eps.port_clash(&port("10.0.0.1:8080:80")).unwrap().0.id, "a");
        eps.insert("c".into(), endpoint("c", 9, &["10.0.0.1:7000:70"]));
        assert!(eps.port_clash(&port("10.0.0.2:7000:70")).is_none());
        assert_eq!(eps.port_clash(&port("7000:70")).unwrap().0.id, "c");

        eps.remove("a");
        assert!(eps.named("name-a").is_none());
        assert!(eps.port_clash(&port("8080:80")).is_none());
        assert!(eps.on_interface(7, "eth0").is_none());
    }

    #[test]
    fn a_change_in_place_is_indexed_again() {
        let mut eps = Endpoints::default();
        eps.insert("a".into(), endpoint("a", 7, &["8080:80"]));
        {
            let mut ep = eps.get_mut("a").unwrap();
            ep.name = "renamed".into();
            ep.ports.clear();
        }
        assert!(eps.named("name-a").is_none());
        assert_eq!(eps.named("renamed").unwrap().id, "a");
        assert!(eps.port_clash(&port("8080:80")).is_none());
    }

    #[test]
    fn a_transaction_is_undone_from_the_persisted_copy() {
        let mut persisted = Endpoints::default();
        persisted.insert("a".into(), endpoint("a", 7, &["8080:80"]));
        persisted.settle();
        let mut working = persisted.clone();
        working.remove("a");
        working.insert("b".into(), endpoint("b", 8, &["9090:90"]));
        assert_eq!(
            working.touched().iter().collect::<Vec<_>>(),
            ["a", "b"].iter().collect::<Vec<_>>()
        );
        working.revert_to(&persisted);
        assert_eq!(working, persisted);
        assert!(working.touched().is_empty());
        assert_eq!(working.port_clash(&port("8080:80")).unwrap().0.id, "a");
        assert!(working.port_clash(&port("9090:90")).is_none());
        assert!(working.named("name-b").is_none());
    }

    #[test]
    fn a_state_read_back_is_indexed() {
        let mut eps = Endpoints::default();
        eps.insert("a".into(), endpoint("a", 7, &["8080:80"]));
        let text = serde_json::to_string(&eps).unwrap();
        let back: Endpoints = serde_json::from_str(&text).unwrap();
        assert_eq!(back, eps);
        assert!(back.touched().is_empty());
        assert_eq!(back.named("name-a").unwrap().id, "a");
        assert!(back.port_clash(&port("8080:80")).is_some());
    }
}
