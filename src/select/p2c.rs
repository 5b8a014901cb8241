//! The power of two choices, shared by the load-aware selectors: the draw of two candidates and
//! the choice between them, generic over what a selector compares (its [`Cost`]).
//!
//! What a selector brings is its [`Cost`]: an estimate of what one request alone would take
//! on a peer (learned latency; the same for every peer when only load counts). Load, the
//! requests in flight, is exact, and counted per unit of weight.
//!
//! Weights are applied here, by the algorithm, never folded into a cost: a cost divided by a
//! weight turns the weight into a priority as soon as the costs are equal (at zero load the
//! heavier peer would win every comparison). Instead, as in Envoy's weighted least-request:
//!
//! - the first candidate is drawn in proportion to weight, the second uniformly among the
//!   other candidates, each by rejection so that an ejected, suspected or already-tried peer
//!   passes its chance to a candidate chosen afresh (never to its neighbour in the set);
//! - when their loads per unit of weight differ, the lower `estimate x (1 + load / weight)`
//!   wins, the weight relative to the set's mean (tower's and Linkerd's `latency x (pending +
//!   1)` for equal weights);
//! - when their loads per unit of weight are equal (as at zero load), the weights decide, each
//!   of the two winning in proportion to its weight, unless one estimate is beyond the other's
//!   noise ([`NOISE`] times it): then the lower estimate wins. Within the noise, the costlier
//!   keeps part of its weight: all of it at equal estimates, none at `NOISE` times.
//!
//! Drawing the pair this way makes a pair `{i, j}` come up in proportion to `w_i + w_j`, so a
//! choice in proportion to weight within the pair gives each peer exactly its weight's share at
//! zero load, and under a load in proportion to weight. Slow start scales a ramping peer's
//! weight in the draw and in the choice alike, so its share is a ramp, not a step.

use crate::peer::Peer;
use crate::rng::Rng;
use crate::select::slow_start::{self, SlowStart};
use crate::select::{Attempt, PanicThreshold};
use crate::set::{PeerSet, Snapshot};

/// Draws by rejection before an exact scan of the candidates.
const TRIES: usize = 8;

/// The ratio of two estimates within which weights still count: the peak estimates of two peers
/// that answer alike differ by up to about 1.5 times on a busy machine (a peak estimate keeps
/// the worst answer of the last seconds), while a peer turned slow is 10 or 20 times slower.
pub(crate) const NOISE: f64 = 3.0;

/// What a [`TwoChoices`] selector compares (tower's `Load`), besides the load the algorithm
/// counts: [`InFlight`](crate::InFlight) (the same for every peer: least-request),
/// [`PeakLatency`](crate::PeakLatency) (learned latency: peak EWMA), or your own.
///
/// ```
/// use pingora_failover::{Cost, Peer, TwoChoices};
///
/// /// Prefers the peer that connects faster; load and weights still count.
/// #[derive(Debug, Default)]
/// struct ConnectTime;
///
/// impl Cost for ConnectTime {
///     fn estimates(&self, a: &Peer, b: &Peer) -> (f64, f64) {
///         let us = |p: &Peer| p.health().connect_time().map_or(1.0, |t| t.as_secs_f64() * 1e6);
///         (us(a), us(b))
///     }
/// }
///
/// let peers = vec![Peer::new("127.0.0.1:8080")?, Peer::new("127.0.0.1:8081")?];
/// let selector = TwoChoices::<ConnectTime>::new(peers)?;
/// # let _ = selector;
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
pub trait Cost: Send + Sync + 'static {
    /// What one request alone would take on `a` and on `b`, in any unit (lower is better); the
    /// same for both when only load counts. Called once per selection, with the two candidates.
    fn estimates(&self, a: &Peer, b: &Peer) -> (f64, f64);
}

/// One candidate as the choice sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// The [`Cost`] estimate.
    estimate: f64,
    /// Requests in flight.
    load: f64,
    /// The weight, slow start included.
    weight: f64,
    /// The weight over the set's mean weight.
    relative: f64,
}

impl Candidate {
    fn cost(&self) -> f64 {
        let load = self.load / self.relative.max(f64::MIN_POSITIVE);
        self.estimate.max(f64::MIN_POSITIVE) * (1.0 + load)
    }
}

/// The power of two choices over a [`PeerSet`], comparing candidates by `C` ([`Cost`]) and
/// their load, weighted. [`LeastRequest`](crate::LeastRequest) and
/// [`PeakEwma`](crate::PeakEwma) are two of them; bring your own [`Cost`] for another.
#[derive(Debug)]
pub struct TwoChoices<C> {
    draws: Draws,
    cost: C,
}

