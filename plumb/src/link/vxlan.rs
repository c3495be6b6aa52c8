//! VXLAN tunnels: Ethernet over UDP between hosts.

use std::net::IpAddr;

use rtnetlink::LinkVxlan;

use super::LinkOptions;
use crate::error::{Error, Result};
use crate::handle::Netlink;

/// The settings of a VXLAN link beyond the common ones.
#[derive(Debug, Clone, Default)]
pub struct VxlanSpec {
    /// VXLAN network identifier, 0..2^24.
    pub vni: u32,
    /// Underlay link to send through.
    pub underlay: Option<String>,
    /// Local underlay address.
    pub local: Option<IpAddr>,
    /// Remote endpoint for point-to-point tunnels.
    pub remote: Option<IpAddr>,
    /// UDP destination port; 4789 (IANA) when not given.
    pub port: Option<u16>,
    /// Learn remote MACs from received packets.
    pub learning: bool,
}

impl Netlink {
    /// Creates VXLAN link `name` as `spec` says. Errors when the name is taken
    /// or the kernel lacks the vxlan module ([`Error::Unsupported`]).
    pub async fn add_vxlan(&self, name: &str, spec: &VxlanSpec, opts: &LinkOptions) -> Result<()> {
        if spec.vni >= 1 << 24 {
            return Err(Error::invalid(
                "VXLAN network identifier",
                spec.vni.to_string(),
                "must be below 16777216 (24 bits)",
            ));
        }
        let mut builder = LinkVxlan::new(name, spec.vni)
            .port(spec.port.unwrap_or(4789))
            .learning(spec.learning);
        if let Some(underlay) = &spec.underlay {
            builder = builder.dev(self.require_link(underlay).await?.index);
        }
        builder = match spec.local {
            Some(IpAddr::V4(a)) => builder.local(a),
            Some(IpAddr::V6(a)) => builder.local6(a),
            None => builder,
        };
        builder = match spec.remote {
            Some(IpAddr::V4(a)) => builder.remote(a),
            Some(IpAddr::V6(a)) => builder.remote6(a),
            None => builder,
        };
        self.create_link("VXLAN", name, opts, opts.apply(builder).build())
            .await
    }
}
