//! A retry budget: retries limited to a share of recent requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{check_timeout, ConfigError};
use crate::retry::floor::Floor;
use crate::retry::window::Window;

/// Limits retries to a ratio of recent requests, or a small floor per second where that is
/// more.
///
/// # Why a budget, and not only a count
///
/// An attempt cap bounds what one request can do, not what the whole proxy does. With 3 attempts a
/// request and an upstream tier that is failing for everyone, every request becomes three: the load
/// on a cluster that is already struggling triples just when it can least take it, and the retries
/// themselves keep it down (a retry storm). A budget bounds the sum instead: with the default ratio
/// of 0.2, retries add at most 20 % to the load (beyond the retries it does not charge, below: each
/// adds one attempt at most to a request whose first went where nothing was done, or to a peer that
/// broke under it). While failures are rare, every one of them is still retried; when they are
/// everywhere, retrying stops being worth it, and the budget says so. The floor lets a proxy with
/// little traffic retry at all. This is the design of Finagle's `RetryBudget` and of tower's
/// `TpsBudget`, with one change:
///
/// # The floor cannot burst
///
/// Finagle and tower keep the floor as a reserve of `min_per_second × window` retries, added to
/// the ratio's share, and usable all at once. With every peer down and each failure costing a
/// timeout, requests are few: the reserve goes in the first seconds (every request retried to its
/// attempt cap), and comes back whole when those retries leave the window, so retries come in
/// bursts of three attempts a request every `window`. Here the floor is a token bucket: it refills
/// at `min_per_second` and holds a few tokens at most (20,
/// [`with_floor_burst`](Self::with_floor_burst)), enough for the failures of a proxy's first
/// moments, before the ratio has requests to count. And it is not added to the ratio's
/// share: every retry spends a floor token when one is there, and a retry beyond the ratio's share
/// needs one. Retries stay within the larger of the two, never their sum.
///
/// # What it charges
///
/// Every retry but a request's first after one of two failures:
/// - its connect failed or was abandoned before anything was sent (not a TLS handshake, which
///   costs the peer work): the retry is the request's first run anywhere;
/// - a stall cut ([`AdaptiveTimeouts`](crate::AdaptiveTimeouts)), made only on proof that the
///   peer is stuck, of a request whose peer broke under it: silent since the request began,
///   and not known stuck before. The retry is its first run on a peer that works.
///
/// Neither costs the working upstreams more than if the request had gone there first, so a
/// peer down or hung at deploy, met by a burst of requests before it is ejected, loses none of
/// them. Later retries are charged, and so is the cut of a request sent to a peer already
/// known stuck, or on one that answered anything while the request waited (a pool overloaded
/// as a whole answers now and then): a pool none of which works still costs a request about
/// one attempt more, not the attempt cap.
///
/// The count is kept in one-second slots over the window, with atomics and no lock. Withdrawals
/// racing within one second never overdraw the budget, and no count is lost when a slot moves on
/// to a new second (each count is one atomic word with its second; model-checked with loom).
/// Withdrawals racing across the turn of a second see the older second's retries a moment
/// late, and can overdraw by at most one each.
///
/// # Default
///
/// Ratio 0.2 (Finagle's and Envoy's 20 %), window 10 s (Finagle's), floor 3 retries per second
/// (Envoy's minimum of 3 concurrent retries, as a rate) with a burst of 20. Finagle's floor of 10
/// per second let an outage behind 16 clients with 400 ms timeouts (about 40 attempts a second)
/// run at 1.33 attempts per request; 3 keeps it at the ratio's 1.2 after the first second, and
/// still retries every failure of a proxy that serves a request a second.
#[derive(Debug)]
pub struct RetryBudget {
    window: Window,
    floor: Floor,
    min_per_second: u32,
    origin: Instant,
}

/// The floor's default burst.
const FLOOR_BURST: u32 = 20;

impl RetryBudget {
    /// A budget allowing `ratio` retries per request (0.0 to 10.0) counted over `window` (1 s
    /// to 300 s, whole seconds), or `min_per_second` retries a second (at most that many at
    /// once) where that is more.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a ratio outside 0.0..=10.0, and a timeout error for a
    /// window outside 1 s..=300 s.
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Result<Self, ConfigError> {
        if !(0.0..=10.0).contains(&ratio) {
            return Err(ConfigError::OutOfRange {
                what: "retry budget ratio",
                value: ratio.to_string(),
                range: "0.0..=10.0",
            });
        }
        let window = check_timeout("retry budget window", window, Duration::from_secs(300))?;
        let seconds = window.as_secs().max(1);
        Ok(Self {
            window: Window::new(ratio, 0.0, seconds),
            floor: Floor::new(min_per_second, FLOOR_BURST),
            min_per_second,
            origin: Instant::now(),
        })
    }

    /// How many retries the floor allows at once (20 by default; at least 1): retries beyond
    /// the ratio's share that a quiet proxy may make together, after which they come at
    /// `min_per_second`.
    #[must_use]
    pub fn with_floor_burst(mut self, burst: u32) -> Self {
        self.floor = Floor::new(self.min_per_second, burst.max(1));
        self
    }

    /// Counts one request (call once per request, on its first attempt).
    pub fn deposit(&self) {
        self.window.deposit(self.now().0);
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.take().is_some()
    }

    /// Takes one retry; `Some(true)` when it spent a floor token, `None` when the budget is
    /// spent.
    fn take(&self) -> Option<bool> {
        let (second, us) = self.now();
        if self.window.withdraw(second) {
            // Within the ratio's share: it spends the floor's next token too, ahead of time when
            // the bucket is empty, so that the floor adds only what the ratio does not cover.
            self.floor.spend(us);
            return Some(true);
        }
        // Beyond the ratio's share: a floor token. Not counted in the window, so that when it
        // leaves the window it frees no share of the ratio (no echo ten seconds on); the ratio's
        // own retries spend the floor's tokens, so the two are never added.
        if self.floor.take(us) {
            return Some(true);
        }
        None
    }

