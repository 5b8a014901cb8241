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
/// is ejected, one of them is tried anyway, drawn at random so that requests spread over them
/// ([`Attempt::best_untried`]).
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

    /// Ignores health and spreads requests evenly over every peer once more than `share` (0.0
    /// to 1.0) of them are ejected or failing their checks: Envoy's panic threshold (50 %
    /// there). The default, 1.0, ignores health only when no healthy untried peer is left, which
    /// suits failover lists whose backups are sized to carry everything.
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
        if self.panic.reached(peers) {
            // Past the threshold, the list has no order: every peer takes a share.
            return attempt.any_untried(peers.iter()).cloned();
        }
        peers
            .iter()
            .find(|p| attempt.admits(p))
            .or_else(|| attempt.best_untried(peers.iter()))
            .cloned()
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureKind, OutlierDetection};

    fn list() -> OrderedList {
        let peers = (0..3)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 5800 + i)).unwrap())
            .collect();
        OrderedList::new(peers).unwrap()
    }

    fn first_attempts(list: &OrderedList, n: usize) -> Vec<usize> {
        let mut counts = vec![0; 3];
        for _ in 0..n {
            let p = list.select(&Attempt::new(&[], None)).unwrap();
            counts[list.peers().iter().position(|q| *q == p).unwrap()] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_panic_threshold_traffic_spreads_over_every_peer() {
        let list = list().with_panic_threshold(0.5).unwrap();
        let rules = OutlierDetection::new();
        rules.record_failure(&list.peers()[0], FailureKind::ConnectRefused);
        assert_eq!(first_attempts(&list, 30), [0, 30, 0], "one of three out");
        rules.record_failure(&list.peers()[1], FailureKind::ConnectRefused);
        let counts = first_attempts(&list, 3_000);
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_peer_ejected_first_attempts_spread() {
        let list = list();
        let rules = OutlierDetection::new();
        for p in list.peers().iter() {
            rules.record_failure(p, FailureKind::ConnectRefused);
            tokio::time::advance(std::time::Duration::from_millis(10)).await;
        }
        let counts = first_attempts(&list, 3_000);
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }
}
