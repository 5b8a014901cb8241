//! Weighted round-robin with a lock-free cursor.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ConfigError;
use crate::peer::{check_peers, Peer};
use crate::select::{Attempt, PeerSelector};

/// Spreads requests over the peers in proportion to their weights.
///
/// The order is fixed when the selector is built: a schedule in which each peer appears `weight`
/// times (after dividing all weights by their greatest common divisor), spread out so that a
/// heavy peer's turns are interleaved with the others rather than bunched. A shared atomic cursor
/// walks it, so selection takes no lock and does not allocate.
///
/// Ejected peers are skipped (their turn passes to the next); when every untried peer is
/// ejected, the one whose ejection ends first is tried anyway. A retry never returns to a peer
/// the request already tried while an untried one remains.
/// Retries draw their turns from a cursor of their own: if they took turns from the first
/// attempts' cursor, every retry would shift the schedule, and a dead peer would receive more
/// than its share of first attempts (half instead of a third, with one dead peer in three).
#[derive(Debug)]
pub struct RoundRobin {
    peers: Box<[Peer]>,
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    retry_cursor: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin over `peers`, weighted by [`Peer::weight`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoPeers`] for an empty list, [`ConfigError::DuplicatePeer`] when a peer
    /// appears twice.
    pub fn new(peers: Vec<Peer>) -> Result<Self, ConfigError> {
        check_peers(&peers)?;
        let schedule = schedule(&peers);
        Ok(Self {
            peers: peers.into_boxed_slice(),
            schedule,
            cursor: AtomicUsize::new(0),
            retry_cursor: AtomicUsize::new(0),
        })
    }

    /// The peers, in the order given.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }
}

impl PeerSelector for RoundRobin {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let cursor = if attempt.is_retry() {
            &self.retry_cursor
        } else {
            &self.cursor
        };
        // Draw turns until one falls on a peer that takes the attempt; while all are healthy, a
        // first attempt takes the first turn.
        for _ in 0..self.peers.len() {
            let turn = cursor.fetch_add(1, Ordering::Relaxed);
            let peer = &self.peers[self.schedule[turn % self.schedule.len()] as usize];
            if attempt.admits(peer) {
                return Some(peer.clone());
            }
        }
        self.peers
            .iter()
            .find(|p| attempt.admits(p))
            .or_else(|| attempt.best_untried(self.peers.iter()))
            .cloned()
    }
}

/// Each peer `weight / gcd` times, ordered by when its turns fall due (stride scheduling): peer
/// `i`'s `k`-th turn is due at `(k + 0.5) / w_i`.
fn schedule(peers: &[Peer]) -> Box<[u32]> {
    let g = peers.iter().map(Peer::weight).fold(0, gcd);
    let mut turns: Vec<(u64, u32)> = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let w = u64::from(p.weight() / g);
        // Due time (2k + 1) / (2w), compared exactly across peers by scaling to a common base.
        turns.extend((0..w).map(|k| ((2 * k + 1) * SCALE / (2 * w), i as u32)));
    }
    turns.sort_unstable();
    turns.into_iter().map(|(_, i)| i).collect()
}

/// A common multiple large enough to order due times of weights up to `MAX_WEIGHT`.
const SCALE: u64 = 1 << 40;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(weights: &[u32]) -> Vec<Peer> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Peer::builder(format!("127.0.0.1:{}", 1000 + i))
                    .with_weight(*w)
                    .build()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn equal_weights_take_turns() {
        let rr = RoundRobin::new(peers(&[1, 1, 1])).unwrap();
        let order: Vec<u16> = (0..6)
            .map(|_| rr.select(&Attempt::new(&[], None)).unwrap().addr().port())
            .collect();
        assert_eq!(order, [1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn weights_set_the_share_and_turns_interleave() {
        let rr = RoundRobin::new(peers(&[3, 1])).unwrap();
        assert_eq!(&*rr.schedule, &[0, 0, 1, 0]);
        let rr = RoundRobin::new(peers(&[200, 400])).unwrap();
        assert_eq!(&*rr.schedule, &[1, 0, 1]);
    }
}
