//! What `netd recover` needs from the store: whatever can still be read
//! from damaged files (as hints, never as truth), and a fresh state written
//! in place of them.

use std::path::PathBuf;

use nix::fcntl::FlockArg;
use serde::Serialize;

use super::format::Head;
use super::journal::{self, Tail};
use super::store::{io, stat};
use super::{State, Store, StoreError};

/// The state as far as the files could be read, and what stopped the reading.
#[derive(Debug, Clone)]
pub struct Salvage {
    pub state: State,
    /// The last transaction `state` holds.
    pub seq: u64,
    /// What is wrong with the files, in words; empty when they are whole.
    pub problems: Vec<String>,
}

/// What `Store::replace` did.
#[derive(Debug, Clone, Serialize)]
pub struct Replaced {
    /// The old files, kept under new names for a post-mortem.
    pub moved_aside: Vec<PathBuf>,
    /// The new snapshot's sequence number: past every one used before.
    pub seq: u64,
}

impl Store {
    /// Reads what can be read: the snapshot if it checks out, then the
    /// journal's records up to the first damage. Never fails on damage.
    pub fn salvage(&self) -> Result<Salvage, StoreError> {
        let lock = self.lock(FlockArg::LockShared)?;
        let mut problems = Vec::new();
        let (mut state, mut seq) = match self.load() {
            Ok((state, seq)) => (state, seq.unwrap_or(0)),
            Err(e @ (StoreError::Damaged { .. } | StoreError::Version { .. })) => {
                problems.push(e.to_string());
                (State::default(), 0)
            }
            Err(e) => return Err(e),
        };
        let path = self.journal_path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(io("read", &path)(source)),
        };
        let records = match journal::parse(&text, None) {
            Tail::Clean(records, _) => records,
            Tail::Torn(records, used) => {
                problems.push(format!(
                    "{}: the last {} bytes are cut short or fail their checksum",
                    path.display(),
                    text.len() - used
                ));
                records
            }
            Tail::Damaged {
                records,
                offset,
                problem,
            } => {
                problems.push(format!(
                    "{}: at byte {offset}: {problem}; nothing after it was read",
                    path.display()
                ));
                records
            }
        };
        for record in &records {
            match record.seq() {
                Some(s) if s <= seq => continue,
                Some(s) if s != seq + 1 => {
                    problems.push(format!(
                        "{}: records {}..{} are missing; nothing after them was read",
                        path.display(),
                        seq + 1,
                        s - 1
                    ));
                    break;
                }
                Some(s) => seq = s,
                None => {}
            }
            journal::apply(&mut state, record.change());
        }
        match self.read_head(&lock) {
            Ok(Some(head)) if head.seq > seq => problems.push(format!(
                "the files end at record {seq}, but record {} was committed",
                head.seq
            )),
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
        state.settle();
        Ok(Salvage {
            state,
            seq,
            problems,
        })
    }

    /// Writes `state` as the whole state, in place of whatever the files
    /// hold (kept beside them as `<name>.before-recover-<unix time>`), with
    /// a sequence number past every one the old files used.
    pub fn replace(&self, state: &State, salvaged_seq: u64) -> Result<Replaced, StoreError> {
        let lock = self.lock(FlockArg::LockExclusive)?;
        let head = self
            .read_head(&lock)
            .ok()
            .flatten()
            .map_or(0, |h: Head| h.seq);
        let seq = head.max(salvaged_seq) + 1;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut moved_aside = Vec::new();
        // The journal first: a crash after this leaves the old snapshot
        // alone, which the head still shows to be short: recover again.
        for path in [self.journal_path(), self.state_path()] {
            if stat(&path)?.is_none() {
                continue;
            }
            let mut aside = path.clone().into_os_string();
            aside.push(format!(".before-recover-{stamp}"));
            let aside = PathBuf::from(aside);
            std::fs::rename(&path, &aside).map_err(io("move aside", &path))?;
            moved_aside.push(aside);
        }
        let mut state = state.clone();
        state.settle();
        self.save(&state, seq)?;
        self.write_head(&lock, seq)?;
        self.forget();
        Ok(Replaced { moved_aside, seq })
    }
}
