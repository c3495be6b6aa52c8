//! The store: transactions on the state files (see the parent module's docs).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};

use super::format::{self, Head};
use super::journal::{self, Tail};
use super::{State, StoreError};

pub(super) const STATE_FILE: &str = "state.json";
pub(super) const JOURNAL_FILE: &str = "state.log";
pub(super) const LOCK_FILE: &str = "state.lock";
/// The journal is folded into a new snapshot once it is longer than this and
/// than the snapshot: the whole-state write is paid once per many records.
pub(super) const COMPACT_AFTER: u64 = 64 * 1024;

/// The state directory. Cheap to clone (clones share one cache); holds no
/// file open between calls.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) dir: PathBuf,
    cache: Arc<Mutex<Cache>>,
}

/// The state as this process last read it, and where in the files that was.
#[derive(Debug, Default)]
struct Cache {
    /// Exactly what the files hold, as of `seen`.
    persisted: State,
    /// A copy a transaction changes; equal to `persisted` between transactions.
    working: State,
    /// The last transaction `persisted` holds.
    seq: u64,
    /// The sequence number of the last journal record read from the current
    /// journal file: the next one must follow it.
    journal_seq: Option<u64>,
    /// Format-1 content was read: the next write folds it into a snapshot.
    legacy: bool,
    seen: Option<Seen>,
}

/// Which files the cache was read from, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    snapshot: Option<FileId>,
    snapshot_len: u64,
    journal: Option<u64>,
    journal_len: u64,
}

/// A file's identity: inode and change time, which every rename into place renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    ctime: (i64, i64),
}

