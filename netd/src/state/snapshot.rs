//! The snapshot file: read whole, written whole (temporary file, fsync,
//! rename), framed as `format.rs` says.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use super::format;
use super::store::{io, STATE_FILE};
use super::{State, Store, StoreError, STATE_VERSION};

impl Store {
    /// The snapshot and the transaction it is as of (None: format 1, or none).
    pub(super) fn load(&self) -> Result<(State, Option<u64>), StoreError> {
        let path = self.state_path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((State::default(), Some(0)))
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let (state, seq) =
            format::decode_snapshot(&text).map_err(|problem| StoreError::Damaged {
                path: path.clone(),
                problem,
            })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Version {
                path,
                found: state.version,
            });
        }
        Ok((state, seq))
    }

    /// Writes the snapshot: a temporary file, fsynced, renamed into place.
    /// A failed write removes the temporary file.
    pub(super) fn save(&self, state: &State, seq: u64) -> Result<(), StoreError> {
        let path = self.state_path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = format::encode_snapshot(seq, state);
        let written = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))
            .and_then(|mut file| {
                file.write_all(&text).map_err(io("write", &tmp))?;
                file.sync_all().map_err(io("fsync", &tmp))
            })
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(io("rename into place", &path)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}
