//! Veth pairs, with the peer created directly in its target namespace: one
//! round trip, and its name never clashes with a link of this namespace.

use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::{validate_ifname, Link, LinkChange, LinkOptions};
use crate::error::Result;
use crate::handle::Netlink;

impl Netlink {
    /// Creates veth `name` here (or in `opts.netns`) and its peer `peer_name`
    /// with `peer_opts` (typically in another namespace).
    pub async fn add_veth(
        &self,
        name: &str,
        opts: &LinkOptions,
        peer_name: &str,
        peer_opts: &LinkOptions,
    ) -> Result<()> {
        let peer_side = match &peer_opts.netns {
            Some(ns) if !ns.is_same(self.netns()) => Netlink::open(ns).await?,
            _ => self.clone(),
        };
        self.add_veth_beside(name, opts, &peer_side, peer_name, peer_opts)
            .await
            .map(drop)
    }

    /// Creates veth `name` here and its peer `peer_name` in the namespace of
    /// `peer_side`, a connection the caller has open there already (and goes
    /// on using: no second one is opened). `peer_opts.netns` is not looked
    /// at. Returns the peer as the kernel made it (its index and MAC), read
    /// before it was brought up. On failure nothing is left.
    pub async fn add_veth_beside(
        &self,
        name: &str,
        opts: &LinkOptions,
        peer_side: &Netlink,
        peer_name: &str,
        peer_opts: &LinkOptions,
    ) -> Result<Link> {
        validate_ifname(peer_name)?;
        // veth_open fails with ENOTCONN while the pair is being made, so the
        // peer is brought up afterwards.
        let peer_created = LinkOptions {
            up: false,
            netns: Some(peer_side.netns().clone()),
            ..peer_opts.clone()
        };
        let peer = peer_created
            .apply(LinkUnspec::new_with_name(peer_name))
            .build();
        let builder = opts
            .apply(LinkVeth::new(name, peer_name))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
        self.create_link("veth", name, opts, builder.build())
            .await?;
        // The kernel cannot open the peer during creation, nor set its alias.
        let finished = async {
            let link = peer_side.require_link(peer_name).await?;
            let change = LinkChange {
                alias: peer_opts.alias.clone(),
                up: peer_opts.up.then_some(true),
                // With `up`: applied before the link has a carrier, so no
                // link-local address is ever made.
                ipv6_link_local: peer_opts.no_ipv6_link_local.then_some(false),
                ..Default::default()
            };
            if change != LinkChange::default() {
                peer_side.set_link_at(&link, &change).await?;
            }
            Ok(link)
        };
        match finished.await {
            Ok(link) => Ok(link),
            Err(e) => {
                let _ = self.delete_link(name).await;
                Err(e)
            }
        }
    }
}
