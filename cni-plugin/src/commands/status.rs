//! STATUS: can ADD succeed now? Asks the backend and a delegated IPAM plugin.

use super::Invocation;
use crate::backend::Backend;
use crate::error::CniError;

pub fn run(inv: &Invocation, backend: &dyn Backend) -> Result<(), CniError> {
    backend.status(&inv.conf)?;
    if let Some(ipam) = inv.ipam_delegate()? {
        ipam.status()?;
    }
    Ok(())
}