pub(super) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Metadata of `path`, None when it does not exist.
pub(super) fn stat(path: &Path) -> Result<Option<std::fs::Metadata>, StoreError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            action: "stat",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn file_id(m: &std::fs::Metadata) -> FileId {
    FileId {
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

impl Store {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Dir {
                dir: dir.clone(),
                source,
            })?;
        Ok(Store {
            dir,
            cache: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub(super) fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    pub(super) fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    pub(super) fn lock(&self, arg: FlockArg) -> Result<Flock<File>, StoreError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path);
        let file = match file {
            // A read-only state directory can still be read: a shared lock
            // needs no write access.
            Err(e)
                if arg == FlockArg::LockShared
                    && e.raw_os_error() == Some(libc::EROFS)
                    && path.exists() =>
            {
                File::open(&path)
            }
            other => other,
        }
        .map_err(io("open lock file", &path))?;
        Flock::lock(file, arg).map_err(|(_, errno)| StoreError::Io {
            action: "lock",
            path,
            source: std::io::Error::from(errno),
        })
    }

    /// The head the lock file holds (see `format::Head`).
    pub(super) fn read_head(&self, lock: &File) -> Result<Option<Head>, StoreError> {
        let path = self.lock_path();
        let mut text = Vec::new();
        (&*lock)
            .seek(SeekFrom::Start(0))
            .and_then(|_| (&*lock).read_to_end(&mut text))
            .map_err(io("read", &path))?;
        Head::decode(&text).map_err(|problem| StoreError::Damaged { path, problem })
    }

    /// Records `seq` as the last committed transaction: one write in place.
    pub(super) fn write_head(&self, lock: &File, seq: u64) -> Result<(), StoreError> {
        let path = self.lock_path();
        lock.write_all_at(&Head::now(seq).encode(), 0)
            .map_err(io("write the head to", &path))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| {
            // A transaction panicked half-way: forget what it left behind.
            let mut cache = poisoned.into_inner();
            cache.seen = None;
            cache
        })
    }

    /// Forgets what this process read: the next look reads the files anew.
    pub(super) fn forget(&self) {
        self.cache().seen = None;
    }

    /// Reads the state under a shared lock.
    pub fn read(&self) -> Result<State, StoreError> {
        self.read_with(State::clone)
    }

    /// Looks at the state under a shared lock without copying it.
    pub fn read_with<T>(&self, look: impl FnOnce(&State) -> T) -> Result<T, StoreError> {
        let lock = self.lock(FlockArg::LockShared)?;
        let mut cache = self.cache();
        self.catch_up(&mut cache, &lock, false)?;
        Ok(look(&cache.persisted))
    }

    /// Runs `change` on the state under an exclusive lock and saves the result
    /// when it returns Ok. On Err nothing is written; when the write fails
    /// (a full disk, a read-only directory) nothing is written either, the
    /// cache stays as the files are, and the error is returned.
    pub fn update<T, E>(&self, change: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let lock = self.lock(FlockArg::LockExclusive)?;
        let mut guard = self.cache();
        let cache = &mut *guard;
        self.catch_up(cache, &lock, true)?;
        let out = match change(&mut cache.working) {
            Ok(out) => out,
            Err(e) => {
                cache.working.revert_to(&cache.persisted);
                return Err(e);
            }
        };
        let record = journal::diff(&cache.persisted, &cache.working);
        if record.is_empty() {
            cache.working.settle();
            return Ok(out);
        }
        if cache.legacy {
            // Format-1 files: fold them into a format-2 snapshot first, so a
            // journal never mixes the two formats.
            if let Err(e) = self.compact(cache, &lock) {
                cache.working.revert_to(&cache.persisted);
                return Err(e.into());
            }
            tracing::info!(dir = %self.dir.display(), "state files migrated to format {}", format::FORMAT);
        }
        if let Err(e) = self.append(cache, &lock, &record) {
            cache.working.revert_to(&cache.persisted);
            return Err(e.into());
        }
        cache.working.settle();
        journal::apply(&mut cache.persisted, &record);
        cache.persisted.settle();
        let seen = cache.seen.expect("caught up above");
        if seen.journal_len > COMPACT_AFTER.max(seen.snapshot_len) {
            // The transaction is committed either way: a failed compaction
            // leaves a valid (longer) journal, and the next one tries again.
            if let Err(e) = self.compact(cache, &lock) {
                tracing::warn!(error = %e, "could not fold the state journal into a snapshot; keeping the journal");
                cache.seen = None;
            }
        }
        Ok(out)
    }

    /// Brings the cache up to date with the files: the new journal records
    /// only, unless the snapshot or the journal was replaced since. Fails
    /// with `Damaged` rather than return a state that is not what was committed.
    fn catch_up(&self, cache: &mut Cache, lock: &File, exclusive: bool) -> Result<(), StoreError> {
        let state_path = self.state_path();
        let journal_path = self.journal_path();
        let snapshot = stat(&state_path)?;
        let journal = stat(&journal_path)?;
        let snapshot_id = snapshot.as_ref().map(file_id);
        let journal_ino = journal.as_ref().map(|m| m.ino());
        let journal_len = journal.as_ref().map_or(0, |m| m.len());
        let from = match cache.seen {
            Some(seen)
                if seen.snapshot == snapshot_id
                    && seen.journal.is_none_or(|ino| Some(ino) == journal_ino)
                    && journal_len >= seen.journal_len =>
            {
                seen.journal_len
            }
            _ => {
                cache.seen = None;
                let (state, seq) = self.load()?;
                cache.persisted = state;
                cache.working = cache.persisted.clone();
                cache.legacy = seq.is_none();
                cache.seq = seq.unwrap_or(0);
                cache.journal_seq = None;
                0
            }
        };
        let mut read_to = from;
        if journal_len > from {
            let mut file = File::open(&journal_path).map_err(io("open", &journal_path))?;
            file.seek(SeekFrom::Start(from))
                .map_err(io("read", &journal_path))?;
            let mut text = Vec::with_capacity((journal_len - from) as usize);
            file.read_to_end(&mut text)
                .map_err(io("read", &journal_path))?;
            let damaged = |offset: usize, problem: String| StoreError::Damaged {
                path: journal_path.clone(),
                problem: format!("at byte {}: {problem}", from + offset as u64),
            };
            let (records, used, torn) = match journal::parse(&text, cache.journal_seq) {
                Tail::Clean(records, used) => (records, used, false),
                Tail::Torn(records, used) => (records, used, true),
                Tail::Damaged {
                    offset, problem, ..
                } => {
                    cache.seen = None;
                    return Err(damaged(offset, problem));
                }
            };
            // Records the snapshot already holds (a compaction that stopped
            // before removing the journal) are skipped; the first new one
            // must follow the snapshot.
            let mut seq = cache.seq;
            for record in &records {
                match record.seq() {
                    Some(s) if s <= seq => continue,
                    Some(s) if s != seq + 1 => {
                        cache.seen = None;
                        return Err(StoreError::Damaged {
                            path: journal_path.clone(),
                            problem: format!(
                                "it goes on at record {s}, but the snapshot ends at record {seq}: records {}..{} are missing",
                                seq + 1,
                                s - 1
                            ),
                        });
                    }
                    Some(s) => seq = s,
                    None => cache.legacy = true,
                }
                journal::apply(&mut cache.persisted, record.change());
                journal::apply(&mut cache.working, record.change());
            }
            cache.seq = seq;
            cache.journal_seq = records.last().and_then(|r| r.seq()).or(cache.journal_seq);
            cache.persisted.settle();
            cache.working.settle();
            read_to = from + used as u64;
            if torn {
                self.check_head(cache, lock)?;
                if exclusive {
                    // What a writer killed mid-write left: never committed
                    // (the head says so), so never part of a transaction.
                    tracing::info!(path = %journal_path.display(), offset = read_to, "cutting an uncommitted record off the end of the state journal");
                    OpenOptions::new()
                        .write(true)
                        .open(&journal_path)
                        .and_then(|f| f.set_len(read_to))
                        .map_err(io("truncate", &journal_path))?;
                }
            }
        }
        if cache.seen.is_none() {
            // Read from the start: whatever the journal holds must reach the
            // last committed transaction.
            self.check_head(cache, lock)?;
        }
        cache.seen = Some(Seen {
            snapshot: snapshot_id,
            snapshot_len: snapshot.as_ref().map_or(0, |m| m.len()),
            journal: journal_ino,
            journal_len: read_to,
        });
        Ok(())
    }

    /// Fails unless the files hold every committed transaction. The journal
    /// cut through committed records (to half its size, say) ends in a torn
    /// line just as a crashed append does, or at a line boundary with no sign
    /// at all; only the head, written after each append, tells them apart.
    fn check_head(&self, cache: &mut Cache, lock: &File) -> Result<(), StoreError> {
        let Some(head) = self.read_head(lock)? else {
            return Ok(());
        };
        if head.seq <= cache.seq {
            return Ok(());
        }
        if head.boot != format::boot_id() {
            // Neither file is fsynced on append: a power loss can keep the
            // head and lose the end of the journal. The containers' links
            // went with that boot too, so there is nothing live to lose.
            tracing::warn!(
                dir = %self.dir.display(),
                recorded = head.seq,
                found = cache.seq,
                "the state journal lost its last records in a crash of the previous boot; going on from record {}",
                cache.seq
            );
            return Ok(());
        }
        cache.seen = None;
        Err(StoreError::Damaged {
            path: self.journal_path(),
            problem: format!(
                "it ends at record {}, but record {} was committed (see the head in {}): the journal was cut or overwritten",
                cache.seq,
                head.seq,
                self.lock_path().display()
            ),
        })
    }

    /// Appends one record to the journal: a single write, visible to every
    /// process at once and surviving the death of this one, then the head.
    /// Not fsynced (see the module docs). On failure the journal is cut back
    /// to where it was, so nothing of the record is left.
    fn append(
        &self,
        cache: &mut Cache,
        lock: &File,
        record: &journal::Change,
    ) -> Result<(), StoreError> {
        let path = self.journal_path();
        let seq = cache.seq + 1;
        let line = journal::encode_record(seq, record);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        let seen = cache.seen.expect("caught up before appending");
        let written = file
            .write_all(&line)
            .map_err(io("append to", &path))
            .and_then(|()| self.write_head(lock, seq));
        if let Err(e) = written {
            if let Err(cut) = file.set_len(seen.journal_len) {
                // The torn record stays; the head does not count it, so the
                // next writer cuts it off.
                tracing::warn!(error = %cut, path = %path.display(), "could not cut a failed append off the state journal");
            }
            // The head, if written, counts a record that is gone: put it back.
            let _ = self.write_head(lock, cache.seq);
            return Err(e);
        }
        let ino = file.metadata().map_err(io("stat", &path))?.ino();
        let seen = cache.seen.as_mut().expect("caught up before appending");
        seen.journal = Some(ino);
        seen.journal_len += line.len() as u64;
        cache.seq = seq;
        cache.journal_seq = Some(seq);
        Ok(())
    }

    /// Writes the whole state as a new snapshot and starts an empty journal.
    /// A crash between the two steps leaves the new snapshot with the old
    /// journal, whose records it already holds: their sequence numbers say so.
    fn compact(&self, cache: &mut Cache, lock: &File) -> Result<(), StoreError> {
        self.save(&cache.persisted, cache.seq)?;
        let journal = self.journal_path();
        match std::fs::remove_file(&journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Io {
                    action: "remove",
                    path: journal,
                    source,
                })
            }
        }
        self.write_head(lock, cache.seq)?;
        let snapshot = stat(&self.state_path())?;
        cache.legacy = false;
        cache.journal_seq = None;
        cache.seen = Some(Seen {
            snapshot: snapshot.as_ref().map(file_id),
            snapshot_len: snapshot.map_or(0, |m| m.len()),
            journal: None,
            journal_len: 0,
        });
        Ok(())
    }
}
