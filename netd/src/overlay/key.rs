//! The overlay's private key file: read, or generated (mode 0600) on first use.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use ::overlay::PrivateKey;

use crate::error::{Error, Result};

/// Reads the overlay's private key, or generates one (mode 0600, its
/// directory 0700 when created) when the file does not exist yet.
pub fn load_or_generate_key(path: &Path) -> Result<PrivateKey> {
    let invalid = |e: ::overlay::KeyError| {
        Error::InvalidInput(format!(
            "overlay private key: {e} (set overlay.private_key_file, or remove the file to have netd generate a new key)"
        ))
    };
    if path.exists() {
        return PrivateKey::read_file(path).map_err(invalid);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::Setup(format!(
                    "create the directory of the overlay key {}: {e}",
                    path.display()
                ))
            })?;
    }
    let key = PrivateKey::generate().map_err(invalid)?;
    key.write_file(path).map_err(invalid)?;
    tracing::info!(
        path = %path.display(),
        public_key = %key.public_key(),
        "generated the overlay's private key"
    );
    Ok(key)
}
