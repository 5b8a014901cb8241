//! The retry budget's floor: retries allowed at a steady rate however light the traffic, with a
//! bounded burst, as a token bucket (the generic cell rate algorithm, GCRA, in
//! one atomic word: the time at which the bucket would be full again).
//!
//! It replaces a reserve of `rate × window` retries, which could all be spent at once: with
//! every peer down and each failure costing a timeout, requests were few, the reserve went in
//! the first seconds (every request retried to its cap) and came back whole when those retries
//! left the window. A bucket refills at its rate and holds a few tokens at most: no burst beyond
//! them, at any time.
//!
//! This file depends on nothing but `crate::sync`, so that `tests/loom.rs` can model-check it
//! (its unit tests are in `budget.rs`, outside the model).

use crate::sync::atomic::{AtomicU64, Ordering};

/// How far ahead tokens may be spent.
const AHEAD_US: u64 = 10_000_000;

#[derive(Debug)]
pub(crate) struct Floor {
    /// Microseconds between two tokens; 0 for no floor.
    interval: u64,
    /// How far the next token's time may run ahead of now: the burst less one token.
    tolerance: u64,
    /// When the next token is due (µs on the budget's clock): GCRA's theoretical arrival time.
    due: AtomicU64,
}

impl Floor {
    /// `per_second` tokens a second, `burst` (at least 1) at most at once.
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let interval = match per_second {
            0 => 0,
            n => (1_000_000 / u64::from(n)).max(1),
        };
        Self {
            interval,
            tolerance: interval * u64::from(burst.saturating_sub(1)),
            due: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now` (µs); `false` when the bucket is empty.
    pub(crate) fn take(&self, now: u64) -> bool {
        self.interval != 0
            && self
                .due
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |due| {
                    let next = due.max(now);
                    (next - now <= self.tolerance).then_some(next + self.interval)
                })
                .is_ok()
    }

    /// Spends a token at `now` whether or not one is there: when the bucket is empty, the
    /// next ones are spent ahead (up to 10 s of them), so that a steady stream of spends at
    /// the bucket's rate or more leaves nothing for [`take`](Self::take).
    pub(crate) fn spend(&self, now: u64) {
        if self.interval != 0 {
            let _ = self
                .due
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |due| {
                    Some((due.max(now) + self.interval).min(now + AHEAD_US))
                });
        }
    }

    /// Puts back a token taken (the bucket never holds more than its burst).
    pub(crate) fn give_back(&self) {
        if self.interval != 0 {
            let _ = self
                .due
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |due| {
                    Some(due.saturating_sub(self.interval))
                });
        }
    }

    /// Tokens in the bucket at `now`.
    pub(crate) fn available(&self, now: u64) -> u64 {
        if self.interval == 0 {
            return 0;
        }
        let ahead = self.due.load(Ordering::Acquire).saturating_sub(now);
        (self.tolerance + self.interval).saturating_sub(ahead) / self.interval
    }
}
