//! Bridges: the software switch containers' veths plug into.

use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::LinkBridge;

use super::{Link, LinkOptions};
use crate::error::Result;
use crate::handle::Netlink;

impl Netlink {
    /// Creates a bridge. Forward delay is zero so that new ports pass traffic
    /// at once instead of after 15 s of STP listening.
    pub async fn add_bridge(&self, name: &str, opts: &LinkOptions) -> Result<()> {
        let builder = opts.apply(LinkBridge::new(name).forward_delay(0));
        let builder = if opts.up { builder } else { builder.down() };
        self.create_link("bridge", name, opts, builder.build())
            .await
    }

    /// Makes `port` a port of `bridge`.
    pub async fn attach_to_bridge(&self, port: &str, bridge: &str) -> Result<()> {
        let bridge = self.require_link(bridge).await?;
        self.set_link(
            port,
            &super::LinkChange {
                controller: Some(Some(bridge.index)),
                ..Default::default()
            },
        )
        .await
    }

    /// Turns IGMP/MLD snooping of a bridge on or off
    /// (`ip link set BRIDGE type bridge mcast_snooping 0|1`). Off, multicast
    /// is flooded to every port; on, the bridge also revisits the multicast
    /// state of every port whenever one port's carrier changes, which makes
    /// adding a port cost more the more ports there are.
    pub async fn set_bridge_multicast_snooping(&self, bridge: &str, on: bool) -> Result<()> {
        let link = self.require_link(bridge).await?;
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(on)])),
        ]));
        self.request_ack(RouteNetlinkMessage::NewLink(msg), 0, || {
            self.target(
                if on {
                    "turn multicast snooping on for"
                } else {
                    "turn multicast snooping off for"
                },
                format!("bridge {bridge}"),
            )
        })
        .await
    }

    /// Lets a bridge port send frames back out of the port they came in on,
    /// which a container reaching its own published port through the host
    /// address needs (`ip link set PORT type bridge_slave hairpin on`).
    pub async fn set_hairpin(&self, port: &str, on: bool) -> Result<()> {
        let link = self.require_link(port).await?;
        self.set_hairpin_at(&link, on).await
    }

    /// `set_hairpin` for a port already looked up.
    pub async fn set_hairpin_at(&self, link: &Link, on: bool) -> Result<()> {
        let change = super::LinkChange {
            hairpin: Some(on),
            ..Default::default()
        };
        self.set_link_at(link, &change).await
    }
}
