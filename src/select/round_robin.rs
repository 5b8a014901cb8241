//! Weighted round-robin with a lock-free cursor.

use std::sync::Arc;

use crate::error::ConfigError;
use crate::peer::Peer;
use crate::rng::Rng;
use crate::select::cursor::Cursor;
use crate::select::slow_start::SlowStart;
use crate::select::{Attempt, PanicThreshold, PeerSelector};
use crate::set::{PeerSet, Snapshot};

/// Spreads requests over the peers in proportion to their weights.
///
/// The order is the set's [weighted order](Snapshot::weighted_order): each peer `weight` times
/// (after dividing all weights by their greatest common divisor), spread out so that a heavy
/// peer's turns are interleaved with the others rather than bunched. A shared atomic cursor
/// walks it, so selection takes no lock and does not allocate.
///
/// Ejected (and suspected) peers pass their turns on: the walk goes over them, to the next turn
/// of a peer that takes the request, and the cursor moves past every turn passed over. The
/// schedule without some of its peers is the schedule of the others, so the rest share by
/// weight, whatever their place in the set: with weights 8, 1 and 1 and the heavy peer out, the
/// other two take turns, rather than the peer after it taking most. When no untried peer is
/// admitted, panic mode spreads the request over the untried ones
/// ([`Attempt::best_untried`]). A retry never returns to a peer the request already tried while
/// an untried one remains.
/// Retries draw their turns from a cursor of their own: if they took turns from the first
/// attempts' cursor, every retry would shift the schedule, and a dead peer would receive more
/// than its share of first attempts (half instead of a third, with one dead peer in three).
///
/// With a [`SlowStart`], a peer ramping up takes its turn with a probability equal to its share
/// so far, and passes it on otherwise.
#[derive(Debug)]
pub struct RoundRobin {
    set: PeerSet,
    cursor: Cursor,
    retry_cursor: Cursor,
    panic: PanicThreshold,
    slow_start: Option<(SlowStart, Rng)>,
}

