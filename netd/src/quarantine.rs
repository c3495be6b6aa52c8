//! Links `netd recover` left alone, kept from reconciliation.
//!
//! Recovery cannot adopt every link with netd's alias (its other end is not
//! found, has no address, or its address is another container's). Such a
//! link may still carry a live container's traffic, so reconciliation must
//! not delete it as stale on the word of a state netd had to rebuild.
//! `netd recover` writes them to `left-alone.json` in the state directory;
//! reconciliation skips every link listed there (by name *and* alias, so a
//! new link that reuses the name is not protected), and reports them. The
//! operator clears the list with `netd recover --forget-left-alone` (netd
//! stopped): from then on they are stale links like any other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's name inside the state directory.
pub const FILE_NAME: &str = "left-alone.json";

/// One link recovery left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftAlone {
    /// The host end's name.
    pub host_ifname: String,
    /// The container id its alias names.
    pub id: String,
    /// Why recovery could not adopt it.
    pub reason: String,
}

/// The list in `left-alone.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub links: Vec<LeftAlone>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

impl Quarantine {
    /// Reads the list; none when the file is absent.
    pub fn read(state_dir: &Path) -> Result<Quarantine> {
        let path = path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidInput(format!(
                    "{}: {e}; fix it, or clear it with `netd recover --forget-left-alone`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Quarantine::default()),
            Err(e) => Err(Error::Setup(format!("read {}: {e}", path.display()))),
        }
    }

    /// True when the link named `host_ifname` with alias id `id` is listed.
    pub fn holds(&self, host_ifname: &str, id: &str) -> bool {
        self.links
            .iter()
            .any(|l| l.host_ifname == host_ifname && l.id == id)
    }

    /// Adds `links` (once each) and writes the file atomically: a temporary
    /// file, fsynced, renamed into place.
    pub fn add(state_dir: &Path, links: impl IntoIterator<Item = LeftAlone>) -> Result<()> {
        let mut list = Quarantine::read(state_dir)?;
        for link in links {
            if !list.holds(&link.host_ifname, &link.id) {
                list.links.push(link);
            }
        }
        list.write(state_dir)
    }

    fn write(&self, state_dir: &Path) -> Result<()> {
        let path = path(state_dir);
        let text = serde_json::to_vec_pretty(self).expect("the list serializes");
        crate::atomic_file::write(&path, &text, 0o600)
            .map_err(|e| Error::Setup(format!("write {}: {e}", path.display())))
    }

    /// Deletes the list; returns what it held.
    pub fn forget(state_dir: &Path) -> Result<Quarantine> {
        let list = Quarantine::read(state_dir)?;
        match std::fs::remove_file(path(state_dir)) {
            Ok(()) => Ok(list),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(list),
            Err(e) => Err(Error::Setup(format!(
                "remove {}: {e}",
                path(state_dir).display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_added_once_held_by_name_and_alias_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Quarantine::read(dir.path()).unwrap(), Quarantine::default());
        let link = |name: &str, id: &str| LeftAlone {
            host_ifname: name.into(),
            id: id.into(),
            reason: "no address".into(),
        };
        Quarantine::add(dir.path(), [link("wv1", "a"), link("wv2", "b")]).unwrap();
        Quarantine::add(dir.path(), [link("wv1", "a")]).unwrap();
        let list = Quarantine::read(dir.path()).unwrap();
        assert_eq!(list.links.len(), 2);
        assert!(list.holds("wv1", "a"));
        assert!(!list.holds("wv1", "b"), "a new link reusing the name");
        assert_eq!(Quarantine::forget(dir.path()).unwrap(), list);
        assert!(Quarantine::read(dir.path()).unwrap().links.is_empty());
        std::fs::write(dir.path().join(FILE_NAME), "{").unwrap();
        let err = Quarantine::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("--forget-left-alone"), "{err}");
    }
}
