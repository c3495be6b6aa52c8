//! GC: drop everything that belongs to no valid attachment, carrying on past
//! errors; forwarded to a delegated IPAM plugin too.

use super::{combine, Invocation};
use crate::backend::Backend;
use crate::error::CniError;

pub fn run(inv: &Invocation, backend: &dyn Backend) -> Result<(), CniError> {
    let valid = inv.conf.valid_attachments.clone().unwrap_or_default();
    let mut errors = Vec::new();
    if let Err(e) = backend.gc(&inv.conf, &valid) {
        errors.push(e.context("GC"));
    }
    match inv.ipam_delegate() {
        Ok(Some(ipam)) => {
            if let Err(e) = ipam.gc() {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e.context("GC: IPAM")),
    }
    combine(errors)
}
