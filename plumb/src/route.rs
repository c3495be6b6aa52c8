//! Routes: default, via a gateway, on-link, with a metric, in any table.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::handle::Netlink;

/// A route as users think of it. `destination: None` is the default route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Route {
    /// The destination prefix; None for the default route.
    pub destination: Option<IpNetwork>,
    /// The next hop; None for a route straight out of `dev`.
    pub gateway: Option<IpAddr>,
    /// Output link name.
    pub dev: Option<String>,
    /// The route's priority (lower wins); the kernel's default when None.
    pub metric: Option<u32>,
    /// Treat the gateway as directly reachable on `dev` even without a matching subnet.
    pub onlink: bool,
    /// Routing table; main (254) when None.
    pub table: Option<u32>,
    /// Address family of a default route; taken from gateway or destination otherwise.
    pub ipv6: bool,
}

impl Route {
    /// True for an IPv6 route: read from the destination or gateway, else from `ipv6`.
    pub fn is_ipv6(&self) -> bool {
        match (self.destination, self.gateway) {
            (Some(d), _) => d.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => self.ipv6,
        }
    }

    /// Checks what the kernel would reject with a bare EINVAL.
    pub fn validate(&self) -> Result<()> {
        if let (Some(d), Some(g)) = (self.destination, self.gateway) {
            if d.is_ipv4() != g.is_ipv4() {
                return Err(Error::invalid(
                    "route",
                    self.to_string(),
                    "destination and gateway are of different IP versions",
                ));
            }
        }
        if self.gateway.is_none() && self.dev.is_none() {
            return Err(Error::invalid(
                "route",
                self.to_string(),
                "needs a gateway (via) or an output link (dev)",
            ));
        }
        if self.onlink && (self.gateway.is_none() || self.dev.is_none()) {
            return Err(Error::invalid(
                "route",
                self.to_string(),
                "onlink needs both a gateway and a dev",
            ));
        }
        Ok(())
    }

    /// Parses `ip route`-style words: `[add|del|replace] DEST [via GW] [dev IF]
    /// [metric N] [onlink] [table N]`. Returns the verb and the route.
    pub fn parse_ip_route_args(args: &[String]) -> Result<(RouteVerb, Route)> {
        let joined = args.join(" ");
        let bad = |why: &str| Error::invalid("route", joined.clone(), why);
        let mut words = args.iter().map(String::as_str).peekable();
        let verb = match words.peek() {
            Some(&"add") => RouteVerb::Add,
            Some(&"del") | Some(&"delete") => RouteVerb::Delete,
            Some(&"replace") => RouteVerb::Replace,
            Some(&"show") | Some(&"list") => RouteVerb::Show,
            _ => RouteVerb::Add,
        };
        if matches!(
            words.peek(),
            Some(&("add" | "del" | "delete" | "replace" | "show" | "list"))
        ) {
            words.next();
        }
        let mut route = Route::default();
        let mut have_destination = false;
        while let Some(word) = words.next() {
            let mut value = |name: &str| {
                words
                    .next()
                    .ok_or_else(|| bad(&format!("{name} needs a value")))
            };
            match word {
                "via" => {
                    let gw = value("via")?;
                    route.gateway = Some(
                        gw.parse()
                            .map_err(|_| bad(&format!("{gw} is not an IP address")))?,
                    );
                }
                "dev" => {
                    let dev = value("dev")?;
                    crate::link::validate_ifname(dev)?;
                    route.dev = Some(dev.to_string());
                }
                "metric" | "preference" | "priority" => {
                    let m = value(word)?;
                    route.metric = Some(
                        m.parse()
                            .map_err(|_| bad(&format!("metric {m} is not a number")))?,
                    );
                }
                "table" => {
                    let t = value("table")?;
                    route.table = Some(match t {
                        "main" => 254,
                        "local" => 255,
                        n => n
                            .parse()
                            .map_err(|_| bad(&format!("table {n} is not a number")))?,
                    });
                }
                "onlink" => route.onlink = true,
                "-6" => route.ipv6 = true,
                "default" if !have_destination => have_destination = true,
                dest if !have_destination => {
                    route.destination = Some(parse_destination(dest).map_err(|e| bad(&e))?);
                    have_destination = true;
                }
                other => return Err(bad(&format!("unknown word {other:?}"))),
            }
        }
        if !have_destination && verb != RouteVerb::Show {
            return Err(bad("needs a destination (a prefix or 'default')"));
        }
        Ok((verb, route))
    }
}

fn parse_destination(text: &str) -> std::result::Result<IpNetwork, String> {
    if text.contains('/') {
        let net: IpNetwork = text.parse().map_err(|e| format!("{text}: {e}"))?;
        // The kernel insists on the network address; say so instead of EINVAL.
        if net.network() != net.ip() {
            return Err(format!(
                "{text} has host bits set; did you mean {}/{}?",
                net.network(),
                net.prefix()
            ));
        }
        Ok(net)
    } else {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("{text} is not a prefix"))?;
        Ok(IpNetwork::from(ip))
    }
}

