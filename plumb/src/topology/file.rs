//! Reading a topology file: TOML with no unknown keys (toml names the line and
//! the key of a typo), then every semantic check at once, each problem with
//! its line and the object it concerns.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use toml::Spanned;

use super::{Bridge, Error, Guest, GuestRoute, Interface, Result, Topology};
use crate::addr::parse_cidr;
use crate::link::{validate_ifname, validate_vlan_id, MAX_IFNAME_LEN};
use crate::mac::MacAddr;
use crate::MacvlanMode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<Spanned<String>>,
    #[serde(default)]
    bridge: Vec<RawBridge>,
    #[serde(default)]
    guest: Vec<RawGuest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    name: Spanned<String>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    #[serde(default)]
    interface: Vec<RawInterface>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    host: Spanned<String>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    gateway6: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    vlan: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    to: Spanned<String>,
    via: Option<Spanned<String>>,
    dev: Option<Spanned<String>>,
    metric: Option<Spanned<i64>>,
}

/// Reads and checks the topology in `path`.
pub fn load(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    let default_name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("topology");
    parse(&text, &path.display().to_string(), default_name)
}

/// Parses and checks a topology given as text; `path` words the errors and
/// `default_name` names the topology when the file has no `name` key.
pub fn parse(text: &str, path: &str, default_name: &str) -> Result<Topology> {
    let raw: RawFile = toml::from_str(text).map_err(|e| Error::Syntax {
        path: path.to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut check = Checker {
        text,
        problems: Vec::new(),
    };
    let topology = check.file(raw, default_name);
    if check.problems.is_empty() {
        Ok(topology)
    } else {
        Err(Error::Invalid {
            path: path.to_string(),
            problems: check.problems,
        })
    }
}

/// Collects problems instead of stopping at the first.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn line<T>(&self, at: &Spanned<T>) -> usize {
        let start = at.span().start.min(self.text.len());
        self.text[..start].matches('\n').count() + 1
    }

    fn problem<T>(&mut self, at: &Spanned<T>, what: impl std::fmt::Display) {
        let line = self.line(at);
        self.problems.push(format!("line {line}: {what}"));
    }

    /// Runs a plumb check; a failure becomes a problem at `at`, in `context`.
    fn ok<T, V>(&mut self, at: &Spanned<T>, context: &str, result: crate::Result<V>) -> Option<V> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(at, format!("{context}: {e}"));
                None
            }
        }
    }

    fn file(&mut self, raw: RawFile, default_name: &str) -> Topology {
        let name = match &raw.name {
            Some(n) => {
                if !valid_topology_name(n.get_ref()) {
                    self.problem(
                        n,
                        format!(
                            "topology name {:?}: use 1 to 32 letters, digits, '.', '_' or '-'",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                let cleaned: String = default_name
                    .chars()
                    .map(|c| if valid_name_char(c) { c } else { '_' })
                    .take(32)
                    .collect();
                if cleaned.is_empty() {
                    "topology".to_string()
                } else {
                    cleaned
                }
            }
        };
        let mut bridges = Vec::new();
        let mut bridge_names = HashSet::new();
        for rb in raw.bridge {
            let context = format!("bridge {}", rb.name.get_ref());
            if !bridge_names.insert(rb.name.get_ref().clone()) {
                self.problem(&rb.name, format!("{context} is declared twice"));
            }
            self.ok(&rb.name, &context, validate_ifname(rb.name.get_ref()));
            let addresses = self.addresses(&rb.addresses, &context);
            let mtu = rb.mtu.as_ref().and_then(|m| self.mtu(m, &context));
            bridges.push(Bridge {
                name: rb.name.into_inner(),
                addresses,
                mtu,
            });
        }
        let mut guests = Vec::new();
        let mut guest_names = HashSet::new();
        for rg in raw.guest {
            let context = format!("guest {}", rg.name.get_ref());
            if !guest_names.insert(rg.name.get_ref().clone()) {
                self.problem(&rg.name, format!("{context} is declared twice"));
            }
            let gname = rg.name.get_ref();
            if gname.is_empty() || gname.contains(['/', '\0']) || gname == "." || gname == ".." {
                self.problem(
                    &rg.name,
                    format!("guest name {gname:?}: a namespace name is a file name in /run/netns, without '/'"),
                );
            }
            guests.push(self.guest(rg, &bridges));
        }
        Topology {
            name,
            bridges,
            guests,
        }
    }

    fn guest(&mut self, rg: RawGuest, bridges: &[Bridge]) -> Guest {
        let gname = rg.name.get_ref().clone();
        let mut interfaces = Vec::new();
        let mut names = HashSet::new();
        let mut gateway_owner: [Option<String>; 2] = [None, None];
        for ri in rg.interface {
            let context = format!("guest {gname}, interface {}", ri.name.get_ref());
            if !names.insert(ri.name.get_ref().clone()) {
                self.problem(&ri.name, format!("{context} is declared twice"));
            }
            for (family, given) in [(0, ri.gateway.is_some()), (1, ri.gateway6.is_some())] {
                if !given {
                    continue;
                }
                if let Some(other) = &gateway_owner[family] {
                    let key = if family == 0 { "gateway" } else { "gateway6" };
                    self.problem(
                        &ri.name,
                        format!("{context}: {key} is also given on interface {other}; a namespace has one default route per IP version"),
                    );
                } else {
                    gateway_owner[family] = Some(ri.name.get_ref().clone());
                }
            }
            if let Some(iface) = self.interface(&ri, &context, bridges) {
                interfaces.push(iface);
            }
        }
        let mut routes = Vec::new();
        let mut keys = HashSet::new();
        for rr in &rg.route {
            let context = format!("guest {gname}, route to {}", rr.to.get_ref());
            if let Some(route) = self.route(rr, &context, &interfaces) {
                if !keys.insert((route.to, route.metric)) {
                    self.problem(
                        &rr.to,
                        format!("{context}: declared twice with the same metric (the second would replace the first)"),
                    );
                }
                let family = usize::from(route.to.is_ipv6());
                if route.to.prefix() == 0 && route.metric.is_none() {
                    if let Some(owner) = &gateway_owner[family] {
                        self.problem(
                            &rr.to,
                            format!("{context}: interface {owner} already sets the default route with its gateway; give a metric or drop one of them"),
                        );
                    }
                }
                routes.push(route);
            }
        }
        Guest {
            name: gname,
            interfaces,
            routes,
        }
    }

    fn interface(
        &mut self,
        ri: &RawInterface,
        context: &str,
        bridges: &[Bridge],
    ) -> Option<Interface> {
        let before = self.problems.len();
        self.ok(&ri.name, context, validate_ifname(ri.name.get_ref()));
        self.ok(
            &ri.host,
            &format!("{context}, host"),
            validate_ifname(ri.host.get_ref()),
        );
        let addresses = self.addresses(&ri.addresses, context);
        let gateway = ri.gateway.as_ref().and_then(|g| {
            match self.gateway(g, "gateway", context, &addresses)? {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => {
                    self.problem(
                        g,
                        format!("{context}: gateway {} is IPv6; use gateway6", g.get_ref()),
                    );
                    None
                }
            }
        });
        let gateway6 = ri.gateway6.as_ref().and_then(|g| {
            match self.gateway(g, "gateway6", context, &addresses)? {
                IpAddr::V6(ip) => Some(ip),
                IpAddr::V4(_) => {
                    self.problem(
                        g,
                        format!("{context}: gateway6 {} is IPv4; use gateway", g.get_ref()),
                    );
                    None
                }
            }
        });
        let mac = ri.mac.as_ref().and_then(|m| {
            self.ok(
                m,
                &format!("{context}, mac"),
                MacAddr::parse_user(m.get_ref()),
            )
        });
        let vlan = ri.vlan.as_ref().and_then(|v| {
            let id = u32::try_from(*v.get_ref()).unwrap_or(u32::MAX);
            let id = self.ok(v, context, validate_vlan_id(id))?;
            let sub = format!("{}.{id}", ri.host.get_ref());
            let host_is_bridge = bridges.iter().any(|b| &b.name == ri.host.get_ref());
            if !host_is_bridge && sub.len() > MAX_IFNAME_LEN {
                self.problem(
                    v,
                    format!("{context}: VLAN sub-interface name {sub} would exceed {MAX_IFNAME_LEN} bytes"),
                );
            }
            Some(id)
        });
        let mode = ri.mode.as_ref().and_then(|m| {
            let mode = self.ok(m, context, m.get_ref().parse::<MacvlanMode>())?;
            if bridges.iter().any(|b| &b.name == ri.host.get_ref()) {
                self.problem(
                    m,
                    format!("{context}: mode is for macvlan interfaces, but host {} is a bridge (a veth)", ri.host.get_ref()),
                );
            }
            Some(mode)
        });
        let mtu = ri.mtu.as_ref().and_then(|m| self.mtu(m, context));
        (self.problems.len() == before).then(|| Interface {
            name: ri.name.get_ref().clone(),
            host: ri.host.get_ref().clone(),
            addresses,
            gateway,
            gateway6,
            mac,
            vlan,
            mode,
            mtu,
        })
    }

    fn route(
        &mut self,
        rr: &RawRoute,
        context: &str,
        interfaces: &[Interface],
    ) -> Option<GuestRoute> {
        let before = self.problems.len();
        let to = match rr.to.get_ref().as_str() {
            "default" => {
                let v6 = rr
                    .via
                    .as_ref()
                    .is_some_and(|v| v.get_ref().parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6()));
                Some(if v6 {
                    IpNetwork::V6("::/0".parse().expect("::/0 is a prefix"))
                } else {
                    IpNetwork::V4("0.0.0.0/0".parse().expect("0.0.0.0/0 is a prefix"))
                })
            }
            text => match text.parse::<IpNetwork>() {
                Ok(net) if !text.contains('/') => {
                    self.problem(&rr.to, format!("{context}: needs a prefix length, e.g. {net}/32 or a network like 10.20.0.0/16"));
                    None
                }
                Ok(net) if net.network() != net.ip() => {
                    self.problem(
                        &rr.to,
                        format!(
                            "{context}: {text} has host bits set; did you mean {}/{}?",
                            net.network(),
                            net.prefix()
                        ),
                    );
                    None
                }
                Ok(net) => Some(net),
                Err(e) => {
                    self.problem(&rr.to, format!("{context}: {text:?} is not a prefix: {e}"));
                    None
                }
            },
        };
        let via = rr
            .via
            .as_ref()
            .and_then(|v| match v.get_ref().parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.problem(
                        v,
                        format!("{context}: via {:?} is not an IP address", v.get_ref()),
                    );
                    None
                }
            });
        let dev = rr.dev.as_ref().and_then(|d| {
            if interfaces.iter().any(|i| &i.name == d.get_ref()) {
                Some(d.get_ref().clone())
            } else {
                self.problem(
                    d,
                    format!(
                        "{context}: dev {} is not an interface of this guest in the file",
                        d.get_ref()
                    ),
                );
                None
            }
        });
        let metric = rr
            .metric
            .as_ref()
            .and_then(|m| match u32::try_from(*m.get_ref()) {
                Ok(metric) => Some(metric),
                Err(_) => {
                    self.problem(
                        m,
                        format!(
                            "{context}: metric {} must be between 0 and 4294967295",
                            m.get_ref()
                        ),
                    );
                    None
                }
            });
        if rr.via.is_none() && rr.dev.is_none() {
            self.problem(
                &rr.to,
                format!("{context}: needs via (a gateway) or dev (an interface)"),
            );
        }
        if let (Some(to), Some(via)) = (to, via) {
            if to.is_ipv4() != via.is_ipv4() {
                self.problem(
                    &rr.to,
                    format!("{context}: destination and via {via} are of different IP versions"),
                );
            } else {
                let candidates: Vec<&Interface> = interfaces
                    .iter()
                    .filter(|i| dev.as_ref().is_none_or(|d| *d == i.name))
                    .collect();
                let reachable = candidates
                    .iter()
                    .any(|i| i.addresses.iter().any(|a| a.contains(via)));
                if !reachable {
                    let wher = dev
                        .as_ref()
                        .map_or("any interface of this guest".to_string(), |d| {
                            format!("interface {d}")
                        });
                    self.problem(
                        rr.via.as_ref().unwrap_or(&rr.to),
                        format!("{context}: via {via} is not in any subnet of {wher}"),
                    );
                }
            }
        }
        if self.problems.len() != before {
            return None;
        }
        Some(GuestRoute {
            to: to?,
            via,
            dev,
            metric,
        })
    }

    fn addresses(&mut self, raw: &[Spanned<String>], context: &str) -> Vec<IpNetwork> {
        let mut out: Vec<IpNetwork> = Vec::new();
        for text in raw {
            if let Some(net) = self.ok(text, context, parse_cidr(text.get_ref())) {
                if out.contains(&net) {
                    self.problem(text, format!("{context}: address {net} is listed twice"));
                } else {
                    out.push(net);
                }
            }
        }
        out
    }

    fn gateway(
        &mut self,
        g: &Spanned<String>,
        key: &str,
        context: &str,
        addresses: &[IpNetwork],
    ) -> Option<IpAddr> {
        let Ok(ip) = g.get_ref().parse::<IpAddr>() else {
            self.problem(
                g,
                format!("{context}: {key} {:?} is not an IP address", g.get_ref()),
            );
            return None;
        };
        if !addresses.iter().any(|a| a.contains(ip)) {
            let subnets: Vec<String> = addresses
                .iter()
                .filter(|a| a.is_ipv4() == ip.is_ipv4())
                .map(|a| a.to_string())
                .collect();
            let have = if subnets.is_empty() {
                "the interface has no address of that IP version".to_string()
            } else {
                format!("the interface has {}", subnets.join(", "))
            };
            self.problem(
                g,
                format!("{context}: {key} {ip} is not in any of the interface's subnets ({have})"),
            );
            return None;
        }
        Some(ip)
    }

    fn mtu(&mut self, m: &Spanned<i64>, context: &str) -> Option<u32> {
        match u32::try_from(*m.get_ref()) {
            Ok(mtu) if (68..=65535).contains(&mtu) => Some(mtu),
            _ => {
                self.problem(
                    m,
                    format!(
                        "{context}: mtu {} must be between 68 and 65535",
                        m.get_ref()
                    ),
                );
                None
            }
        }
    }
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn valid_topology_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.chars().all(valid_name_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "lab"

[[bridge]]
name = "br-app"
addresses = ["10.10.0.1/24", "fd10::1/64"]
mtu = 1500

[[guest]]
name = "web1"
[[guest.interface]]
name = "eth1"
host = "br-app"
addresses = ["10.10.0.2/24", "fd10::2/64"]
gateway = "10.10.0.1"
gateway6 = "fd10::1"
mac = "U:web1"
mtu = 1400
[[guest.route]]
to = "10.20.0.0/16"
via = "10.10.0.254"
metric = 10

[[guest]]
name = "db1"
[[guest.interface]]
name = "eth1"
host = "eth0"
addresses = ["198.18.7.2/15"]
mode = "private"
vlan = 10
"#;

    fn parse_ok(text: &str) -> Topology {
        parse(text, "t.toml", "t").unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> String {
        match parse(text, "t.toml", "t") {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_the_example() {
        let t = parse_ok(EXAMPLE);
        assert_eq!(t.name, "lab");
        assert_eq!(t.bridges.len(), 1);
        assert_eq!(t.bridges[0].mtu, Some(1500));
        let web1 = t.guest("web1").unwrap();
        let eth1 = &web1.interfaces[0];
        assert_eq!(eth1.gateway, Some("10.10.0.1".parse().unwrap()));
        assert_eq!(eth1.mac, Some(MacAddr::from_seed("web1")));
        assert_eq!(eth1.gateway_routes().len(), 2);
        assert_eq!(
            web1.routes[0].to_route().to_string(),
            "10.20.0.0/16 via 10.10.0.254 metric 10"
        );
        let db1 = t.guest("db1").unwrap();
        assert_eq!(db1.interfaces[0].vlan, Some(10));
        assert_eq!(db1.interfaces[0].mode, Some(MacvlanMode::Private));
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/topology.toml");
        let t = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.name, "example");
        assert_eq!(t.guests.len(), 2);
        assert_eq!(t.guest("web1").unwrap().routes.len(), 1);
    }

    #[test]
    fn the_name_defaults_to_the_file_stem() {
        let t = parse("", "x/my lab.toml", "my lab").unwrap();
        assert_eq!(t.name, "my_lab");
        assert!(t.bridges.is_empty() && t.guests.is_empty());
    }

    #[test]
    fn a_typo_names_the_key_and_the_line() {
        let err = problems("[[bridge]]\nname = \"br0\"\nadresses = [\"10.0.0.1/24\"]\n");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("adresses"), "{err}");
        assert!(
            err.contains("addresses"),
            "{err}: should list the valid keys"
        );
        let err = problems("[[guest]]\nname = \"g\"\n[[guest.interface]]\nname = \"eth1\"\nhost = \"br0\"\ngw = \"10.0.0.1\"\n");
        assert!(err.contains("line 6") && err.contains("gw"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
name = "bad name!"
[[bridge]]
name = "br-sixteen-bytes"
addresses = ["10.0.0.300/24", "10.0.0.1"]
[[bridge]]
name = "br-sixteen-bytes"
mtu = 20
[[guest]]
name = "g1"
[[guest.interface]]
name = "eth1"
host = "br0"
addresses = ["10.1.0.2/24", "10.1.0.2/24"]
gateway = "10.9.0.1"
vlan = 0
mac = "01:00:00:00:00:01"
[[guest.interface]]
name = "eth2"
host = "eth0"
vlan = 4095
mode = "sideways"
[[guest.interface]]
name = "eth1"
host = "br0"
[[guest.route]]
to = "10.20.0.1/16"
via = "10.1.0.254"
[[guest.route]]
to = "10.30.0.0/16"
via = "10.99.0.1"
[[guest.route]]
to = "10.40.0.0/16"
[[guest.route]]
to = "10.50.0.0/16"
dev = "eth7"
"#;
        let err = problems(text);
        for needle in [
            "topology name \"bad name!\"",
            "line 4: bridge br-sixteen-bytes",
            "at most 15",
            "10.0.0.300/24",
            "needs a prefix length",
            "line 7: bridge br-sixteen-bytes is declared twice",
            "mtu 20",
            "address 10.1.0.2/24 is listed twice",
            "gateway 10.9.0.1 is not in any of the interface's subnets",
            "line 16: guest g1, interface eth1: invalid VLAN ID \"0\"",
            "invalid VLAN ID \"4095\"",
            "multicast",
            "macvlan mode",
            "guest g1, interface eth1 is declared twice",
            "has host bits set; did you mean 10.20.0.0/16",
            "via 10.99.0.1 is not in any subnet",
            "needs via (a gateway) or dev",
            "dev eth7 is not an interface",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn gateways_and_default_routes_do_not_fight() {
        let text = r#"
[[guest]]
name = "g1"
[[guest.interface]]
name = "eth1"
host = "br0"
addresses = ["10.1.0.2/24"]
gateway = "10.1.0.1"
[[guest.interface]]
name = "eth2"
host = "br1"
addresses = ["10.2.0.2/24", "fd02::2/64"]
gateway = "10.2.0.1"
gateway6 = "10.2.0.1"
[[guest.route]]
to = "default"
via = "10.1.0.254"
"#;
        let err = problems(text);
        assert!(
            err.contains("gateway is also given on interface eth1"),
            "{err}"
        );
        assert!(err.contains("gateway6 10.2.0.1 is IPv4"), "{err}");
        assert!(err.contains("already sets the default route"), "{err}");
        let bridge_mode = "[[bridge]]\nname = \"br0\"\n[[guest]]\nname = \"g\"\n[[guest.interface]]\nname = \"eth1\"\nhost = \"br0\"\nmode = \"vepa\"\n";
        assert!(problems(bridge_mode).contains("is a bridge"));
    }
}
