//! A retry budget: retries limited to a share of recent requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{check_timeout, ConfigError};
use crate::retry::window::Window;

/// Limits retries to a ratio of recent requests, plus a small floor per second.
///
/// # Why a budget, and not only a count
///
/// An attempt cap bounds what one request can do, not what the whole proxy does. With 3 attempts
/// a request and an upstream tier that is failing for everyone, every request becomes three:
/// the load on a cluster that is already struggling triples just when it can least take it, and
/// the retries themselves keep it down (a retry storm). A budget bounds the sum instead: with the
/// default ratio of 0.2, retries add at most 20 % to the load, whatever happens. While failures
/// are rare, every one of them is still retried; when they are everywhere, retrying stops being
/// worth it, and the budget says so. The floor lets a proxy with little traffic retry at all.
/// This is the design of Finagle's `RetryBudget` and of tower's `TpsBudget`.
///
/// The count is kept in one-second slots over the window, with atomics and no lock. Withdrawals
/// racing within one second never overdraw the budget, and no count is lost when a slot moves on
/// to a new second (each count is one atomic word with its second; model-checked with loom).
/// Withdrawals racing across the turn of a second see the older second's retries a moment
/// late, and can overdraw by at most one each.
///
/// # Default
///
/// Ratio 0.2, floor 10 retries per second, window 10 s: Finagle's defaults.
#[derive(Debug)]
pub struct RetryBudget {
    window: Window,
    origin: Instant,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request (0.0 to 10.0) plus `min_per_second`
    /// retries per second, counted over `window` (1 s to 300 s, whole seconds).
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
        let floor = f64::from(min_per_second) * seconds as f64;
        Ok(Self {
            window: Window::new(ratio, floor, seconds),
            origin: Instant::now(),
        })
    }

    /// Counts one request (call once per request, on its first attempt).
    pub fn deposit(&self) {
        self.window.deposit(self.now_second());
    }

    /// Takes one retry from the budget; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        self.window.withdraw(self.now_second())
    }

    /// Gives back a retry that was withdrawn but not made.
    pub fn refund(&self) {
        self.window.refund(self.now_second());
    }

    /// How many retries the budget would allow right now.
    pub fn remaining(&self) -> u64 {
        self.window.remaining(self.now_second())
    }

    /// Whole seconds since the budget was made, from 1.
    fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs() + 1
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10, Duration::from_secs(10)).expect("the default budget is valid")
    }
}

/// A retry withdrawn from a budget and not yet made: dropped unspent (the retry never
/// happened, whichever way the request ended), it goes back to the budget.
#[derive(Debug)]
pub(crate) struct Withdrawn(Option<Arc<RetryBudget>>);

impl Withdrawn {
    /// Withdraws one retry from `budget`, or `None` when it is spent. No budget: a free retry.
    pub(crate) fn from(budget: Option<&Arc<RetryBudget>>) -> Option<Self> {
        match budget {
            None => Some(Self(None)),
            Some(b) if b.withdraw() => Some(Self(Some(b.clone()))),
            Some(_) => None,
        }
    }

    /// The retry is being made: keep it.
    pub(crate) fn spend(mut self) {
        self.0 = None;
    }
}

impl Drop for Withdrawn {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take() {
            budget.refund();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_then_ratio_then_window_expiry() {
        let b = RetryBudget::new(0.5, 2, Duration::from_secs(3)).unwrap();
        // Floor: 2/s over 3 s = 6 retries with no requests at all.
        assert_eq!(b.remaining(), 6);
        for _ in 0..6 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw(), "the floor is spent");
        // Ratio: 10 requests allow 5 more.
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 5);
        for _ in 0..5 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw(), "ratio spent");
        b.refund();
        assert!(b.withdraw(), "a refund is spendable");
        // After the window passes, everything counted has expired.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.remaining(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn old_slots_leave_the_window_one_second_at_a_time() {
        let b = RetryBudget::new(0.0, 1, Duration::from_secs(2)).unwrap();
        assert!(b.withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.withdraw());
        assert!(!b.withdraw(), "2 in the 2 s window");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.withdraw(), "the first second's retry expired");
        assert!(!b.withdraw());
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(RetryBudget::new(-0.1, 0, Duration::from_secs(1)).is_err());
        assert!(RetryBudget::new(f64::NAN, 0, Duration::from_secs(1)).is_err());
        assert!(RetryBudget::new(0.2, 0, Duration::ZERO).is_err());
        assert!(RetryBudget::new(0.2, 0, Duration::from_secs(301)).is_err());
    }
}
