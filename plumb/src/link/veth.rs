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
        // The kernel applies the peer's header flags too, so `up` works for both ends.
        let peer = peer_opts
            .apply(LinkUnspec::new_with_name(peer_name))
            .build();
        let builder = opts
            .apply(LinkVeth::new(name, peer_name))
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
        self.create_link("veth", name, opts.netns.as_ref(), builder.build())
            .await
    }
}
