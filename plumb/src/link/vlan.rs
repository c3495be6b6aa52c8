//! 802.1Q VLAN sub-interfaces (needs the 8021q kernel module).

use rtnetlink::LinkVlan;

use super::LinkOptions;
use crate::error::{Error, Result};
use crate::handle::Netlink;

/// Checks a VLAN ID: 0 and 4095 are reserved by 802.1Q.
pub fn validate_vlan_id(id: u32) -> Result<u16> {
    if (1..=4094).contains(&id) {
        Ok(id as u16)
    } else {
        Err(Error::invalid(
            "VLAN ID",
            id.to_string(),
            "must be between 1 and 4094 (0 and 4095 are reserved by 802.1Q)",
        ))
    }
}

impl Netlink {
    /// Creates VLAN `id` on `lower` as link `name` (conventionally `lower.id`).
    pub async fn add_vlan(
        &self,
        name: &str,
        lower: &str,
        id: u32,
        opts: &LinkOptions,
    ) -> Result<()> {
        let id = validate_vlan_id(id)?;
        let lower = self.require_link(lower).await?;
        let builder = opts.apply(LinkVlan::new(name, lower.index, id));
        self.create_link("VLAN", name, opts, builder.build()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_vlan_ids_are_refused() {
        assert!(validate_vlan_id(0).is_err());
        assert!(validate_vlan_id(4095).is_err());
        assert!(validate_vlan_id(5000).is_err());
        assert_eq!(validate_vlan_id(1).unwrap(), 1);
        assert_eq!(validate_vlan_id(4094).unwrap(), 4094);
        let msg = validate_vlan_id(0).unwrap_err().to_string();
        assert!(msg.contains("reserved"), "{msg}");
    }
}
