//! Port mappings: a host address and port range forwarded to a container's
//! port range. One type, [`PortMapping`], parsed once at each edge (the CNI
//! plugin's `portMappings`, the CLI's `-p`, the API's JSON) and carried typed
//! to the firewall's map element; [`PublishedPort`] is a mapping bound to a
//! container's address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A port mapping, protocol or range that cannot be published, refused
/// before anything is changed: what it is, as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct InvalidPort {
    /// What kind of value: "port mapping", "published port", "protocol".
    pub what: &'static str,
    /// The value as given (or as it prints).
    pub value: String,
    /// What is wrong with it, and what would be right.
    pub why: String,
}

impl InvalidPort {
    fn new(what: &'static str, value: impl Into<String>, why: impl Into<String>) -> InvalidPort {
        InvalidPort {
            what,
            value: value.into(),
            why: why.into(),
        }
    }
}

impl From<InvalidPort> for plumb::Error {
    fn from(e: InvalidPort) -> plumb::Error {
        plumb::Error::invalid(e.what, e.value, e.why)
    }
}

impl From<InvalidPort> for crate::Error {
    fn from(e: InvalidPort) -> crate::Error {
        crate::Error::InvalidInput(e.to_string())
    }
}

type Result<T, E = InvalidPort> = std::result::Result<T, E>;

/// The transport protocols a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Protocol {
    /// The name nft, iptables and users spell it with.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number, as the kernel keys maps with it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
            Protocol::Sctp => libc::IPPROTO_SCTP as u8,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = InvalidPort;
    fn from_str(s: &str) -> Result<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(InvalidPort::new("protocol", s, "expected tcp, udp or sctp")),
        }
    }
}

/// An inclusive range of ports, `start..=end`; a single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// The first port.
    pub start: u16,
    /// The last port (equal to `start` for one port).
    pub end: u16,
}

impl PortRange {
    /// The range of one port.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            start: port,
            end: port,
        }
    }

    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never true for a valid range; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }

    /// Checks the range: no port 0, no end before the start.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.start == 0 {
            return Err("port 0 cannot be published".into());
        }
        if self.end < self.start {
            return Err(format!(
                "range {}-{} ends before it starts",
                self.start, self.end
            ));
        }
        Ok(())
    }

    /// Reads `80` or `8000-8002`.
    fn parse(text: &str) -> std::result::Result<PortRange, String> {
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number (1-65535)"))
        };
        let range = match text.split_once('-') {
            Some((start, end)) => PortRange {
                start: port(start)?,
                end: port(end)?,
            },
            None => PortRange::single(port(text)?),
        };
        range.validate()?;
        Ok(range)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// What a user asks to publish, before the container's address is known.
/// As text (the CLI's `-p`, and the API's older string form):
/// `[hostip:]hostport[-end]:ctrport[-end][/proto]`, e.g. `8080:80`,
/// `127.0.0.1:8000-8002:80-82/udp`, `[fd00::1]:5353:53/udp`. As JSON: an
/// object `{"protocol", "host_ip"?, "host_ports": {"start", "end"},
/// "container_ports": {…}}`, or that text (what clients sent before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "MappingObject")]
pub struct PortMapping {
    /// The transport protocol; TCP when the spec names none.
    pub protocol: Protocol,
    /// `None`: every local address of the container address's family.
    pub host_ip: Option<IpAddr>,
    /// The host ports traffic arrives at.
    pub host_ports: PortRange,
    /// The container ports it goes to: as many as the host ports.
    pub container_ports: PortRange,
}

impl FromStr for PortMapping {
    type Err = InvalidPort;

