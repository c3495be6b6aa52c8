//! Macvlan links: a container gets its own MAC on a host's physical link.

use netlink_packet_route::link::MacVlanMode;
use rtnetlink::LinkMacVlan;
use serde::{Deserialize, Serialize};

use super::LinkOptions;
use crate::error::{Error, Result};
use crate::handle::Netlink;

/// How macvlans on one lower link reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// Macvlans on the same lower link talk directly (pipework's default).
    #[default]
    Bridge,
    /// No traffic between macvlans of one lower link.
    Private,
    /// Traffic between macvlans goes out to the switch and back (802.1Qbg).
    Vepa,
    /// One macvlan takes over the lower link (and its MAC).
    Passthru,
}

impl MacvlanMode {
    pub(crate) fn to_kernel(self) -> MacVlanMode {
        match self {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    pub(crate) fn from_kernel(mode: MacVlanMode) -> Option<MacvlanMode> {
        match mode {
            MacVlanMode::Bridge => Some(MacvlanMode::Bridge),
            MacVlanMode::Private => Some(MacvlanMode::Private),
            MacVlanMode::Vepa => Some(MacvlanMode::Vepa),
            MacVlanMode::Passthrough => Some(MacvlanMode::Passthru),
            _ => None,
        }
    }
}

impl std::str::FromStr for MacvlanMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bridge" => Ok(MacvlanMode::Bridge),
            "private" => Ok(MacvlanMode::Private),
            "vepa" => Ok(MacvlanMode::Vepa),
            "passthru" | "passthrough" => Ok(MacvlanMode::Passthru),
            _ => Err(Error::invalid(
                "macvlan mode",
                s,
                "expected bridge, private, vepa or passthru",
            )),
        }
    }
}

impl std::fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        })
    }
}

impl Netlink {
    /// Creates macvlan `name` on lower link `lower` of this namespace, placed in
    /// `opts.netns` when given.
    pub async fn add_macvlan(
        &self,
        name: &str,
        lower: &str,
        mode: MacvlanMode,
        opts: &LinkOptions,
    ) -> Result<()> {
        let lower = self.require_link(lower).await?;
        let builder = opts.apply(LinkMacVlan::new(name, lower.index, mode.to_kernel()));
        self.create_link("macvlan", name, opts, builder.build())
            .await
    }
}
