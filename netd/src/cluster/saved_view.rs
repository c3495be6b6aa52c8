//! The last peer view this host applied, kept in the state directory: a
//! netd that starts while the store is down runs from it (its own subnets,
//! its peers and their routes) instead of cutting every cross-host path
//! until the store is back. It is a cache, never the truth: the store's view
//! replaces it as soon as the watcher lists again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::overlay::cluster::{HostId, PeerView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's name inside the state directory.
pub const SAVED_VIEW_FILE: &str = "cluster-view.json";

/// How often, at most, a changed view is written: a view changes with
/// every liveness flap of every host; the file only needs to be recent.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// How long a start's views are only kept before the first is written: a
/// start (and every host of a cluster starting at once) brings a burst of
/// views, and only the one after it is worth a write and its fsync.
pub const FIRST_SAVE_AFTER: Duration = Duration::from_secs(2);

/// The view and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedView {
    /// The host that saved it (a state directory copied to another host
    /// must not make it run as this one).
    pub host_id: HostId,
    /// When it was saved, Unix seconds.
    pub saved_at: u64,
    pub view: PeerView,
}

impl SavedView {
    /// The view saved in `state_dir` by host `id`; None when there is none
    /// or another host saved it.
    pub fn read(state_dir: &Path, id: &HostId) -> Result<Option<SavedView>> {
        let path = state_dir.join(SAVED_VIEW_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Setup(format!(
                    "cluster: read the saved view {}: {e}",
                    path.display()
                )))
            }
        };
        let saved: SavedView = serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidInput(format!(
                "cluster: the saved view {} is unreadable: {e}; remove it (netd writes it again once the store answers)",
                path.display()
            ))
        })?;
        Ok((&saved.host_id == id).then_some(saved))
    }

    /// Writes the view atomically, root-only (it names every host's endpoint).
    pub fn write(state_dir: &Path, id: &HostId, view: &PeerView) -> Result<()> {
        let saved = SavedView {
            host_id: id.clone(),
            saved_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            view: view.clone(),
        };
        let path = state_dir.join(SAVED_VIEW_FILE);
        let text = serde_json::to_vec(&saved).expect("a view serializes");
        crate::atomic_file::write(&path, &text, 0o600)
            .map_err(|e| Error::Setup(format!("cluster: save the view to {}: {e}", path.display())))
    }
}

/// Writes the views it is given, the first no sooner than `first_after`
/// from its making and then at most once per [`SAVE_EVERY`]; a view given
/// in between is written when the next one comes or by [`flush`].
///
/// [`flush`]: ViewSaver::flush
pub struct ViewSaver {
    state_dir: std::path::PathBuf,
    id: HostId,
    /// When the next write may be.
    next: Instant,
    pending: Option<Arc<PeerView>>,
}

impl ViewSaver {
    pub fn new(state_dir: &Path, id: &HostId, first_after: Duration) -> ViewSaver {
        ViewSaver {
            state_dir: state_dir.to_path_buf(),
            id: id.clone(),
            next: Instant::now() + first_after,
            pending: None,
        }
    }

    /// Saves `view` now, or keeps it for later when it is too soon.
    pub fn offer(&mut self, view: Arc<PeerView>) {
        if Instant::now() < self.next {
            self.pending = Some(view);
            return;
        }
        self.save(&view);
    }

    /// When a kept view is due: the caller waits for this, then flushes.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(self.next)
    }

    /// Saves the view kept for later, if any.
    pub fn flush(&mut self) {
        if let Some(view) = self.pending.take() {
            self.save(&view);
        }
    }

    fn save(&mut self, view: &PeerView) {
        self.next = Instant::now() + SAVE_EVERY;
        self.pending = None;
        // A failed save only costs a start without the store: say so, go on.
        if let Err(e) = SavedView::write(&self.state_dir, &self.id, view) {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> HostId {
        "0123456789abcdef0123456789abcdef".parse().unwrap()
    }

    #[test]
    fn a_view_round_trips_for_its_host_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SavedView::read(dir.path(), &id()).unwrap(), None);
        let view = PeerView {
            revision: 42,
            ..PeerView::default()
        };
        SavedView::write(dir.path(), &id(), &view).unwrap();
        let saved = SavedView::read(dir.path(), &id()).unwrap().unwrap();
        assert_eq!(saved.view, view);
        let other: HostId = "fedcba9876543210fedcba9876543210".parse().unwrap();
        assert_eq!(SavedView::read(dir.path(), &other).unwrap(), None);
        std::fs::write(dir.path().join(SAVED_VIEW_FILE), "{").unwrap();
        let e = SavedView::read(dir.path(), &id()).unwrap_err().to_string();
        assert!(e.contains(SAVED_VIEW_FILE), "{e}");
    }

    #[test]
    fn views_in_quick_succession_are_written_once_now_and_once_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut saver = ViewSaver::new(dir.path(), &id(), Duration::ZERO);
        let view = |revision| {
            Arc::new(PeerView {
                revision,
                ..PeerView::default()
            })
        };
        saver.offer(view(1));
        assert_eq!(saver.due(), None);
        saver.offer(view(2));
        saver.offer(view(3));
        let read = || {
            SavedView::read(dir.path(), &id())
                .unwrap()
                .unwrap()
                .view
                .revision
        };
        assert_eq!(read(), 1, "the second is kept, not written");
        assert!(saver.due().is_some());
        saver.flush();
        assert_eq!(read(), 3, "the latest kept view is written");
        assert_eq!(saver.due(), None);
    }

    #[test]
    fn a_start_s_first_views_are_kept_until_the_first_save_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut saver = ViewSaver::new(dir.path(), &id(), Duration::from_secs(60));
        saver.offer(Arc::new(PeerView {
            revision: 7,
            ..PeerView::default()
        }));
        assert_eq!(SavedView::read(dir.path(), &id()).unwrap(), None);
        let due = saver.due().expect("a kept view");
        assert!(due > Instant::now() + Duration::from_secs(50));
        saver.flush();
        let saved = SavedView::read(dir.path(), &id()).unwrap().unwrap();
        assert_eq!(saved.view.revision, 7, "a stop still writes it");
    }
}