    fn from_str(text: &str) -> Result<PortMapping> {
        let bad = |why: String| InvalidPort::new("port mapping", text, why);
        let syntax = "expected [hostip:]hostport[-end]:containerport[-end][/tcp|udp|sctp]";
        let (mapping, protocol) = match text.rsplit_once('/') {
            Some((mapping, proto)) => (
                mapping,
                proto.parse::<Protocol>().map_err(|_| {
                    bad(format!(
                        "unknown protocol {proto:?}: expected tcp, udp or sctp"
                    ))
                })?,
            ),
            None => (text, Protocol::Tcp),
        };
        // The container part follows the last colon; an IPv6 host address sits in brackets.
        let (front, container) = mapping
            .rsplit_once(':')
            .ok_or_else(|| bad(syntax.to_string()))?;
        let (host_ip, host) = if let Some(rest) = front.strip_prefix('[') {
            let (ip, rest) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 host address".into()))?;
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| bad(format!("expected ':' and a host port after [{ip}]")))?;
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| bad(format!("{ip:?} is not an IPv6 address")))?;
            (Some(IpAddr::V6(ip)), port)
        } else {
            match front.rsplit_once(':') {
                Some((ip, port)) => {
                    if ip.contains(':') {
                        return Err(bad(
                            "put an IPv6 host address in brackets: [fd00::1]:8080:80".into(),
                        ));
                    }
                    let ip: std::net::Ipv4Addr = ip
                        .parse()
                        .map_err(|_| bad(format!("{ip:?} is not an IP address")))?;
                    (Some(IpAddr::V4(ip)), port)
                }
                None => (None, front),
            }
        };
        let host_ports = PortRange::parse(host).map_err(|why| bad(format!("host port: {why}")))?;
        let container_ports =
            PortRange::parse(container).map_err(|why| bad(format!("container port: {why}")))?;
        PortMapping::new(protocol, host_ip, host_ports, container_ports).map_err(|e| bad(e.why))
    }
}

impl PortMapping {
    /// A checked mapping: valid ranges of equal length. An unspecified host
    /// address (0.0.0.0, ::) means every address, as with `docker -p`.
    pub fn new(
        protocol: Protocol,
        host_ip: Option<IpAddr>,
        host_ports: PortRange,
        container_ports: PortRange,
    ) -> Result<PortMapping> {
        let mapping = PortMapping {
            protocol,
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_ports,
            container_ports,
        };
        let bad = |why: String| InvalidPort::new("port mapping", mapping.to_string(), why);
        host_ports
            .validate()
            .map_err(|why| bad(format!("host port: {why}")))?;
        container_ports
            .validate()
            .map_err(|why| bad(format!("container port: {why}")))?;
        mapping.check_lengths().map_err(bad)?;
        Ok(mapping)
    }

    fn check_lengths(&self) -> std::result::Result<(), String> {
        if self.host_ports.len() != self.container_ports.len() {
            return Err(format!(
                "host range {} has {} ports but container range {} has {}; they must be the same length",
                self.host_ports,
                self.host_ports.len(),
                self.container_ports,
                self.container_ports.len()
            ));
        }
        Ok(())
    }

    /// Binds the spec to the container's address.
    pub fn to_container(&self, container_ip: IpAddr) -> Result<PublishedPort> {
        let port = PublishedPort {
            protocol: self.protocol,
            host_ip: self.host_ip,
            host_ports: self.host_ports,
            container_ip,
            container_ports: self.container_ports,
        };
        port.validate()?;
        Ok(port)
    }
}

/// The object form of a [`PortMapping`] in JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingObject {
    #[serde(default = "tcp")]
    protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_ip: Option<IpAddr>,
    host_ports: PortRange,
    container_ports: PortRange,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl From<PortMapping> for MappingObject {
    fn from(m: PortMapping) -> MappingObject {
        MappingObject {
            protocol: m.protocol,
            host_ip: m.host_ip,
            host_ports: m.host_ports,
            container_ports: m.container_ports,
        }
    }
}

/// Reads either JSON form and checks it as the text form is checked.
impl TryFrom<serde_json::Value> for PortMapping {
    type Error = InvalidPort;

