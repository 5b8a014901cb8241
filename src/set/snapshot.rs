//! What a selector reads: the set's peers at one moment, with their weighted order.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use arc_swap::Guard;

use super::weighted::Weighted;
use crate::peer::Peer;

/// The peers of a [`PeerSet`](super::PeerSet) at one moment, in order.
#[derive(Debug)]
pub struct Snapshot {
    pub(super) peers: Box<[Peer]>,
    pub(super) version: u64,
    /// Made with the snapshot, so a weighted selector has nothing to build when it picks.
    pub(super) weighted: Weighted,
}

impl Snapshot {
    /// The peers, in the set's order (names expanded in place, their addresses sorted).
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Which update this is: it grows with every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The peers in weighted order, as indices into [`peers`](Self::peers): each peer appears
    /// `weight` times (after dividing all weights by their greatest common divisor), spread out
    /// by stride scheduling so that a heavy peer's turns interleave with the others' rather than
    /// bunch. A weighted selector walks it with a cursor ([`RoundRobin`](crate::RoundRobin)
    /// does).
    pub fn weighted_order(&self) -> &[u32] {
        &self.weighted.order
    }

    /// The mean weight of the peers (1.0 for none).
    pub fn mean_weight(&self) -> f64 {
        self.weighted.mean
    }

    /// A peer drawn in proportion to its weight, as an index into [`peers`](Self::peers): the
    /// one whose share of the total weight holds `r`, 64 uniformly random bits, scaled to it.
    /// A binary search over cumulative weights made with the snapshot.
    ///
    /// # Panics
    ///
    /// When the snapshot has no peer.
    pub fn by_weight(&self, r: u64) -> usize {
        self.weighted.by_weight(r)
    }

    /// How many turns of the [weighted order](Self::weighted_order) after turn `from` peer `i`
    /// has its next turn: 1 to the order's length (its own turn at `from` again, a round
    /// later). For a walk that passes over the turns of peers that cannot take a request.
    ///
    /// # Panics
    ///
    /// When `i` is not a peer of the snapshot.
    pub fn turns_to_next(&self, i: usize, from: usize) -> usize {
        self.weighted
            .turns_to_next(i, from % self.weighted.order.len().max(1))
    }
}

impl Deref for Snapshot {
    type Target = [Peer];

    fn deref(&self) -> &[Peer] {
        &self.peers
    }
}

/// The current snapshot of a set, borrowed for one selection: loading it takes no lock and
/// allocates nothing. Hold it briefly (not across an `.await`); [`PeerSet::peers`](super::PeerSet::peers) gives one to
/// keep.
pub struct SnapshotRef(pub(super) Guard<Arc<Snapshot>>);

impl Deref for SnapshotRef {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl fmt::Debug for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
