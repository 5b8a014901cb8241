//! Which sets hold a peer, and what it owes the engine's accounts when it leaves them.
//!
//! A peer's handles come and go with every update of its set (a reload, a new weight, a DNS
//! answer builds new ones), while its health stays. What follows the peer's life (its background
//! probe, its place in the ejected-peers gauge, its metric series) must therefore follow its
//! membership, counted here, and not the number of its handles.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::cell::gate::{NoTally, Tally};

/// Accounts kept outside the peer about it (the engine's metrics): its ejection in the
/// ejected-peers gauge, its per-peer series.
pub(crate) trait Accounts: Tally + Send + Sync {
    /// A handle on these accounts for the peer to keep, so that its departure settles them;
    /// `None` when there is nothing to settle.
    fn keep(&self) -> Option<Box<dyn Accounts>>;

    /// The peer called `name` has left its last set: what is kept about it goes.
    fn forget(&self, name: &str);
}

impl Accounts for NoTally {
    fn keep(&self) -> Option<Box<dyn Accounts>> {
        None
    }

    fn forget(&self, _name: &str) {}
}

#[derive(Default)]
pub(crate) struct Membership {
    /// How many sets hold the peer now.
    sets: AtomicU32,
    /// Whether a set ever held it. A peer that never joined one (a custom selector's own list)
    /// lives as long as a handle of it does.
    joined: AtomicBool,
    /// The accounts that counted it first. A peer served by two engines with metrics of their
    /// own is settled in the first one's.
    accounts: OnceLock<Box<dyn Accounts>>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("sets", &self.sets.load(Ordering::Relaxed))
            .field("joined", &self.joined.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Membership {
    pub(crate) fn join(&self) {
        self.joined.store(true, Ordering::SeqCst);
        self.sets.fetch_add(1, Ordering::SeqCst);
    }

    /// Leaves one set; `true` when it was the last. The caller then settles the departure,
    /// after a fence that orders it with any ejection racing it.
    pub(crate) fn leave(&self) -> bool {
        let last = self.sets.fetch_sub(1, Ordering::SeqCst) == 1;
        fence(Ordering::SeqCst);
        last
    }

    /// `Some(held)` for a peer that has joined a set: whether one holds it now. `None` for a
    /// peer that never joined one. Two loads, no fence: the request path asks it.
    pub(crate) fn held(&self) -> Option<bool> {
        self.joined
            .load(Ordering::SeqCst)
            .then(|| self.sets.load(Ordering::SeqCst) > 0)
    }

    /// Whether the peer has left the sets that held it.
    pub(crate) fn departed(&self) -> bool {
        self.held() == Some(false)
    }

    /// [`departed`](Self::departed), after a fence that orders it with a departure racing the
    /// caller's last write (an ejection): one of the two sees the other.
    pub(crate) fn departed_after(&self) -> bool {
        fence(Ordering::SeqCst);
        self.departed()
    }

    /// Remembers `accounts` (the first ones only; allocates once).
    pub(crate) fn keep(&self, accounts: &dyn Accounts) {
        if self.accounts.get().is_none() {
            if let Some(kept) = accounts.keep() {
                let _ = self.accounts.set(kept);
            }
        }
    }

    /// The accounts that counted the peer.
    pub(crate) fn accounts(&self) -> &dyn Accounts {
        match self.accounts.get() {
            Some(kept) => &**kept,
            None => &NoTally,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_held_while_a_set_has_it() {
        let m = Membership::default();
        assert_eq!(m.held(), None, "never joined");
        m.join();
        m.join();
        assert!(!m.leave(), "still in one");
        assert_eq!(m.held(), Some(true));
        assert!(m.leave());
        assert!(m.departed());
        m.join();
        assert!(!m.departed(), "back");
    }
}