impl<C: Cost + Default> TwoChoices<C> {
    /// A selector over `peers`, weighted by [`Peer::weight`](crate::Peer::weight).
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`](crate::PeerSet::new).
    pub fn new(peers: Vec<Peer>) -> Result<Self, crate::error::ConfigError> {
        PeerSet::new(peers).map(Self::from_set)
    }

    /// A selector over `set`, following its changes.
    pub fn from_set(set: PeerSet) -> Self {
        Self::with_cost(set, C::default())
    }
}

impl<C: Cost> TwoChoices<C> {
    /// A selector over `set` that compares candidates by `cost`.
    pub fn with_cost(set: PeerSet, cost: C) -> Self {
        Self {
            draws: Draws::new(set),
            cost,
        }
    }

    /// Seeds the random draws, for reproducible runs. Without a seed, each selector draws from
    /// a seed of its own, different in every process.
    pub fn with_seed(self, seed: u64) -> Self {
        self.draws.seed(seed);
        self
    }

    /// As [`RoundRobin::with_panic_threshold`](crate::RoundRobin::with_panic_threshold).
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`](crate::ConfigError::OutOfRange) for a share outside
    /// 0.0..=1.0.
    pub fn with_panic_threshold(mut self, share: f64) -> Result<Self, crate::error::ConfigError> {
        self.draws.panic = PanicThreshold::new(share)?;
        Ok(self)
    }

    /// Ramps up the weight of a peer that joins traffic ([`SlowStart`]): its chance to be
    /// drawn, and its weight when compared, grow with the ramp.
    pub fn with_slow_start(mut self, slow_start: SlowStart) -> Self {
        self.draws.slow_start = Some(slow_start);
        self
    }

    /// The peers now.
    pub fn peers(&self) -> std::sync::Arc<Snapshot> {
        self.draws.set.peers()
    }

    /// The set it chooses from.
    pub fn set(&self) -> &PeerSet {
        &self.draws.set
    }

    /// What it compares candidates by.
    pub fn cost(&self) -> &C {
        &self.cost
    }
}

impl<C: Cost> crate::select::PeerSelector for TwoChoices<C> {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        self.draws.select(attempt, &self.cost)
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.draws.set)
    }
}

/// What the power-of-two-choices selectors share: their set, their random draws, panic mode and
/// slow start. Each brings its own [`Cost`].
#[derive(Debug)]
struct Draws {
    pub(crate) set: PeerSet,
    rng: Rng,
    pub(crate) panic: PanicThreshold,
    pub(crate) slow_start: Option<SlowStart>,
}

impl Draws {
    fn new(set: PeerSet) -> Self {
        Self {
            set,
            rng: Rng::new(),
            panic: PanicThreshold::NEVER,
            slow_start: None,
        }
    }

    fn seed(&self, seed: u64) {
        self.rng.seed(seed);
    }

    /// The share of its weight `p` has now: below 1 while it ramps up.
    fn ramp(&self, p: &Peer) -> f64 {
        slow_start::factor(self.slow_start.as_ref(), p)
    }

    /// The peer for `attempt`: of two candidates drawn from the set, the one `cost` prefers.
    fn select<C: Cost>(&self, attempt: &Attempt<'_>, cost: &C) -> Option<Peer> {
        let snapshot = self.set.snapshot();
        let peers = snapshot.peers();
        if peers.is_empty() {
            return None;
        }
        let panic = self.panic.reached(peers);
        let takes = |p: &Peer| attempt.takes(p, panic);
        let Some(a) = self.first(&snapshot, takes) else {
            return attempt.best_untried(peers.iter()).cloned();
        };
        let Some(b) = self.second(peers, a, takes) else {
            return Some(peers[a].clone());
        };
        let (pa, pb) = (&peers[a], &peers[b]);
        let (ea, eb) = cost.estimates(pa, pb);
        let mean = snapshot.mean_weight();
        let candidate = |p: &Peer, estimate| {
            let weight = f64::from(p.weight()) * self.ramp(p);
            Candidate {
                estimate,
                load: f64::from(p.health().in_flight()),
                weight,
                relative: weight / mean,
            }
        };
        let first = first_wins(candidate(pa, ea), candidate(pb, eb), self.rng.unit());
        Some(if first { pa } else { pb }.clone())
    }

    /// The first candidate: a peer that takes the attempt, drawn in proportion to its weight
    /// (slow start included). `None` when no peer takes it.
    fn first(&self, snapshot: &Snapshot, takes: impl Fn(&Peer) -> bool) -> Option<usize> {
        let peers = snapshot.peers();
        for _ in 0..TRIES {
            let i = snapshot.by_weight(self.rng.next());
            let p = &peers[i];
            if takes(p) {
                let ramp = self.ramp(p);
                if ramp >= 1.0 || self.rng.unit() < ramp {
                    return Some(i);
                }
            }
        }
        // Most of the weight is out: an exact draw over the peers that take the attempt.
        let weight = |p: &Peer| f64::from(p.weight()) * self.ramp(p);
        let total: f64 = peers.iter().filter(|p| takes(p)).map(weight).sum();
        let mut last = None;
        let mut left = self.rng.unit() * total;
        for (i, p) in peers.iter().enumerate().filter(|(_, p)| takes(p)) {
            left -= weight(p);
            if left < 0.0 {
                return Some(i);
            }
            last = Some(i);
        }
        // No weight at all (every candidate at the start of a ramp from zero), or rounding.
        last
    }

