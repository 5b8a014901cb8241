//! What the weighted selectors read from a snapshot, made once per snapshot: the weighted order
//! a round-robin walks, and the cumulative weights a random draw in proportion to weight
//! searches.

use crate::peer::Peer;

/// The weighted structures of one snapshot.
#[derive(Debug)]
pub(crate) struct Weighted {
    /// Each peer `weight / gcd` times, ordered by when its turns fall due (stride scheduling).
    pub(crate) order: Box<[u32]>,
    /// Where each peer's turns are in `order`, ascending: peer `i`'s are
    /// `positions[starts[i]..starts[i + 1]]`.
    starts: Box<[u32]>,
    positions: Box<[u32]>,
    /// The sum of the weights up to and including each peer.
    cumulative: Box<[u64]>,
    /// The mean weight (1.0 for no peers).
    pub(crate) mean: f64,
}

impl Weighted {
    pub(crate) fn new(peers: &[Peer]) -> Self {
        let order = schedule(peers);
        let mut starts = vec![0u32; peers.len() + 1];
        for &i in order.iter() {
            starts[i as usize + 1] += 1;
        }
        for i in 0..peers.len() {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut positions = vec![0u32; order.len()];
        for (at, &i) in order.iter().enumerate() {
            positions[fill[i as usize] as usize] = at as u32;
            fill[i as usize] += 1;
        }
        let cumulative: Box<[u64]> = peers
            .iter()
            .scan(0u64, |sum, p| {
                *sum += u64::from(p.weight());
                Some(*sum)
            })
            .collect();
        let mean = match cumulative.last() {
            Some(&total) => total as f64 / peers.len() as f64,
            None => 1.0,
        };
        Self {
            order,
            starts: starts.into_boxed_slice(),
            positions: positions.into_boxed_slice(),
            cumulative,
            mean,
        }
    }

    /// The peer whose share of the total weight holds `r` scaled to it (`r` uniform over
    /// `u64`): a draw in proportion to weight. There must be a peer.
    pub(crate) fn by_weight(&self, r: u64) -> usize {
        let total = *self.cumulative.last().expect("a peer");
        let x = ((u128::from(r) * u128::from(total)) >> 64) as u64;
        self.cumulative.partition_point(|&c| c <= x)
    }

    /// How many turns after `from` (1 to `order.len()`, wrapping) peer `i` has its next turn.
    pub(crate) fn turns_to_next(&self, i: usize, from: usize) -> usize {
        let mine = &self.positions[self.starts[i] as usize..self.starts[i + 1] as usize];
        let after = mine.partition_point(|&at| at as usize <= from);
        match mine.get(after) {
            Some(&at) => at as usize - from,
            None => mine[0] as usize + self.order.len() - from,
        }
    }
}

/// Each peer `weight / gcd` times, ordered by when its turns fall due (stride scheduling): peer
/// `i`'s `k`-th turn is due at `(k + 0.5) / w_i`. Leaving some peers out of it gives the same
/// schedule as made for the others alone: a walk that passes over the turns of ejected peers
/// spreads by weight over the rest.
fn schedule(peers: &[Peer]) -> Box<[u32]> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(weights: &[u32]) -> Vec<Peer> {
        crate::peer::weighted_for_tests(6100, weights)
    }

    #[test]
    fn the_next_turn_of_each_peer_is_found_wrapping() {
        let w = Weighted::new(&peers(&[3, 1]));
        assert_eq!(&*w.order, &[0, 0, 1, 0]);
        assert_eq!(w.turns_to_next(1, 0), 2);
        assert_eq!(
            w.turns_to_next(1, 2),
            4,
            "its own turn again, a round later"
        );
        assert_eq!(w.turns_to_next(0, 3), 1);
        assert_eq!(w.turns_to_next(0, 1), 2);
    }

    #[test]
    fn draws_by_weight_fall_in_proportion() {
        let w = Weighted::new(&peers(&[1, 2, 1]));
        assert_eq!(w.mean, 4.0 / 3.0);
        let quarter = 1u64 << 62;
        let got: Vec<usize> = (0..4).map(|k| w.by_weight(k * quarter)).collect();
        assert_eq!(got, [0, 1, 1, 2]);
        assert_eq!(w.by_weight(u64::MAX), 2);
    }
}
