//! Primary first, then backups in order.

use std::sync::Arc;

use crate::error::ConfigError;
use crate::peer::Peer;
use crate::select::{Attempt, PanicThreshold, PeerSelector};
use crate::set::{PeerSet, Snapshot};

/// A priority list: every request goes to the first healthy peer it has not tried yet.
///
/// This is the classic active/backup pair, or a longer chain of fallbacks: the primary serves
/// all traffic while it works, and each retry moves one step down the list. An ejected primary
/// is skipped, so requests go straight to the first healthy backup; once its ejection ends, one
/// request probes it, and traffic returns to it when the probe succeeds. When every untried peer
/// is ejected, the one whose ejection ends first is tried anyway.
///
/// It chooses from a [`PeerSet`], which may change while the proxy runs; a name in the list
/// stands for all its addresses, in place.
///
/// # Examples
///
/// ```
/// use pingora_failover::{Attempt, OrderedList, Peer, PeerSelector};
///
/// let primary = Peer::new("127.0.0.1:8080")?;
/// let backup = Peer::new("127.0.0.1:8081")?;
/// let list = OrderedList::new(vec![primary.clone(), backup])?;
/// assert_eq!(list.select(&Attempt::new(&[], None)), Some(primary));
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OrderedList {
    set: PeerSet,
    panic: PanicThreshold,
}

impl OrderedList {
    /// A list tried in the order given.
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`]: [`ConfigError::NoPeers`] for an empty list,
    /// [`ConfigError::DuplicatePeer`] when a peer appears twice, [`ConfigError::Resolve`] for a
    /// name that does not resolve.
    pub fn new(peers: Vec<Peer>) -> Result<Self, ConfigError> {
        PeerSet::new(peers).map(Self::from_set)
    }

    /// A list over `set`, in the set's order, following its changes.
    pub fn from_set(set: PeerSet) -> Self {
        Self {
            set,
            panic: PanicThreshold::NEVER,
        }
    }

    /// Ignores health and spreads requests over every peer once more than `share` (0.0 to 1.0)
    /// of them are ejected or failing their checks: Envoy's panic threshold (50 % there). The
    /// default, 1.0, ignores health only when no healthy untried peer is left, which suits
    /// failover lists whose backups are sized to carry everything.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a share outside 0.0..=1.0.
    pub fn with_panic_threshold(mut self, share: f64) -> Result<Self, ConfigError> {
        self.panic = PanicThreshold::new(share)?;
        Ok(self)
    }

    /// The peers now, in priority order.
    pub fn peers(&self) -> Arc<Snapshot> {
        self.set.peers()
    }

    /// The set the list chooses from.
    pub fn set(&self) -> &PeerSet {
        &self.set
    }
}

impl PeerSelector for OrderedList {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let snapshot = self.set.snapshot();
        let peers = snapshot.peers();
        let panic = self.panic.reached(peers);
        peers
            .iter()
            .find(|p| attempt.takes(p, panic))
            .or_else(|| attempt.best_untried(peers.iter()))
            .cloned()
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.set)
    }
}
