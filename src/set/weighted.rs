//! The weighted order of a set's peers, made once per snapshot.

use crate::peer::Peer;

/// Each peer `weight / gcd` times, ordered by when its turns fall due (stride scheduling): peer
/// `i`'s `k`-th turn is due at `(k + 0.5) / w_i`.
pub(crate) fn schedule(peers: &[Peer]) -> Box<[u32]> {
    let g = peers.iter().map(Peer::weight).fold(0, gcd).max(1);
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
