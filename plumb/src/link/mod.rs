//! Links: inspect, change and delete any link; one file per kind that plumb creates.

mod bridge;
mod macvlan;
mod veth;
mod vlan;
mod vxlan;

pub use macvlan::MacvlanMode;
pub use vlan::validate_vlan_id;
pub use vxlan::VxlanSpec;

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoMacVlan, InfoVlan, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::handle::Netlink;
use crate::mac::MacAddr;
use crate::netns::Netns;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A link as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The kernel's interface index (ifindex), unique in its namespace.
    pub index: u32,
    /// The interface name (at most 15 bytes).
    pub name: String,
    /// "bridge", "veth", "macvlan", "vlan", "vxlan", …; None for plain devices.
    pub kind: Option<String>,
    /// The hardware address; None for links without one.
    pub mac: Option<MacAddr>,
    /// The MTU in bytes.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    /// The lower device of a macvlan or VLAN, or the peer index of a veth.
    pub parent: Option<u32>,
    /// True when `parent` lives in another namespace (a veth peer, a moved macvlan).
    pub parent_elsewhere: bool,
    /// The link's alias (IFLA_IFALIAS); plumb keeps its record there.
    pub alias: Option<String>,
    /// The VLAN id of a VLAN link.
    pub vlan_id: Option<u16>,
    /// The mode of a macvlan link.
    pub macvlan_mode: Option<MacvlanMode>,
    /// The VNI of a VXLAN link.
    pub vxlan_id: Option<u32>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            parent: None,
            parent_elsewhere: false,
            alias: None,
            vlan_id: None,
            macvlan_mode: None,
            vxlan_id: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(bytes) => link.mac = MacAddr::from_bytes(&bytes),
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::Link(index) => link.parent = Some(index),
                LinkAttribute::LinkNetNsId(_) => link.parent_elsewhere = true,
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
                LinkAttribute::LinkInfo(infos) => link.read_info(infos),
                _ => {}
            }
        }
        link
    }

    fn read_info(&mut self, infos: Vec<LinkInfo>) {
        for info in infos {
            match info {
                LinkInfo::Kind(kind) => self.kind = Some(kind.to_string()),
                LinkInfo::Data(InfoData::Vlan(items)) => {
                    for item in items {
                        if let InfoVlan::Id(id) = item {
                            self.vlan_id = Some(id);
                        }
                    }
                }
                LinkInfo::Data(InfoData::MacVlan(items)) => {
                    for item in items {
                        if let InfoMacVlan::Mode(mode) = item {
                            self.macvlan_mode = MacvlanMode::from_kernel(mode);
                        }
                    }
                }
                LinkInfo::Data(InfoData::Vxlan(items)) => {
                    for item in items {
                        if let InfoVxlan::Id(id) = item {
                            self.vxlan_id = Some(id);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// True when the link's kind is `kind` ("bridge", "veth", …).
    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// Changes to an existing link; fields left `None` stay as they are.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkChange {
    /// Some(true): bring it up; Some(false): take it down.
    pub up: Option<bool>,
    /// A new MTU in bytes.
    pub mtu: Option<u32>,
    /// A new hardware address.
    pub mac: Option<MacAddr>,
    /// A new name (at most 15 bytes).
    pub rename: Option<String>,
    /// Some(Some(i)) attaches to bridge i, Some(None) detaches.
    pub controller: Option<Option<u32>>,
    /// A new alias (IFLA_IFALIAS).
    pub alias: Option<String>,
    /// Some(false): no IPv6 link-local address on this link
    /// (IFLA_INET6_ADDR_GEN_MODE none); Some(true): the default (EUI-64).
    pub ipv6_link_local: Option<bool>,
    /// The link's group (IFLA_GROUP; 0 is the default group).
    pub group: Option<u32>,
    /// Hairpin mode of the bridge port the link already is (sent as the
    /// port's settings in the same request, which the kernel applies
    /// before the rest; not together with `controller`).
    pub hairpin: Option<bool>,
}

/// Checks a name the kernel would otherwise reject with a bare EINVAL.
pub fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("interface name", name, "must not be empty"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(Error::invalid(
            "interface name",
            name,
            format!(
                "is {} bytes long; Linux allows at most {MAX_IFNAME_LEN}",
                name.len()
            ),
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(Error::invalid(
            "interface name",
            name,
            "must not contain '/', ':' or white space",
        ));
    }
    Ok(())
}

impl Netlink {
    /// Every link in this namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let replies = self.dump(request, || self.target("list", "links")).await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(msg) => Some(Link::from_message(msg)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    /// One request for that name, not a dump of every link: a dump is
    /// interrupted (and retried) whenever links come and go meanwhile, which
    /// under many concurrent changes can go on for longer than the retries.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.link_message(name).await?.map(Link::from_message))
    }

    /// The kernel's message about link `name`, as it came.
    async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answer = self
            .request_one(RouteNetlinkMessage::GetLink(msg), || {
                self.target("find", format!("link {name}"))
            })
            .await;
        match answer {
            Ok(RouteNetlinkMessage::NewLink(msg)) => Ok(Some(msg)),
            Ok(other) => Err(Error::Other(format!(
                "find link {name} in namespace {}: unexpected answer {other:?}",
                self.netns().label()
            ))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, or an error naming it and this namespace.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| Error::NotFound(self.target("find", format!("link {name}"))))
    }

    /// Waits until link `name` is operationally up (carrier, and the kernel
    /// has set up its queues: frames sent before that are dropped), for at
    /// most `within`. False when it did not come up in time.
    pub async fn wait_running(&self, name: &str, within: std::time::Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let msg = self
                .link_message(name)
                .await?
                .ok_or_else(|| Error::NotFound(self.target("find", format!("link {name}"))))?;
            if msg.header.flags.contains(LinkFlags::Running) {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The link with this index, or None when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.index == index))
    }

    /// Deletes a link; a veth's peer goes with it.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let link = self.require_link(name).await?;
        let msg = LinkUnspec::new_with_index(link.index).build();
        self.request_ack(RouteNetlinkMessage::DelLink(msg), 0, || {
            self.target("delete", format!("link {name}"))
        })
        .await
    }

    /// Deletes every link in `group` at once (`ip link delete group N`), with
    /// their veth peers wherever they are. One request: the kernel's wait for
    /// an RCU barrier after unregistering devices (10–25 ms here) is paid once
    /// for all of them instead of once per link. A group with no links left is
    /// not an error.
    pub async fn delete_link_group(&self, group: u32) -> Result<()> {
        if group == 0 {
            return Err(Error::invalid(
                "link group",
                "0",
                "is every link's default group; refusing to delete it",
            ));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        match self
            .request_ack(RouteNetlinkMessage::DelLink(msg), 0, || {
                self.target("delete", format!("link group {group}"))
            })
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Applies `change` to the link called `name`. The kernel finds the link
    /// by its name: no look-up first (but for a rename).
    pub async fn set_link(&self, name: &str, change: &LinkChange) -> Result<()> {
        if change.rename.is_some() {
            let link = self.require_link(name).await?;
            return self.set_link_at(&link, change).await;
        }
        validate_ifname(name)?;
        self.change_link(0, name, change).await
    }

    /// Applies `change` to `link` as read before, by its index: no second
    /// look-up. (Reading a veth whose peer is in another namespace makes the
    /// kernel search every namespace id this one knows, so with a container
    /// namespace per link every look-up costs more the more containers there are.)
    pub async fn set_link_at(&self, link: &Link, change: &LinkChange) -> Result<()> {
        self.change_link(link.index, &link.name, change).await
    }

    /// The link with `index`, or when that is 0 the one called `name`.
    async fn change_link(&self, index: u32, name: &str, change: &LinkChange) -> Result<()> {
        if let Some(new_name) = &change.rename {
            validate_ifname(new_name)?;
        }
        if change.hairpin.is_some() && change.controller.is_some() {
            return Err(Error::invalid(
                "link change",
                name,
                "hairpin mode is a setting of the bridge port the link already is; plug it in first",
            ));
        }
        let what = describe_change(change);
        let target = || self.target(what.clone(), format!("link {name}"));
        // Port settings only travel in RTM_NEWLINK (on an existing link, a change).
        let message = match change.hairpin {
            Some(on) => RouteNetlinkMessage::NewLink(
                link_change(
                    addressed(
                        rtnetlink::LinkBridgePort::new(index).hairpin(on),
                        index,
                        name,
                    ),
                    change,
                )
                .build(),
            ),
            None => RouteNetlinkMessage::SetLink(
                link_change(
                    addressed(LinkUnspec::new_with_index(index), index, name),
                    change,
                )
                .build(),
            ),
        };
        self.request_ack(message, NLM_F_ACK, target).await
    }

    /// Brings link `name` up (IFF_UP). Errors with [`Error::NotFound`] when
    /// there is no such link.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        self.set_link(
            name,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
    }

    /// Moves a link into another namespace, keeping its name.
    pub async fn move_link(&self, name: &str, to: &Netns) -> Result<()> {
        let link = self.require_link(name).await?;
        let msg = LinkUnspec::new_with_index(link.index)
            .append_extra_attribute(LinkAttribute::NetNsFd(std::os::fd::AsRawFd::as_raw_fd(to)))
            .build();
        self.request_ack(RouteNetlinkMessage::SetLink(msg), 0, || {
            self.target(
                format!("move to namespace {}", to.label()),
                format!("link {name}"),
            )
        })
        .await
    }

    /// Creates a link from a finished message, then applies what the kernel
    /// ignores at creation (the alias). `kind` and `name` word the errors.
    pub(crate) async fn create_link(
        &self,
        kind: &str,
        name: &str,
        opts: &LinkOptions,
        msg: LinkMessage,
    ) -> Result<()> {
        validate_ifname(name)?;
        let flags = netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL;
        self.request_ack(RouteNetlinkMessage::NewLink(msg), flags, || {
            let mut target = self.target(format!("create {kind}"), format!("link {name}"));
            if let Some(ns) = &opts.netns {
                target.namespace = ns.label().to_string();
            }
            target
        })
        .await?;
        self.finish_created(name, opts, false).await
    }

    /// Sets the alias (and `up`, when `bring_up`) on a link just created here
    /// or in `opts.netns`; deletes the link if that fails, leaving nothing half-made.
    pub(crate) async fn finish_created(
        &self,
        name: &str,
        opts: &LinkOptions,
        bring_up: bool,
    ) -> Result<()> {
        if opts.alias.is_none() && !bring_up && !opts.no_ipv6_link_local {
            return Ok(());
        }
        let side = match &opts.netns {
            Some(ns) if !ns.is_same(self.netns()) => Netlink::open(ns).await?,
            _ => self.clone(),
        };
        // The address mode goes in the same request as `up`: the kernel
        // applies it before the link has a carrier, so no link-local address
        // is ever made.
        let change = LinkChange {
            alias: opts.alias.clone(),
            up: bring_up.then_some(true),
            ipv6_link_local: opts.no_ipv6_link_local.then_some(false),
            ..Default::default()
        };
        if let Err(e) = side.set_link(name, &change).await {
            let _ = side.delete_link(name).await;
            return Err(e);
        }
        Ok(())
    }
}

/// A message about the link with `index`, or when that is 0 (unknown) the
/// one called `name`: the kernel looks names up in its hash.
fn addressed<T>(builder: LinkMessageBuilder<T>, index: u32, name: &str) -> LinkMessageBuilder<T> {
    if index == 0 {
        builder.name(name)
    } else {
        builder
    }
}

/// `change` as attributes of a link message (the port settings excepted).
fn link_change<T>(
    mut builder: LinkMessageBuilder<T>,
    change: &LinkChange,
) -> LinkMessageBuilder<T> {
    match change.up {
        Some(true) => builder = builder.up(),
        Some(false) => builder = builder.down(),
        None => {}
    }
    if let Some(mtu) = change.mtu {
        builder = builder.append_extra_attribute(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = change.mac {
        builder = builder.append_extra_attribute(LinkAttribute::Address(mac.octets().to_vec()));
    }
    if let Some(new_name) = &change.rename {
        builder = builder.append_extra_attribute(LinkAttribute::IfName(new_name.clone()));
    }
    if let Some(controller) = change.controller {
        builder =
            builder.append_extra_attribute(LinkAttribute::Controller(controller.unwrap_or(0)));
    }
    if let Some(alias) = &change.alias {
        builder = builder.append_extra_attribute(LinkAttribute::IfAlias(alias.clone()));
    }
    if let Some(group) = change.group {
        builder = builder.append_extra_attribute(LinkAttribute::Group(group));
    }
    if let Some(link_local) = change.ipv6_link_local {
        let mode = if link_local {
            In6AddrGenMode::Eui64
        } else {
            In6AddrGenMode::None
        };
        builder =
            builder.append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(mode)],
            )]));
    }
    builder
}

fn describe_change(change: &LinkChange) -> String {
    let mut parts = Vec::new();
    if let Some(up) = change.up {
        parts.push(if up { "bring up" } else { "bring down" }.to_string());
    }
    if let Some(mtu) = change.mtu {
        parts.push(format!("set MTU {mtu} on"));
    }
    if let Some(mac) = change.mac {
        parts.push(format!("set MAC {mac} on"));
    }
    if let Some(name) = &change.rename {
        parts.push(format!("rename to {name}"));
    }
    if let Some(controller) = change.controller {
        parts.push(match controller {
            Some(_) => "attach to bridge".to_string(),
            None => "detach from bridge".to_string(),
        });
    }
    if change.alias.is_some() {
        parts.push("set alias of".to_string());
    }
    if let Some(group) = change.group {
        parts.push(format!("move to group {group}"));
    }
    if let Some(hairpin) = change.hairpin {
        parts.push(format!(
            "turn hairpin mode {} for",
            if hairpin { "on" } else { "off" }
        ));
    }
    if let Some(link_local) = change.ipv6_link_local {
        parts.push(format!(
            "turn IPv6 link-local addressing {} on",
            if link_local { "on" } else { "off" }
        ));
    }
    if parts.is_empty() {
        "change".to_string()
    } else {
        parts.join(", ")
    }
}

/// What every created link may be given besides its kind's own settings.
#[derive(Debug, Default, Clone)]
pub struct LinkOptions {
    /// The MTU in bytes; the kernel's default for the kind when None.
    pub mtu: Option<u32>,
    /// The hardware address; the kernel picks a random one when None.
    pub mac: Option<MacAddr>,
    /// Bring it up once made.
    pub up: bool,
    /// Free text kept by the kernel (IFLA_IFALIAS); plumb records what it made there.
    pub alias: Option<String>,
    /// Create the link directly in this namespace instead of the connection's.
    pub netns: Option<Netns>,
    /// No IPv6 link-local address (hence no duplicate address detection,
    /// router solicitations or multicast listener reports sent from it):
    /// for links of IPv4-only networks, where every such packet is flooded
    /// to every port of the bridge.
    pub no_ipv6_link_local: bool,
    /// Made a port of this bridge (by index) in the same request.
    pub controller: Option<u32>,
}

impl LinkOptions {
    pub(crate) fn apply<T>(&self, mut builder: LinkMessageBuilder<T>) -> LinkMessageBuilder<T> {
        if let Some(mtu) = self.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = self.mac {
            builder = builder.address(mac.octets().to_vec());
        }
        if self.up {
            builder = builder.up();
        }
        if let Some(bridge) = self.controller {
            builder = builder.append_extra_attribute(LinkAttribute::Controller(bridge));
        }
        // The alias is not applied at creation by the kernel: `create_link` sets it after.
        if let Some(netns) = &self.netns {
            builder = builder.setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(netns));
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_the_kernel_sees_them() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("exactly15bytes_").is_ok());
        let err = validate_ifname("sixteen_bytes_xx").unwrap_err().to_string();
        assert!(
            err.contains("16 bytes") && err.contains("at most 15"),
            "{err}"
        );
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("a b").is_err());
    }
}