/// The verb of an `ip route` command line, as the plumb CLI takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteVerb {
    /// `add`: fails when the route exists.
    Add,
    /// `del`: fails when it does not.
    Delete,
    /// `replace`: adds or overwrites.
    Replace,
    /// `show`: lists routes.
    Show,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.destination {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(t) = self.table {
            write!(f, " table {t}")?;
        }
        Ok(())
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

impl Netlink {
    async fn route_message(
        &self,
        route: &Route,
        dev: Option<&crate::Link>,
    ) -> Result<RouteMessage> {
        route.validate()?;
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = if route.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        h.protocol = RouteProtocol::Static;
        h.kind = RouteType::Unicast;
        h.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        let table = route.table.unwrap_or(RouteHeader::RT_TABLE_MAIN as u32);
        h.table = if table < 256 { table as u8 } else { 0 };
        if table >= 256 {
            msg.attributes.push(RouteAttribute::Table(table));
        }
        if route.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        if let Some(dest) = route.destination {
            msg.header.destination_prefix_length = dest.prefix();
            msg.attributes
                .push(RouteAttribute::Destination(route_address(dest.ip())));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(link) = dev {
            msg.attributes.push(RouteAttribute::Oif(link.index));
        } else if let Some(dev) = &route.dev {
            let link = self.require_link(dev).await?;
            msg.attributes.push(RouteAttribute::Oif(link.index));
        }
        if let Some(metric) = route.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        Ok(msg)
    }

    /// Adds `route`; errors with [`Error::AlreadyExists`] when the same route
    /// is there, [`Error::NotFound`] when its `dev` is missing.
    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let msg = self.route_message(route, None).await?;
        self.add_route_message(route, msg).await
    }

    /// [`Netlink::add_route`] out of `dev` as read before (`route.dev` is
    /// only named in errors): no look-up.
    pub async fn add_route_at(&self, route: &Route, dev: &crate::Link) -> Result<()> {
        let msg = self.route_message(route, Some(dev)).await?;
        self.add_route_message(route, msg).await
    }

    async fn add_route_message(&self, route: &Route, msg: RouteMessage) -> Result<()> {
        self.request_ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || self.target("add", format!("route {route}")),
        )
        .await
    }

    /// Adds `route`, or replaces the one with its destination, table and metric.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        let msg = self.route_message(route, None).await?;
        self.request_ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || self.target("replace", format!("route {route}")),
        )
        .await
    }

    /// Deletes `route`; errors with [`Error::NotFound`] when it is not there.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        let mut msg = self.route_message(route, None).await?;
        // Deleting matches on what is given; scope must not narrow the match.
        msg.header.scope = RouteScope::NoWhere;
        self.request_ack(RouteNetlinkMessage::DelRoute(msg), 0, || {
            self.target("delete", format!("route {route}"))
        })
        .await
    }

    /// Unicast routes of the main table (or all tables with `all_tables`), of one family.
    pub async fn routes(&self, ipv6: bool, all_tables: bool) -> Result<Vec<Route>> {
        let mut request = RouteMessage::default();
        request.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(request), || {
                self.target("list", "routes")
            })
            .await?;
        let links = self.links().await?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            if msg.header.kind != RouteType::Unicast {
                continue;
            }
            let mut route = Route {
                ipv6,
                onlink: msg.header.flags.contains(RouteFlags::Onlink),
                ..Default::default()
            };
            let mut table = msg.header.table as u32;
            let mut destination = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                        destination = Some(IpAddr::V4(*a))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                        destination = Some(IpAddr::V6(*a))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => {
                        route.gateway = Some(IpAddr::V4(*a))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => {
                        route.gateway = Some(IpAddr::V6(*a))
                    }
                    RouteAttribute::Oif(index) => {
                        route.dev = links
                            .iter()
                            .find(|l| l.index == *index)
                            .map(|l| l.name.clone())
                    }
                    RouteAttribute::Priority(p) => route.metric = Some(*p),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if !all_tables && table != RouteHeader::RT_TABLE_MAIN as u32 {
                continue;
            }
            route.table = (table != RouteHeader::RT_TABLE_MAIN as u32).then_some(table);
            route.destination = destination
                .and_then(|d| IpNetwork::new(d, msg.header.destination_prefix_length).ok());
            out.push(route);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_ip_route_words() {
        let (verb, r) =
            Route::parse_ip_route_args(&words("add 10.1.0.0/16 via 10.0.0.1 dev eth1 metric 50"))
                .unwrap();
        assert_eq!(verb, RouteVerb::Add);
        assert_eq!(r.to_string(), "10.1.0.0/16 via 10.0.0.1 dev eth1 metric 50");
        let (_, r) = Route::parse_ip_route_args(&words("default via fd00::1")).unwrap();
        assert!(r.is_ipv6() && r.destination.is_none());
        let (verb, r) =
            Route::parse_ip_route_args(&words("del default via 192.0.2.1 dev eth0 onlink"))
                .unwrap();
        assert_eq!(verb, RouteVerb::Delete);
        assert!(r.onlink);
    }

    #[test]
    fn refuses_bad_routes_with_reasons() {
        let err = Route::parse_ip_route_args(&words("add 10.1.0.1/16 via 10.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("host bits"), "{err}");
        assert!(Route::parse_ip_route_args(&words("add 10.1.0.0/16 via")).is_err());
        assert!(Route::parse_ip_route_args(&words("add 10.1.0.0/16 bogus 1")).is_err());
        let (_, r) = Route::parse_ip_route_args(&words("add 10.1.0.0/16 via fd00::1")).unwrap();
        assert!(r.validate().is_err());
        let (_, r) = Route::parse_ip_route_args(&words("add 10.1.0.0/16")).unwrap();
        assert!(r.validate().is_err());
    }
}
