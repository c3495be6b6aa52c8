//! GC: drop everything that belongs to no valid attachment, carrying on past
//! errors; forwarded to a delegated IPAM plugin too.

use super::{combine, Invocation};
use crate::backend::Backend;
use crate::error::CniError;

pub fn run(inv: &Invocation, backend: &dyn Backend) -> Result<(), CniError> {
    let valid = inv.conf.valid_attachments.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let removed = backend.gc(&inv.conf, &valid).unwrap_or_else(|e| {
        errors.push(e.context("GC"));
        Vec::new()
    });
    match inv.ipam_delegate() {
        Ok(Some(ipam)) => {
            // A delegate that predates GC (spec 1.1.0) still releases the
            // addresses of the attachments removed above on DEL.
            for attachment in &removed {
                if let Err(e) = ipam.del_attachment(&attachment.container_id, &attachment.ifname) {
                    errors.push(e);
                }
            }
            if let Err(e) = ipam.gc() {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.context("GC: IPAM")),
    }
    combine(errors)
}
