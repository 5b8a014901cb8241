//! Exponential backoff with full jitter.

use std::time::Duration;

use crate::error::{check_timeout, ConfigError};
use crate::rng::Rng;

/// Exponential backoff with full jitter: before retry `n` (from 1), wait a uniformly random time
/// in `[0, min(max, base * 2^(n-1))]`.
///
/// Full jitter spreads the retries of many clients that failed at the same moment, which is what
/// keeps a recovering upstream from being hit by a synchronized wave ("Exponential Backoff And
/// Jitter", AWS Architecture Blog, 2015). The randomness is the crate's lock-free SplitMix64
/// stream, seeded per process and backoff, or by [`with_seed`](Self::with_seed) for reproducible
/// tests.
///
/// # Default
///
/// Base 25 ms, cap 250 ms: Envoy's retry back-off defaults. A failover retry goes to another
/// peer, so it needs no long wait for the failed one to recover; the short, jittered pause only
/// breaks up bursts, and the [`RetryBudget`](crate::RetryBudget) is what bounds retry load.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    rng: Rng,
}

/// Longest base or cap accepted.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Backoff {
    /// A backoff starting at `base` and doubling up to `max`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] or [`ConfigError::TimeoutTooLong`] when `base` or `max` is
    /// zero or over 60 s, and [`ConfigError::OutOfRange`] when `base > max`. Use
    /// [`Backoff::none`] for no backoff at all.
    pub fn new(base: Duration, max: Duration) -> Result<Self, ConfigError> {
        check_timeout("backoff base", base, MAX_BACKOFF)?;
        check_timeout("backoff cap", max, MAX_BACKOFF)?;
        if base > max {
            return Err(ConfigError::OutOfRange {
                what: "backoff base",
                value: format!("{base:?}"),
                range: "at most the backoff cap",
            });
        }
        Ok(Self::unchecked(base, max))
    }

    /// No wait between attempts.
    pub fn none() -> Self {
        Self::unchecked(Duration::ZERO, Duration::ZERO)
    }

    fn unchecked(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            rng: Rng::new(),
        }
    }

    /// Seeds the jitter, so that the same seed gives the same delays in the same order.
    #[must_use]
    pub fn with_seed(self, seed: u64) -> Self {
        self.rng.seed(seed);
        self
    }

    /// The upper bound of the wait before retry `retry` (from 1): `min(max, base * 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << doublings.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random wait in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        let r = self.rng.next();
        // A 53-bit fraction in [0, 1].
        let unit = (r >> 11) as f64 / ((1u64 << 53) - 1) as f64;
        ceiling.mul_f64(unit)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::unchecked(Duration::from_millis(25), Duration::from_millis(250))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_delays() {
        let ms = Duration::from_millis;
        let a = Backoff::new(ms(10), ms(100)).unwrap().with_seed(7);
        let b = Backoff::new(ms(10), ms(100)).unwrap().with_seed(7);
        let da: Vec<_> = (1..10).map(|n| a.delay(n)).collect();
        let db: Vec<_> = (1..10).map(|n| b.delay(n)).collect();
        assert_eq!(da, db);
    }

    #[test]
    fn rejects_bad_bounds() {
        let ms = Duration::from_millis;
        assert!(Backoff::new(ms(0), ms(10)).is_err());
        assert!(Backoff::new(ms(20), ms(10)).is_err());
        assert!(Backoff::new(ms(1), Duration::from_secs(3600)).is_err());
        assert_eq!(Backoff::none().delay(5), Duration::ZERO);
    }
}