impl RoundRobin {
    /// A round-robin over `peers`, weighted by [`Peer::weight`].
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`]: [`ConfigError::NoPeers`] for an empty list,
    /// [`ConfigError::DuplicatePeer`] when a peer appears twice, [`ConfigError::Resolve`] for a
    /// name that does not resolve.
    pub fn new(peers: Vec<Peer>) -> Result<Self, ConfigError> {
        PeerSet::new(peers).map(Self::from_set)
    }

    /// A round-robin over `set`, following its changes.
    pub fn from_set(set: PeerSet) -> Self {
        Self {
            set,
            cursor: Cursor::new(),
            retry_cursor: Cursor::new(),
            panic: PanicThreshold::NEVER,
            slow_start: None,
        }
    }

    /// Ramps up the share of a peer that joins traffic ([`SlowStart`]).
    pub fn with_slow_start(mut self, slow_start: SlowStart) -> Self {
        self.slow_start = Some((slow_start, Rng::new()));
        self
    }

    /// Whether `peer` takes the turn it drew: always, unless it is ramping up.
    fn takes_turn(&self, peer: &Peer) -> bool {
        self.slow_start.as_ref().is_none_or(|(slow, rng)| {
            let share = slow.factor(peer);
            share >= 1.0 || rng.unit() < share
        })
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

    /// The peers now, in the set's order.
    pub fn peers(&self) -> Arc<Snapshot> {
        self.set.peers()
    }

    /// The set the round-robin chooses from.
    pub fn set(&self) -> &PeerSet {
        &self.set
    }
}

/// How many turns a miss looks at one by one before it asks each peer for its next turn.
const SCAN: usize = 32;

impl PeerSelector for RoundRobin {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let cursor = if attempt.is_retry() {
            &self.retry_cursor
        } else {
            &self.cursor
        };
        let snapshot = self.set.snapshot();
        let peers = snapshot.peers();
        let turns = snapshot.weighted_order();
        if turns.is_empty() {
            return None;
        }
        let panic = self.panic.reached(peers);
        let takes = |p: &Peer| attempt.takes(p, panic);
        let drawn = cursor.next();
        let at = drawn % turns.len();
        // While all are healthy, a first attempt takes the turn it drew.
        let first = &peers[turns[at] as usize];
        if takes(first) && self.takes_turn(first) {
            return Some(first.clone());
        }
        // The next turn of a peer that takes the attempt: one by one for a short way, then the
        // nearest next turn of each such peer.
        let next = (1..turns.len().min(SCAN))
            .find(|d| {
                let p = &peers[turns[(at + d) % turns.len()] as usize];
                takes(p) && self.takes_turn(p)
            })
            .or_else(|| {
                (0..peers.len())
                    .filter(|&i| takes(&peers[i]))
                    .map(|i| snapshot.turns_to_next(i, at))
                    .min()
            });
        match next {
            Some(d) => {
                cursor.pass(drawn, d);
                Some(peers[turns[(at + d) % turns.len()] as usize].clone())
            }
            None => attempt.best_untried(peers.iter()).cloned(),
        }
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(weights: &[u32]) -> Vec<Peer> {
        crate::peer::weighted_for_tests(1000, weights)
    }

    #[test]
    fn equal_weights_take_turns() {
        let rr = RoundRobin::new(peers(&[1, 1, 1])).unwrap();
        let order: Vec<u16> = (0..6)
            .map(|_| {
                rr.select(&Attempt::new(&[], None))
                    .unwrap()
                    .addr()
                    .unwrap()
                    .port()
            })
            .collect();
        assert_eq!(order, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    fn eject(p: &Peer) {
        crate::OutlierDetection::new()
            .record_failure(p, crate::FailureKind::ConnectRefused)
            .unwrap();
    }

    fn spread(rr: &RoundRobin, n: usize) -> Vec<usize> {
        let mut counts = vec![0; rr.peers().len()];
        for _ in 0..n {
            let p = rr.select(&Attempt::new(&[], None)).unwrap();
            counts[rr.peers().iter().position(|q| *q == p).unwrap()] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_peers_are_skipped_until_the_panic_threshold() {
        let rr = RoundRobin::new(peers(&[1, 1, 1, 1])).unwrap();
        eject(&rr.peers()[0]);
        assert_eq!(spread(&rr, 30), [0, 10, 10, 10]);

        // Half out: at the 50 % threshold, not above it.
        let rr = rr.with_panic_threshold(0.5).unwrap();
        eject(&rr.peers()[1]);
        assert_eq!(spread(&rr, 20), [0, 0, 10, 10]);

        // Three of four out: above 50 %, health is ignored and traffic spreads over all.
        eject(&rr.peers()[2]);
        assert_eq!(spread(&rr, 40), [10, 10, 10, 10]);
    }

    #[test]
    fn rejects_a_bad_panic_threshold() {
        let rr = || RoundRobin::new(peers(&[1])).unwrap();
        assert!(rr().with_panic_threshold(1.5).is_err());
        assert!(rr().with_panic_threshold(f64::NAN).is_err());
    }

    #[test]
    fn weights_set_the_share_and_turns_interleave() {
        let rr = RoundRobin::new(peers(&[3, 1])).unwrap();
        assert_eq!(rr.peers().weighted_order(), &[0, 0, 1, 0]);
        let rr = RoundRobin::new(peers(&[200, 400])).unwrap();
        assert_eq!(rr.peers().weighted_order(), &[1, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_heavy_peer_ejected_the_others_share_by_their_weights() {
        for (ws, want) in [
            (&[8, 1, 1][..], &[0, 5_000, 5_000][..]),
            (&[100, 1, 1], &[0, 5_000, 5_000]),
            (&[1, 3, 2], &[0, 6_000, 4_000]),
            (&[3, 2, 1, 5], &[6_000, 4_000, 0, 0]),
        ] {
            let rr = RoundRobin::new(peers(ws)).unwrap();
            for (p, _) in rr.peers().iter().zip(want).filter(|(_, w)| **w == 0) {
                eject(p);
            }
            assert_eq!(spread(&rr, 10_000), want, "weights {ws:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_peer_ejected_first_attempts_spread() {
        let rr = RoundRobin::new(peers(&[1, 1, 1, 1])).unwrap();
        for p in rr.peers().iter() {
            eject(p);
            tokio::time::advance(std::time::Duration::from_millis(10)).await;
        }
        let counts = spread(&rr, 400);
        assert!(counts.iter().all(|c| *c >= 60), "{counts:?}");
    }
}
