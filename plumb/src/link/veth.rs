//! Veth pairs, with the peer created directly in its target namespace: one
//! round trip, and its name never clashes with a link of this namespace.

use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::{validate_ifname, LinkOptions};
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
        validate_ifname(peer_name)?;
        // veth_open fails with ENOTCONN while the pair is being made, so the
        // peer is brought up afterwards.
        let peer_created = LinkOptions {
            up: false,
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
        if let Err(e) = self
            .finish_created(peer_name, peer_opts, peer_opts.up)
            .await
        {
            let _ = self.delete_link(name).await;
            return Err(e);
        }
        Ok(())
    }
}
