//! The crate's random numbers: a lock-free SplitMix64 stream, seeded per process.
//!
//! Selection (the power of two choices, slow start's coin, a priority tier's draw, panic mode's
//! spread) and backoff jitter all draw from it. Each generator starts from a seed of its own
//! taken from [`RandomState`], which the standard library keys from the operating system's
//! randomness once per thread and varies for every new state: two proxies of one fleet, or two
//! selectors of one proxy, never draw in lockstep. Tests seed a generator to replay its draws.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014)
//! over one shared counter: a draw is one `fetch_add`, so racing threads never wait for each
//! other and each gets a different number. It is not a cryptographic generator, and needs not
//! be: nothing here is a secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A seedable, lock-free random number generator shared by every thread.
#[derive(Debug)]
pub(crate) struct Rng(AtomicU64);

impl Rng {
    /// A generator with a seed of its own, different in every process and for every generator.
    pub(crate) fn new() -> Self {
        Self::from_seed(fresh_seed())
    }

    /// A generator that replays the draws of `seed`.
    pub(crate) fn from_seed(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// Restarts the sequence from `seed`, for reproducible runs.
    pub(crate) fn seed(&self, seed: u64) {
        self.0.store(seed, Ordering::Relaxed);
    }

    /// The next 64 random bits.
    pub(crate) fn next(&self) -> u64 {
        mix(self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }

    /// A number in `[0, 1)`, with 53 random bits.
    pub(crate) fn unit(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `[0, n)` (`n` > 0), by Lemire's multiply-shift: no division, and a bias of
    /// at most `n / 2^64`.
    pub(crate) fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The generator of the process, for draws that have no selector of their own to seed (panic
/// mode's spread over candidates).
pub(crate) fn shared() -> &'static Rng {
    static SHARED: OnceLock<Rng> = OnceLock::new();
    SHARED.get_or_init(Rng::new)
}

/// A seed from the operating system's randomness, different at every call.
fn fresh_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(GAMMA);
    h.finish()
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_generator_has_a_seed_of_its_own() {
        let draws = |r: &Rng| (0..4).map(|_| r.next()).collect::<Vec<_>>();
        assert_ne!(draws(&Rng::new()), draws(&Rng::new()));
    }

    #[test]
    fn a_seed_replays_its_draws() {
        let (a, b) = (Rng::from_seed(7), Rng::new());
        b.seed(7);
        for _ in 0..10 {
            assert_eq!(a.next(), b.next());
        }
    }

    #[test]
    fn draws_stay_in_range_and_cover_it() {
        let r = Rng::from_seed(1);
        let mut seen = [0u32; 5];
        for _ in 0..5_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            seen[r.below(5) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (900..1100).contains(&c)), "{seen:?}");
    }
}
