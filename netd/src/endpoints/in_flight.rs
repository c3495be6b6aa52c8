//! The attaches this process has under way, by container id.
//!
//! An `attaching` record whose owner is this very process is live only while
//! its attach still runs here: a library caller that dropped the attach's
//! future half-way leaves a record that no one will finish, and the periodic
//! check and reconciliation must tell it from one in progress. A detach of a
//! container being attached waits on [`InFlight::finished`] for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::state::{OwnerProcess, Phase};

/// Container ids with an attach running in this process (a count each:
/// a second attach of the same id runs until it finds the first's record).
#[derive(Default)]
pub(super) struct InFlight {
    ids: Mutex<HashMap<String, usize>>,
    changed: Notify,
}

/// Held for the whole of one attach; its drop (the attach finished, failed,
/// or its future was dropped) takes the id off the list.
pub(super) struct InFlightGuard {
    list: Arc<InFlight>,
    id: String,
}

impl InFlight {
    /// Marks `id` as being attached by this process until the guard drops.
    pub(super) fn enter(list: &Arc<InFlight>, id: &str) -> InFlightGuard {
        *list
            .ids
            .lock()
            .expect("in-flight list")
            .entry(id.to_string())
            .or_default() += 1;
        InFlightGuard {
            list: list.clone(),
            id: id.to_string(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.lock().expect("in-flight list").contains_key(id)
    }

    /// True when nothing is being attached by this process.
    pub(super) fn is_empty(&self) -> bool {
        self.ids.lock().expect("in-flight list").is_empty()
    }

    /// Whether an endpoint's phase is an operation still under way: a live
    /// owner, and when the owner is this process, an attach still running.
    /// A `detaching` record of this process is the reaper's to judge.
    pub(super) fn attach_is_live(&self, id: &str, phase: Phase) -> bool {
        match phase {
            Phase::Attaching { owner } => {
                owner.is_alive() && (owner != OwnerProcess::current() || self.contains(id))
            }
            _ => false,
        }
    }

    /// Resolves when some attach of this process finishes; a waiter looks
    /// again. One that finished just before the call is missed: waiters
    /// bound the wait with a short timeout.
    pub(super) async fn finished(&self) {
        self.changed.notified().await;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        {
            let mut ids = self.list.ids.lock().expect("in-flight list");
            if let Some(count) = ids.get_mut(&self.id) {
                *count -= 1;
                if *count == 0 {
                    ids.remove(&self.id);
                }
            }
        }
        self.list.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_attach_is_live_only_while_it_runs() {
        let list = Arc::new(InFlight::default());
        let phase = Phase::Attaching {
            owner: OwnerProcess::current(),
        };
        assert!(!list.attach_is_live("c1", phase), "no attach runs yet");
        let first = InFlight::enter(&list, "c1");
        let second = InFlight::enter(&list, "c1");
        assert!(list.attach_is_live("c1", phase));
        assert!(!list.attach_is_live("c2", phase));
        drop(first);
        assert!(list.attach_is_live("c1", phase), "the second still runs");
        drop(second);
        assert!(!list.attach_is_live("c1", phase));
        assert!(list.is_empty());
        assert!(!list.attach_is_live("c1", Phase::Attached));
    }

    #[test]
    fn a_dead_owners_attach_is_not_live() {
        let list = Arc::new(InFlight::default());
        let _guard = InFlight::enter(&list, "c1");
        let dead = Phase::Attaching {
            owner: OwnerProcess {
                pid: std::process::id(),
                start: u64::MAX,
            },
        };
        assert!(!list.attach_is_live("c1", dead));
    }
}