    /// The second candidate: another peer that takes the attempt, drawn uniformly. `None` when
    /// there is none.
    fn second(&self, peers: &[Peer], a: usize, takes: impl Fn(&Peer) -> bool) -> Option<usize> {
        let n = peers.len();
        if n < 2 {
            return None;
        }
        for _ in 0..TRIES {
            let j = self.rng.below(n as u64 - 1) as usize;
            let j = if j >= a { j + 1 } else { j };
            if takes(&peers[j]) {
                return Some(j);
            }
        }
        let others = |&(j, p): &(usize, &Peer)| j != a && takes(p);
        let count = peers.iter().enumerate().filter(others).count();
        if count == 0 {
            return None;
        }
        let k = self.rng.below(count as u64) as usize;
        peers
            .iter()
            .enumerate()
            .filter(others)
            .nth(k)
            .map(|(j, _)| j)
    }
}

/// Whether `a` wins over `b`, with `u` a uniform draw in `[0, 1)` for a choice by weight.
fn first_wins(a: Candidate, b: Candidate, u: f64) -> bool {
    // Loads per unit of weight, multiplied out: exact for whole numbers, and a peer of zero
    // weight (the start of a ramp from zero) with requests in flight is never less loaded.
    if a.load * b.weight != b.load * a.weight {
        let (ca, cb) = (a.cost(), b.cost());
        if ca != cb {
            return ca < cb;
        }
    }
    let (ea, eb) = (
        a.estimate.max(f64::MIN_POSITIVE),
        b.estimate.max(f64::MIN_POSITIVE),
    );
    // The costlier keeps the share of its weight its closeness allows.
    let kept = |ratio: f64| ((NOISE - ratio) / (NOISE - 1.0)).clamp(0.0, 1.0);
    let (wa, wb) = if ea > eb {
        (a.weight * kept(ea / eb), b.weight)
    } else {
        (a.weight, b.weight * kept(eb / ea))
    };
    u * (wa + wb) < wa
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate of `estimate` and `load`, of weight `weight` in a set of mean weight 1.
    fn c(estimate: f64, load: f64, weight: f64) -> Candidate {
        Candidate {
            estimate,
            load,
            weight,
            relative: weight,
        }
    }

    #[test]
    fn the_less_loaded_per_unit_of_weight_wins() {
        // 3 in flight on a weight of 4 against 1 on a weight of 1.
        assert!(first_wins(c(1.0, 3.0, 4.0), c(1.0, 1.0, 1.0), 0.99));
        assert!(!first_wins(c(1.0, 1.0, 1.0), c(1.0, 3.0, 4.0), 0.0));
        // Latency x load: 2 ms x 61 against 40 ms x 1.
        assert!(!first_wins(c(2.0, 60.0, 1.0), c(40.0, 0.0, 1.0), 0.0));
        // A weight of zero with a request in flight never wins.
        assert!(first_wins(c(1.0, 5.0, 1.0), c(1.0, 1.0, 0.0), 0.99));
    }

    #[test]
    fn at_equal_load_per_unit_of_weight_the_weights_decide_within_the_noise() {
        // Idle, weights 2 and 1: the first wins two draws in three.
        assert!(first_wins(c(1.0, 0.0, 2.0), c(1.0, 0.0, 1.0), 0.66));
        assert!(!first_wins(c(1.0, 0.0, 2.0), c(1.0, 0.0, 1.0), 0.67));
        // Loaded in proportion to weight: the same.
        assert!(first_wins(c(1.0, 4.0, 2.0), c(1.0, 2.0, 1.0), 0.66));
        assert!(!first_wins(c(1.0, 4.0, 2.0), c(1.0, 2.0, 1.0), 0.67));
        // Twice the estimate: the costlier keeps half its weight, and wins 1 draw in 3.
        assert!(first_wins(c(1.0, 0.0, 1.0), c(2.0, 0.0, 1.0), 0.66));
        assert!(!first_wins(c(1.0, 0.0, 1.0), c(2.0, 0.0, 1.0), 0.67));
        // Three times the estimate or more: the lower estimate always.
        assert!(first_wins(c(1.0, 0.0, 1.0), c(3.0, 0.0, 100.0), 0.999));
        assert!(!first_wins(c(20.0, 0.0, 1.0), c(1.0, 0.0, 1.0), 0.0));
        // A weight of zero never wins, idle or not.
        assert!(first_wins(c(1.0, 0.0, 1.0), c(1.0, 0.0, 0.0), 0.99));
    }
}
