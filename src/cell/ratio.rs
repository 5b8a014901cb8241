//! A peer's failure ratio over a sliding window: requests and failures counted in two tumbling
//! windows, the current one and the one before, the older one weighed by the share of it that
//! the sliding window still covers. Each window is one atomic word holding its number and its
//! two counts, so a window turns over and restarts its counts in the same atomic step.
//!
//! Time is passed in, as milliseconds on the peer's clock.

use crate::sync::atomic::{AtomicU64, Ordering};

/// When a failure ratio ejects a peer: `percent` of at least `min_requests` requests failed
/// over the last `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RatioRule {
    pub(crate) percent: u8,
    pub(crate) min_requests: u32,
    pub(crate) window_ms: u64,
}

/// 32 bits of window number (it never wraps: 4 billion windows), 16 of requests and 16 of
/// failures (counting stops at 65,535 requests a window, both counts together, which leaves
/// the ratio a sample of the window's first requests).
const COUNT_BITS: u32 = 16;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = 0xffff_ffff;

fn pack(epoch: u64, requests: u64, failures: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | failures
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (
        word >> (2 * COUNT_BITS),
        (word >> COUNT_BITS) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

#[derive(Debug)]
pub(crate) struct Ratio {
    /// Even and odd windows.
    windows: [AtomicU64; 2],
}

impl Ratio {
    pub(crate) fn new() -> Self {
        Self {
            windows: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts a request that ended at `now_ms`, failed or not.
    pub(crate) fn count(&self, now_ms: u64, failed: bool, rule: &RatioRule) {
        let epoch = (now_ms / rule.window_ms) & EPOCH_MASK;
        let window = &self.windows[(epoch % 2) as usize];
        let _ = window.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let (seen, requests, failures) = unpack(word);
            let (requests, failures) = match seen {
                e if e == epoch && word != 0 => (requests, failures),
                // The window after this caller's (it read the clock a window ago, and the
                // slot turned since): its count is dropped rather than wipe the newer one's.
                e if e == epoch.wrapping_add(2) & EPOCH_MASK => return None,
                // An older window, or none yet: this one starts afresh.
                _ => (0, 0),
            };
            // Saturated counts stop together, so the ratio they give stays right.
            if requests >= COUNT_MAX {
                return None;
            }
            Some(pack(epoch, requests + 1, failures + u64::from(failed)))
        });
    }

    /// Whether the last `window_ms` failed `percent` of at least `min_requests` requests, at
    /// `now_ms`.
    pub(crate) fn tripped(&self, now_ms: u64, rule: &RatioRule) -> bool {
        let epoch = (now_ms / rule.window_ms) & EPOCH_MASK;
        let previous = epoch.wrapping_sub(1) & EPOCH_MASK;
        let counts = |e: u64| {
            let (seen, requests, failures) =
                unpack(self.windows[(e % 2) as usize].load(Ordering::Relaxed));
            if seen == e {
                (requests as f64, failures as f64)
            } else {
                (0.0, 0.0)
            }
        };
        let (requests, failures) = counts(epoch);
        let (old_requests, old_failures) = counts(previous);
        // The sliding window covers this share of the previous one.
        let covered = 1.0 - (now_ms % rule.window_ms) as f64 / rule.window_ms as f64;
        let requests = requests + old_requests * covered;
        let failures = failures + old_failures * covered;
        requests >= f64::from(rule.min_requests)
            && failures * 100.0 >= f64::from(rule.percent) * requests
    }

    /// Forgets every count (the peer was ejected: it starts afresh when it is back).
    pub(crate) fn reset(&self) {
        for window in &self.windows {
            window.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: RatioRule = RatioRule {
        percent: 30,
        min_requests: 10,
        window_ms: 10_000,
    };

    fn run(r: &Ratio, from_ms: u64, n: u64, fail_every: u64) {
        for i in 0..n {
            r.count(from_ms + i, fail_every != 0 && i % fail_every == 0, &RULE);
        }
    }

    #[test]
    fn thirty_percent_trips_and_one_percent_does_not() {
        let bad = Ratio::new();
        run(&bad, 1_000, 30, 3);
        assert!(bad.tripped(1_100, &RULE));
        let good = Ratio::new();
        run(&good, 1_000, 300, 100);
        assert!(!good.tripped(1_400, &RULE));
    }

    #[test]
    fn too_few_requests_judge_nothing() {
        let r = Ratio::new();
        run(&r, 1_000, 9, 1);
        assert!(
            !r.tripped(1_100, &RULE),
            "9 failures of 9, under the volume"
        );
        r.count(1_200, true, &RULE);
        assert!(r.tripped(1_200, &RULE));
    }

    #[test]
    fn the_previous_window_fades_as_the_window_slides() {
        let r = Ratio::new();
        run(&r, 9_000, 20, 1);
        // Halfway into the next window, half of the previous one counts: 10 requests, all
        // failed.
        assert!(r.tripped(15_000, &RULE));
        // Then successes: 10 failures of 30 (33 %) still trip, 10 of 40 (25 %) not.
        run(&r, 15_000, 20, 0);
        assert!(r.tripped(15_000, &RULE));
        run(&r, 15_000, 10, 0);
        assert!(!r.tripped(15_000, &RULE));
        // Two windows on, the old failures are gone.
        r.count(31_000, false, &RULE);
        assert!(!r.tripped(31_000, &RULE));
    }

    #[test]
    fn a_window_two_turns_old_is_started_afresh_and_a_reset_forgets() {
        let r = Ratio::new();
        run(&r, 1_000, 20, 1);
        run(&r, 21_000, 20, 0);
        assert!(
            !r.tripped(21_100, &RULE),
            "the failures were two windows ago"
        );
        run(&r, 21_100, 20, 1);
        assert!(r.tripped(21_200, &RULE));
        r.reset();
        assert!(!r.tripped(21_200, &RULE));
    }

    #[test]
    fn a_slot_idle_for_long_starts_afresh() {
        let r = Ratio::new();
        run(&r, 1_000, 20, 1);
        // Many windows later (past any 16-bit wrap), a new count starts the slot afresh.
        let later = 70_000 * RULE.window_ms;
        r.count(later, false, &RULE);
        assert!(!r.tripped(later, &RULE));
        run(&r, later, 20, 1);
        assert!(r.tripped(later, &RULE), "counting again");
    }

    #[test]
    fn a_late_caller_does_not_wipe_a_newer_window() {
        let r = Ratio::new();
        run(&r, 20_000, 20, 1);
        // A caller whose clock reads an older window of the same slot (window 0, where window
        // 2 is counting): its count is dropped, and nothing is wiped.
        r.count(0, false, &RULE);
        assert!(r.tripped(20_100, &RULE));
    }
}