    /// Gives back a retry that was withdrawn but not made: to the ratio's share, and a token
    /// to the floor.
    pub fn refund(&self) {
        self.give_back(true);
    }

    /// Gives back a retry, and the floor token it spent when `token`.
    fn give_back(&self, token: bool) {
        self.window.refund(self.now().0);
        if token {
            self.floor.give_back();
        }
    }

    /// How many retries the budget would allow right now.
    pub fn remaining(&self) -> u64 {
        let (second, us) = self.now();
        self.window.remaining(second).max(self.floor.available(us))
    }

    /// The time since the budget was made: whole seconds from 1 (the window's slots), and
    /// microseconds (the floor's bucket).
    fn now(&self) -> (u64, u64) {
        let elapsed = self.origin.elapsed();
        (elapsed.as_secs() + 1, elapsed.as_micros() as u64)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 3, Duration::from_secs(10)).expect("the default budget is valid")
    }
}

/// A retry withdrawn from a budget and not yet made: dropped unspent (the retry never
/// happened, whichever way the request ended), it goes back to the budget.
#[derive(Debug)]
pub(crate) struct Withdrawn(Option<(Arc<RetryBudget>, bool)>);

impl Withdrawn {
    /// Withdraws one retry from `budget`, or `None` when it is spent. No budget: a free retry.
    pub(crate) fn from(budget: Option<&Arc<RetryBudget>>) -> Option<Self> {
        match budget {
            None => Some(Self(None)),
            Some(b) => b.take().map(|token| Self(Some((b.clone(), token)))),
        }
    }

    /// The retry is being made: keep it.
    pub(crate) fn spend(mut self) {
        self.0 = None;
    }
}

impl Drop for Withdrawn {
    fn drop(&mut self) {
        if let Some((budget, token)) = self.0.take() {
            budget.give_back(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let f = Floor::new(4, 4);
        assert_eq!(f.available(1_000), 4);
        for _ in 0..4 {
            assert!(f.take(1_000));
        }
        assert!(!f.take(1_000), "the burst at once, no more");
        assert!(
            !f.take(200_000),
            "the next token is due 250 ms after the first"
        );
        assert!(f.take(251_000));
        assert!(!f.take(251_000));
        f.give_back();
        assert!(f.take(251_000), "a token given back");
        // However long it stays unused, it holds its burst.
        assert_eq!(f.available(60_000_000), 4);
    }

    #[test]
    fn no_floor_gives_nothing() {
        let f = Floor::new(0, 10);
        assert!(!f.take(1));
        assert_eq!(f.available(1), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_one_second_at_once_then_its_rate() {
        let b = RetryBudget::new(0.5, 2, Duration::from_secs(3))
            .unwrap()
            .with_floor_burst(2);
        // No requests: the floor's burst, 2, where a reserve of 2/s over 3 s allowed 6.
        assert_eq!(b.remaining(), 2);
        assert!(b.withdraw() && b.withdraw());
        assert!(!b.withdraw(), "the floor is spent");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.withdraw(), "a token every 500 ms");
        assert!(!b.withdraw());
        // However long it waits, one second's worth.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.remaining(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_and_floor_are_not_added() {
        let b = RetryBudget::new(0.5, 2, Duration::from_secs(3))
            .unwrap()
            .with_floor_burst(2);
        // 10 requests allow 5 retries by the ratio; the floor's 2 tokens go with the first two.
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 5);
        for _ in 0..5 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw(), "5, not 5 + 2");
        b.refund();
        assert!(b.withdraw(), "a refund is spendable");
        // The ratio's own retries spent the floor's tokens ahead (5 of them, at 2 a second):
        // a second on, the floor has nothing to add yet; when they are paid off, it does.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !b.withdraw(),
            "the ratio's retries used the floor's next tokens"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.withdraw(), "and then it refills");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_with_few_requests_is_held_to_the_larger_share_every_second() {
        // 40 requests a second (16 clients, each failure a 400 ms timeout), every one failing
        // and retried as long as the budget allows: the default budget, second by second.
        let b = RetryBudget::default();
        let mut per_second = Vec::new();
        for _ in 0..30 {
            let mut retries = 0;
            for _ in 0..40 {
                b.deposit();
                while retries < 80 && b.withdraw() {
                    retries += 1;
                }
                tokio::time::advance(Duration::from_millis(25)).await;
            }
            per_second.push(retries);
        }
        // The ratio's 20 % of 40 is 8 a second, the floor 3: never 8 + 3, never a burst when
        // the first seconds' retries leave the window. The first second has the floor's burst.
        assert!(per_second[0] <= 8 + 20, "{per_second:?}");
        let after_first = &per_second[1..];
        assert!(after_first.iter().all(|&r| r <= 9), "{per_second:?}");
        let attempts: u32 = after_first.iter().map(|r| r + 40).sum();
        let ratio = f64::from(attempts) / (40.0 * after_first.len() as f64);
        assert!(ratio <= 1.21, "{ratio} attempts a request: {per_second:?}");
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(RetryBudget::new(-0.1, 0, Duration::from_secs(1)).is_err());
        assert!(RetryBudget::new(f64::NAN, 0, Duration::from_secs(1)).is_err());
        assert!(RetryBudget::new(0.2, 0, Duration::ZERO).is_err());
        assert!(RetryBudget::new(0.2, 0, Duration::from_secs(301)).is_err());
    }
}