    fn try_from(value: serde_json::Value) -> Result<PortMapping> {
        match value {
            serde_json::Value::String(text) => text.parse(),
            value @ serde_json::Value::Object(_) => {
                let shown = value.to_string();
                let o: MappingObject = serde_json::from_value(value).map_err(|e| {
                    InvalidPort::new(
                        "port mapping",
                        &shown,
                        format!("{e}; expected {{\"protocol\": \"tcp\"|\"udp\"|\"sctp\", \"host_ip\"?: address, \"host_ports\": {{\"start\": N, \"end\": N}}, \"container_ports\": {{…}}}} or \"[hostip:]hostport:containerport[/proto]\""),
                    )
                })?;
                PortMapping::new(o.protocol, o.host_ip, o.host_ports, o.container_ports)
            }
            other => Err(InvalidPort::new(
                "port mapping",
                other.to_string(),
                "expected an object or a \"[hostip:]hostport:containerport[/proto]\" string",
            )),
        }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_ports, self.container_ports, self.protocol
        )
    }
}

/// A published port: traffic to `host_ip:host_ports` (any local address of
/// the container's family when `host_ip` is `None`) goes to
/// `container_ip:container_ports`, port by port (8000→80, 8001→81, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The transport protocol.
    pub protocol: Protocol,
    /// The host address traffic must arrive at; `None`: any of the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// The host ports traffic arrives at.
    pub host_ports: PortRange,
    /// The container's address.
    pub container_ip: IpAddr,
    /// The container ports it goes to, as many as the host ports.
    pub container_ports: PortRange,
}

/// One host port forwarded to one container port: what a range expands to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortForward {
    /// The transport protocol.
    pub protocol: Protocol,
    /// The host address traffic must arrive at; `None`: any of the family.
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The container's address.
    pub container_ip: IpAddr,
    /// The container port.
    pub container_port: u16,
}

impl PublishedPort {
    /// Parses the user's syntax and binds it to `container_ip`.
    pub fn parse(spec: &str, container_ip: IpAddr) -> Result<PublishedPort> {
        spec.parse::<PortMapping>()?.to_container(container_ip)
    }

    /// Checks what the kernel would reject or silently get wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| InvalidPort::new("published port", self.to_string(), why);
        self.host_ports
            .validate()
            .map_err(|why| bad(format!("host port: {why}")))?;
        self.container_ports
            .validate()
            .map_err(|why| bad(format!("container port: {why}")))?;
        PortMapping {
            protocol: self.protocol,
            host_ip: self.host_ip,
            host_ports: self.host_ports,
            container_ports: self.container_ports,
        }
        .check_lengths()
        .map_err(bad)?;
        if let Some(host_ip) = self.host_ip {
            if host_ip.is_ipv4() != self.container_ip.is_ipv4() {
                return Err(bad(format!(
                    "host address {host_ip} and container address {} are of different IP versions",
                    self.container_ip
                )));
            }
        }
        if self.container_ip.is_unspecified() {
            return Err(bad("the container address must not be unspecified".into()));
        }
        Ok(())
    }

    /// True when the container's address, and so the rule's family, is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.container_ip.is_ipv6()
    }

    /// True when both would claim one host port: same protocol and family,
    /// overlapping host ports, and the same host address or either on all.
    pub fn clashes_with(&self, other: &PublishedPort) -> bool {
        self.protocol == other.protocol
            && self.is_ipv6() == other.is_ipv6()
            && self.host_ports.start <= other.host_ports.end
            && other.host_ports.start <= self.host_ports.end
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// The port-by-port forwards this publication stands for.
    pub fn forwards(&self) -> impl Iterator<Item = PortForward> + '_ {
        (0..self.host_ports.len()).map(move |i| {
            let i = i as u16;
            PortForward {
                protocol: self.protocol,
                host_ip: self.host_ip.filter(|ip| !ip.is_unspecified()),
                host_port: self.host_ports.start + i,
                container_ip: self.container_ip,
                container_port: self.container_ports.start + i,
            }
        })
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => f.write_str("*:")?,
        }
        match self.container_ip {
            IpAddr::V6(ip) => write!(
                f,
                "{}->[{ip}]:{}/{}",
                self.host_ports, self.container_ports, self.protocol
            ),
            IpAddr::V4(ip) => write!(
                f,
                "{}->{ip}:{}/{}",
                self.host_ports, self.container_ports, self.protocol
            ),
        }
    }
}

/// Checks every port before any backend touches the kernel.
pub fn validate_all(ports: &[PublishedPort]) -> Result<()> {
    ports.iter().try_for_each(PublishedPort::validate)
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
