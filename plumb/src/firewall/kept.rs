//! Keeping a netfilter netlink socket (or a libnftables context, which holds
//! one) open between transactions in the same namespace.
//!
//! Closing a netfilter netlink socket makes the kernel flush nf_tables'
//! pending transaction cleanup first, and that cleanup starts with an RCU
//! grace period: closed right after a commit, the socket costs 6–20 ms on
//! this kind of machine, more than the change itself. Kept open, a daemon
//! changing its one namespace never pays that; a short-lived process closes
//! it at exit, by when the cleanup has normally started (see [`super::settle`]).
//!
//! Each keeper holds one value for one namespace; a call for another
//! namespace drops it (and closes it) then. The namespace file is held with
//! the value so that the namespace's identity cannot pass to a new namespace
//! while it is kept; at most one deleted namespace per keeper outlives its
//! name, until the next call elsewhere.
//!
//! The keepers are process-wide statics (`KEPT` in nft_netlink.rs and
//! libnft.rs), one per way of talking to nf_tables, not fields of a handle:
//! the firewall functions take a namespace, a process usually changes one
//! namespace over and over, and [`super::settle`] has to know at exit whether the
//! process made any transaction at all. Each sits behind a mutex, which also
//! makes the transactions of a process take turns.

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::netns::Netns;

pub(crate) struct Kept<T> {
    netns: (u64, u64),
    _hold: OwnedFd,
    pub value: T,
}

impl<T> Kept<T> {
    pub fn new(netns: &Netns, value: T) -> Result<Kept<T>> {
        let hold = netns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io(format!("hold namespace {}", netns.label()), e))?;
        Ok(Kept {
            netns: netns.identity(),
            _hold: hold,
            value,
        })
    }

    pub fn is_for(&self, netns: &Netns) -> bool {
        self.netns == netns.identity()
    }
}
