//! The power of two choices, shared by the load-aware selectors, and the random numbers they
//! draw with.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::peer::Peer;
use crate::select::slow_start::{self, SlowStart};
use crate::select::{Attempt, PanicThreshold};
use crate::set::PeerSet;

/// The constructors, settings and accessors of a selector built on [`TwoChoices`] (a field
/// `inner`), alike for each; `$what` begins their documentation.
macro_rules! two_choices_api {
    ($ty:ident, $what:literal) => {
        impl $ty {
            #[doc = concat!($what, " over `peers`, weighted by [`Peer::weight`](crate::Peer::weight).")]
            ///
            /// # Errors
            ///
            /// As [`PeerSet::new`](crate::PeerSet::new).
            pub fn new(
                peers: Vec<$crate::Peer>,
            ) -> Result<Self, $crate::error::ConfigError> {
                $crate::PeerSet::new(peers).map(Self::from_set)
            }

            #[doc = concat!($what, " over `set`, following its changes.")]
            pub fn from_set(set: $crate::PeerSet) -> Self {
                Self {
                    inner: $crate::select::p2c::TwoChoices::new(set),
                }
            }

            /// Seeds the random draws, for reproducible runs.
            pub fn with_seed(self, seed: u64) -> Self {
                self.inner.seed(seed);
                self
            }

            /// As [`RoundRobin::with_panic_threshold`](crate::RoundRobin::with_panic_threshold).
            ///
            /// # Errors
            ///
            /// [`ConfigError::OutOfRange`](crate::ConfigError::OutOfRange) for a share outside
            /// 0.0..=1.0.
            pub fn with_panic_threshold(
                mut self,
                share: f64,
            ) -> Result<Self, $crate::error::ConfigError> {
                self.inner.panic = $crate::select::PanicThreshold::new(share)?;
                Ok(self)
            }

            /// Ramps up the weight of a peer that joins traffic
            /// ([`SlowStart`](crate::SlowStart)).
            pub fn with_slow_start(mut self, slow_start: $crate::SlowStart) -> Self {
                self.inner.slow_start = Some(slow_start);
                self
            }

            /// The peers now.
            pub fn peers(&self) -> std::sync::Arc<$crate::set::Snapshot> {
                self.inner.set.peers()
            }

            /// The set it chooses from.
            pub fn set(&self) -> &$crate::PeerSet {
                &self.inner.set
            }
        }
    };
}
pub(crate) use two_choices_api;

/// What the power-of-two-choices selectors share: their set, their random draws, panic mode and
/// slow start. Each brings its own cost.
#[derive(Debug)]
pub(crate) struct TwoChoices {
    pub(crate) set: PeerSet,
    rng: Rng,
    pub(crate) panic: PanicThreshold,
    pub(crate) slow_start: Option<SlowStart>,
}

impl TwoChoices {
    pub(crate) fn new(set: PeerSet) -> Self {
        Self {
            set,
            rng: Rng::new(),
            panic: PanicThreshold::NEVER,
            slow_start: None,
        }
    }

    pub(crate) fn seed(&self, seed: u64) {
        self.rng.seed(seed);
    }

    /// `p`'s weight now: slow start ramps it.
    pub(crate) fn weight(&self, p: &Peer) -> f64 {
        f64::from(p.weight()) * slow_start::factor(self.slow_start.as_ref(), p)
    }

    /// The cheaper by `cost` of two peers of the set drawn for `attempt`.
    pub(crate) fn select(
        &self,
        attempt: &Attempt<'_>,
        cost: impl Fn(&Peer, &Peer) -> (f64, f64),
    ) -> Option<Peer> {
        let snapshot = self.set.snapshot();
        let peers = snapshot.peers();
        let panic = self.panic.reached(peers);
        choose(peers, attempt, panic, &self.rng, cost).cloned()
    }
}

/// Random numbers for selection: splitmix64 over a shared counter. Lock-free, and racing threads
/// each get a different number.
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(0x853c_49e6_748f_ea9b))
    }

    /// Restarts the sequence from `seed`, for reproducible runs.
    pub(crate) fn seed(&self, seed: u64) {
        self.0.store(seed, Ordering::Relaxed);
    }

    pub(crate) fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The first peer from `start` on (wrapping) that takes the attempt.
fn first_from<'p>(
    peers: &'p [Peer],
    start: usize,
    attempt: &Attempt<'_>,
    panic: bool,
) -> Option<&'p Peer> {
    let (head, tail) = peers.split_at(start);
    tail.iter().chain(head).find(|p| attempt.takes(p, panic))
}

/// Of two peers drawn at random, the one of lower `cost`. Each draw starts at a random peer and
/// takes the first from there that the attempt admits, so ejected and already-tried peers are
/// skipped; when none is admitted, the best untried peer (panic mode).
fn choose<'p>(
    peers: &'p [Peer],
    attempt: &Attempt<'_>,
    panic: bool,
    rng: &Rng,
    cost: impl Fn(&Peer, &Peer) -> (f64, f64),
) -> Option<&'p Peer> {
    let n = peers.len();
    if n == 0 {
        return None;
    }
    let r = rng.next();
    let i = (r % n as u64) as usize;
    let Some(a) = first_from(peers, i, attempt, panic) else {
        return attempt.best_untried(peers.iter());
    };
    if n == 1 {
        return Some(a);
    }
    // The second draw starts at another random peer.
    let j = (i + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
    let b = first_from(peers, j, attempt, panic).unwrap_or(a);
    if a.same(b) {
        return Some(a);
    }
    let (cost_a, cost_b) = cost(a, b);
    Some(if cost_b < cost_a { b } else { a })
}
