//! Bridges: the software switch containers' veths plug into.

use rtnetlink::LinkBridge;

use super::LinkOptions;
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
}
