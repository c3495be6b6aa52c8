//! A host's identity in the cluster: a random 128-bit id, kept in the state
//! directory so a restart or reboot finds the same reservation. It is neither
//! the host's address (which may change) nor its key (which rotates).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClusterError;

/// The id file's name inside the state directory.
pub const HOST_ID_FILE: &str = "cluster-host-id";

/// A host's id: 32 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

impl HostId {
    /// A fresh random id from the kernel's random source.
    pub fn generate() -> Result<HostId, ClusterError> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes).map_err(|e| ClusterError::Identity {
            path: PathBuf::new(),
            reason: format!("get random bytes for a host id: {e}"),
        })?;
        Ok(HostId(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The id in `state_dir`, created (atomically: written aside, then renamed) when absent.
    pub fn load_or_create(state_dir: &Path) -> Result<HostId, ClusterError> {
        let path = state_dir.join(HOST_ID_FILE);
        let error = |reason: String| ClusterError::Identity {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return text.trim().parse().map_err(|e: String| {
                    error(format!(
                        "{e}; remove the file to get a new id (and a new subnet)"
                    ))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(format!("read: {e}"))),
        }
        let id = HostId::generate()?;
        std::fs::create_dir_all(state_dir)
            .map_err(|e| error(format!("create the state directory: {e}")))?;
        let aside = state_dir.join(format!(".{HOST_ID_FILE}.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&aside)?;
            writeln!(file, "{id}")?;
            file.sync_all()?;
            // Two processes racing: the first rename wins and both read that one back.
            std::fs::hard_link(&aside, &path).or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })?;
            std::fs::remove_file(&aside)
        };
        write().map_err(|e| error(format!("write: {e}")))?;
        let stored =
            std::fs::read_to_string(&path).map_err(|e| error(format!("read back: {e}")))?;
        stored.trim().parse().map_err(|e: String| error(e))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for HostId {
    type Err = String;
    fn from_str(text: &str) -> Result<HostId, String> {
        if text.len() == 32
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(HostId(text.to_string()))
        } else {
            Err(format!("host id {text:?} is not 32 lowercase hex digits"))
        }
    }
}

impl TryFrom<String> for HostId {
    type Error = String;
    fn try_from(text: String) -> Result<HostId, String> {
        text.parse()
    }
}

impl From<HostId> for String {
    fn from(id: HostId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_survives_a_restart_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let first = HostId::load_or_create(dir.path()).unwrap();
        let again = HostId::load_or_create(dir.path()).unwrap();
        assert_eq!(first, again);
        assert_ne!(first, HostId::generate().unwrap());
        std::fs::write(dir.path().join(HOST_ID_FILE), "10.0.0.1\n").unwrap();
        let err = HostId::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(HOST_ID_FILE) && err.contains("10.0.0.1"),
            "{err}"
        );
    }
}
