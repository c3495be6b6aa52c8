//! Published ports: a host address and port range forwarded to a container's
//! address and port range, parsed from the user's `-p` syntax.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(Error::invalid("protocol", s, "expected tcp, udp or sctp")),
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

    fn validate(&self) -> std::result::Result<(), String> {
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

/// What a user asks to publish, before the container's address is known:
/// `[hostip:]hostport[-end]:ctrport[-end][/proto]`, e.g. `8080:80`,
/// `127.0.0.1:8000-8002:80-82/udp`, `[fd00::1]:5353:53/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// The transport protocol; TCP when the spec names none.
    pub protocol: Protocol,
    /// `None`: every local address of the container address's family.
    pub host_ip: Option<IpAddr>,
    /// The host ports traffic arrives at.
    pub host_ports: PortRange,
    /// The container ports it goes to: as many as the host ports.
    pub container_ports: PortRange,
}

impl FromStr for PortSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<PortSpec> {
        let bad = |why: String| Error::invalid("port spec", text, why);
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
        let spec = PortSpec {
            protocol,
            // 0.0.0.0 and :: mean "every address", as with docker -p.
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_ports,
            container_ports,
        };
        spec.check_lengths().map_err(bad)?;
        Ok(spec)
    }
}

impl PortSpec {
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

impl fmt::Display for PortSpec {
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
        spec.parse::<PortSpec>()?.to_container(container_ip)
    }

    /// Checks what the kernel would reject or silently get wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Error::invalid("published port", self.to_string(), why);
        self.host_ports
            .validate()
            .map_err(|why| bad(format!("host port: {why}")))?;
        self.container_ports
            .validate()
            .map_err(|why| bad(format!("container port: {why}")))?;
        PortSpec {
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
pub(crate) fn validate_all(ports: &[PublishedPort]) -> Result<()> {
    ports.iter().try_for_each(PublishedPort::validate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_user_syntax() {
        let p = PublishedPort::parse("8080:80", ip("10.9.0.3")).unwrap();
        assert_eq!(p.protocol, Protocol::Tcp);
        assert_eq!(p.host_ip, None);
        assert_eq!(p.host_ports, PortRange::single(8080));
        assert_eq!(p.container_ports, PortRange::single(80));
        assert_eq!(p.to_string(), "*:8080->10.9.0.3:80/tcp");

        let p = PublishedPort::parse("198.18.0.1:8000-8002:80-82/UDP", ip("10.9.0.3")).unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.host_ip, Some(ip("198.18.0.1")));
        assert_eq!(
            p.host_ports,
            PortRange {
                start: 8000,
                end: 8002
            }
        );
        assert_eq!(p.to_string(), "198.18.0.1:8000-8002->10.9.0.3:80-82/udp");
        let forwards: Vec<(u16, u16)> = p
            .forwards()
            .map(|f| (f.host_port, f.container_port))
            .collect();
        assert_eq!(forwards, [(8000, 80), (8001, 81), (8002, 82)]);

        let p = PublishedPort::parse("[fd00::1]:5353:53/sctp", ip("fd00:9::3")).unwrap();
        assert_eq!(p.host_ip, Some(ip("fd00::1")));
        assert_eq!(p.protocol, Protocol::Sctp);
        assert_eq!(p.to_string(), "[fd00::1]:5353->[fd00:9::3]:53/sctp");

        // 0.0.0.0 means every address.
        let p = PublishedPort::parse("0.0.0.0:80:80", ip("10.9.0.3")).unwrap();
        assert_eq!(p.host_ip, None);
    }

    #[test]
    fn specs_print_as_they_parse() {
        for text in [
            "8080:80/tcp",
            "127.0.0.1:8000-8002:80-82/udp",
            "[fd00::1]:53:53/sctp",
        ] {
            let spec: PortSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.to_string().parse::<PortSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| s.parse::<PortSpec>().unwrap_err().to_string();
        assert!(
            err("8000-8002:80-81").contains("must be the same length"),
            "{}",
            err("8000-8002:80-81")
        );
        assert!(err("0:80").contains("port 0"), "{}", err("0:80"));
        assert!(
            err("8080:0").contains("container port: port 0"),
            "{}",
            err("8080:0")
        );
        assert!(
            err("8080:80/icmp").contains("unknown protocol \"icmp\""),
            "{}",
            err("8080:80/icmp")
        );
        assert!(
            err("8080").contains("expected [hostip:]"),
            "{}",
            err("8080")
        );
        assert!(
            err("70000:80").contains("not a port number"),
            "{}",
            err("70000:80")
        );
        assert!(
            err("8002-8000:80-82").contains("ends before it starts"),
            "{}",
            err("8002-8000:80-82")
        );
        assert!(
            err("fd00::1:80:80").contains("brackets"),
            "{}",
            err("fd00::1:80:80")
        );
        assert!(
            err("[fd00::1:80:80").contains("missing ']'"),
            "{}",
            err("[fd00::1:80:80")
        );
        assert!(
            err("300.1.1.1:80:80").contains("not an IP address"),
            "{}",
            err("300.1.1.1:80:80")
        );
        let e = PublishedPort::parse("[fd00::1]:80:80", ip("10.9.0.3"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different IP versions"), "{e}");
        assert!(e.starts_with("invalid published port"), "{e}");
    }

    #[test]
    fn struct_literals_are_validated_too() {
        let p = PublishedPort {
            protocol: Protocol::Tcp,
            host_ip: None,
            host_ports: PortRange {
                start: 8000,
                end: 8002,
            },
            container_ip: ip("10.9.0.3"),
            container_ports: PortRange::single(80),
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("must be the same length"), "{e}");
        assert!(validate_all(&[p]).is_err());
    }

    #[test]
    fn serde_round_trip() {
        let p = PublishedPort::parse("198.18.0.1:8000-8002:80-82/udp", ip("10.9.0.3")).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"protocol":"udp","host_ip":"198.18.0.1","host_ports":{"start":8000,"end":8002},"container_ip":"10.9.0.3","container_ports":{"start":80,"end":82}}"#
        );
        assert_eq!(serde_json::from_str::<PublishedPort>(&json).unwrap(), p);
        let any: PublishedPort = serde_json::from_str(
            r#"{"protocol":"sctp","host_ports":{"start":9,"end":9},"container_ip":"10.9.0.3","container_ports":{"start":9,"end":9}}"#,
        )
        .unwrap();
        assert_eq!(any.host_ip, None);
    }
}
