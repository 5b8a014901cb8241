//! What a peer's times have taught: how long it takes to answer (a peak EWMA, for balancing),
//! what an answer typically takes (a plain mean, for the cut's limits) and how long a new
//! connection to it takes ([`Timing`]), each learned in one atomic word ([`Latency`]).
//!
//! The peak EWMA is Finagle's and Linkerd's peak-sensitive moving average.
//! A sample above the estimate replaces it at once (the peak): a peer that turns slow is seen as
//! slow by its first slow answer. A sample below it is blended in with a weight that grows with
//! the time since the last sample, and with no samples at all the estimate decays towards zero,
//! so that a peer nobody has asked for a while gets asked again. The decay is a pure function of
//! the stored estimate, its timestamp and the time now, so reading never writes.
//!
//! The estimate (microseconds, `f32`) and its timestamp (milliseconds on the peer's clock, 32
//! bits, compared with wrapping arithmetic) share one `u64`, so an update is a single
//! compare-and-swap and a reader never sees one without the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How fast the estimate forgets: the time constant of its exponential decay (10 s, as in
/// Finagle and Linkerd).
pub(crate) const DECAY_MS: f64 = 10_000.0;

/// No sample yet.
const EMPTY: u64 = u64::MAX;

/// The weight of a new sample in a plain moving average: about the last 20 samples count.
const MEAN_WEIGHT: f64 = 0.05;

/// The failure rate is kept as a moving average of outcomes (1 a failure, 0 a success), scaled
/// by this, in a [`Latency`] word, which decays towards zero without outcomes.
const RATE_SCALE: f64 = 1e6;

/// The weight of an outcome in the failure rate: about the last 20 count.
const RATE_WEIGHT: f64 = 0.05;

/// A failure rate below this (0.1 %) is not written down further on a success, so that a
/// healthy peer's successes write nothing.
const RATE_QUIET: f64 = 1e-3;

/// The longest a `Retry-After` holds up a peer's cost (ms).
const HOLD_MAX_MS: u64 = 60_000;

#[derive(Debug)]
pub(crate) struct Latency(AtomicU64);

fn pack(us: f32, now_ms: u64) -> u64 {
    (u64::from(us.to_bits()) << 32) | (now_ms & 0xffff_ffff)
}

fn unpack(word: u64) -> (f64, u64) {
    (
        f64::from(f32::from_bits((word >> 32) as u32)),
        word & 0xffff_ffff,
    )
}

/// Milliseconds from `at` to `now_ms` on the 32-bit wrapping clock; 0 when `at` is later (a
/// racing thread stamped a later millisecond than this one read).
fn since(at: u64, now_ms: u64) -> f64 {
    let elapsed = (now_ms & 0xffff_ffff).wrapping_sub(at) & 0xffff_ffff;
    if elapsed >= 1 << 31 {
        0.0
    } else {
        elapsed as f64
    }
}

/// The estimate `est` from `at`, decayed to `now` (both ms, 32-bit wrapping).
fn decayed(est: f64, at: u64, now_ms: u64) -> f64 {
    est * (-since(at, now_ms) / DECAY_MS).exp()
}

/// How long an average of outcomes holds before it starts to fade (ms).
const FADE_AFTER_MS: f64 = 10_000.0;

/// The average `est` from `at`, faded to `now`: it holds for 10 s, then decays as an estimate
/// does. Outcomes a second apart weigh as outcomes, not as time.
fn faded(est: f64, at: u64, now_ms: u64) -> f64 {
    est * (-(since(at, now_ms) - FADE_AFTER_MS).max(0.0) / DECAY_MS).exp()
}

impl Latency {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(EMPTY))
    }

    /// The estimate at `now_ms`, in microseconds; `None` before the first sample.
    pub(crate) fn estimate_us(&self, now_ms: u64) -> Option<f64> {
        match self.0.load(Ordering::Relaxed) {
            EMPTY => None,
            word => {
                let (est, at) = unpack(word);
                Some(decayed(est, at, now_ms))
            }
        }
    }

    /// Learns a sample of `us` microseconds taken at `now_ms`. With `peak_only`, a sample below
    /// the estimate is ignored (a failure that came quickly says nothing about how fast the peer
    /// answers).
    pub(crate) fn observe(&self, us: f64, now_ms: u64, peak_only: bool) {
        let us = us.max(1.0);
        self.update(now_ms, |word| {
            if word == EMPTY {
                return Some(us);
            }
            let (est, at) = unpack(word);
            let elapsed = since(at, now_ms);
            let now_est = decayed(est, at, now_ms);
            if us >= now_est {
                Some(us)
            } else if peak_only {
                None
            } else {
                // Blended into the estimate as it stands now: the older it is, the more the new
                // sample weighs, and a sample below it never raises it.
                let keep = (-elapsed / DECAY_MS).exp();
                Some(now_est * keep + us * (1.0 - keep))
            }
        });
    }

    /// Moves an average of outcomes, as it stands at `now_ms` ([`faded`](Self::faded)),
    /// `weight` of the way to a sample of `us` (no peak); with none yet, from zero.
    pub(crate) fn average(&self, us: f64, now_ms: u64, weight: f64) {
        self.update(now_ms, |word| {
            let now_est = self.faded_from(word, now_ms);
            Some(now_est + (us - now_est) * weight)
        });
    }

    /// An average of outcomes at `now_ms`: it holds for 10 s after the last, then fades
    /// towards zero; 0 before the first.
    pub(crate) fn faded(&self, now_ms: u64) -> f64 {
        self.faded_from(self.0.load(Ordering::Relaxed), now_ms)
    }

    fn faded_from(&self, word: u64, now_ms: u64) -> f64 {
        match word {
            EMPTY => 0.0,
            _ => {
                let (est, at) = unpack(word);
                faded(est, at, now_ms)
            }
        }
    }

    /// Whether the average, however it has faded since, is below `floor`: fading only lowers
    /// it, so the stored value answers without the clock or an exponential.
    fn below(&self, floor: f64) -> bool {
        match self.0.load(Ordering::Relaxed) {
            EMPTY => true,
            word => unpack(word).0 < floor,
        }
    }

    /// Replaces the estimate with what `next` makes of the current word (nothing when it
    /// returns `None`), stamped `now_ms` (or the word's own stamp, if a racing thread left a
    /// later one): one compare-and-swap, retried if another thread wrote in between.
    fn update(&self, now_ms: u64, next: impl Fn(u64) -> Option<f64>) {
        let mut word = self.0.load(Ordering::Relaxed);
        while let Some(est) = next(word) {
            let stamp = match word {
                EMPTY => now_ms,
                _ if since(word & 0xffff_ffff, now_ms) == 0.0 => word & 0xffff_ffff,
                _ => now_ms,
            };
            match self.0.compare_exchange_weak(
                word,
                pack(est as f32, stamp),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => word = seen,
            }
        }
    }
}

impl Latency {
    /// Learns a sample of `us` microseconds into a plain moving average (no peak, no decay):
    /// what the peer typically takes.
    pub(crate) fn observe_mean(&self, us: f64) {
        let us = us.max(1.0);
        self.update(0, |word| match word {
            EMPTY => Some(us),
            _ => {
                let (est, _) = unpack(word);
                Some(est + (us - est) * MEAN_WEIGHT)
            }
        });
    }

    /// The plain moving average, in microseconds; `None` before the first sample.
    pub(crate) fn mean_us(&self) -> Option<f64> {
        match self.0.load(Ordering::Relaxed) {
            EMPTY => None,
            word => Some(unpack(word).0),
        }
    }
}

/// The times learned of one peer.
#[derive(Debug)]
pub(crate) struct Timing {
    /// The time to the response header, as a peak EWMA.
    latency: Latency,
    /// The time to a new connection (a moving average).
    connect: Latency,
    /// The time to a new connection made one at a time, apart from requests (the warm-up's
    /// least of three), learned once at start-up (a moving average).
    idle_connect: Latency,
    /// The time to an answer of the liveness check's request (a moving average).
    check: Latency,
    /// The time to the response header, as a plain moving average.
    typical: Latency,
    /// The share of its recent requests that failed, as a time-decayed average.
    failures: Latency,
    /// Until when (ms on the peer's clock; 0: none) the peer asked, with a `Retry-After`, not
    /// to be sent requests: its cost is at least the time left until then.
    hold_until: AtomicU64,
}

fn from_us(us: f64) -> Duration {
    Duration::from_nanos((us * 1_000.0) as u64)
}

impl Timing {
    pub(crate) fn new() -> Self {
        Self {
            latency: Latency::new(),
            connect: Latency::new(),
            idle_connect: Latency::new(),
            check: Latency::new(),
            typical: Latency::new(),
            failures: Latency::new(),
            hold_until: AtomicU64::new(0),
        }
    }

    /// The peak EWMA in microseconds at `now_ms`.
    pub(crate) fn latency_us(&self, now_ms: u64) -> Option<f64> {
        self.latency.estimate_us(now_ms)
    }

    /// What weighs on the peer's cost besides its latency, at `now_ms`: its failure rate, and
    /// the floor a `Retry-After` puts under it (µs; 0 for none).
    pub(crate) fn penalty(&self, now_ms: u64) -> (f64, f64) {
        let floor = match self.hold_until.load(Ordering::Relaxed) {
            until if until > now_ms => (until - now_ms) as f64 * 1_000.0,
            _ => 0.0,
        };
        (self.failure_rate(now_ms), floor)
    }

    /// The share of its recent outcomes that failed, 0 to 1: a moving average over about the
    /// last 20, whatever their rate, which fades towards 0 from 10 s after the last outcome
    /// (time constant 10 s), so that a peer that lost its traffic to its failures gets it back.
    /// Below 0.1 % it reads 0 (where successes stop writing it down).
    pub(crate) fn failure_rate(&self, now_ms: u64) -> f64 {
        // A healthy peer's rate (below 0.1 %) is read on every selection and every success:
        // without the exponential.
        if self.failures.below(RATE_QUIET * RATE_SCALE) {
            return 0.0;
        }
        (self.failures.faded(now_ms) / RATE_SCALE).clamp(0.0, 1.0)
    }

    /// Counts an outcome into the failure rate: a failure, or a success (written only while
    /// the rate is above 0.1 %).
    pub(crate) fn learn_outcome(&self, failed: bool, now_ms: u64) {
        if failed {
            self.failures.average(RATE_SCALE, now_ms, RATE_WEIGHT);
        } else if self.failure_rate(now_ms) >= RATE_QUIET {
            self.failures.average(0.0, now_ms, RATE_WEIGHT);
        }
    }

    /// Learns a failed answer (a 5xx) that took `us` microseconds, ending at `now_ms`: a fast
    /// failure is not a fast answer. Only an answer slower than the estimate teaches the peak
    /// EWMA, as any failure; and a `Retry-After` of `hold_ms` holds the cost up to the time left
    /// of it (at most 60 s). The failure rate is counted apart
    /// ([`learn_outcome`](Self::learn_outcome)).
    pub(crate) fn learn_failed_answer(&self, us: f64, now_ms: u64, hold_ms: Option<u64>) {
        self.learn(us, now_ms, false);
        if let Some(hold) = hold_ms {
            self.hold_until
                .fetch_max(now_ms + hold.min(HOLD_MAX_MS), Ordering::Relaxed);
        }
    }

    /// Learns an attempt of `us` microseconds ending at `now_ms`: answered, or failed, when only
    /// a wait longer than the estimate counts (and the typical time learns nothing).
    pub(crate) fn learn(&self, us: f64, now_ms: u64, answered: bool) {
        self.latency.observe(us, now_ms, !answered);
        if answered {
            self.typical.observe_mean(us);
        }
    }

    /// What an answer typically takes; `None` before the first.
    pub(crate) fn typical(&self) -> Option<Duration> {
        self.typical.mean_us().map(from_us)
    }

    /// What a new connection takes; `None` before the first.
    pub(crate) fn connect(&self) -> Option<Duration> {
        self.connect.mean_us().map(from_us)
    }

    pub(crate) fn learn_connect(&self, took: Duration) {
        self.connect.observe_mean(took.as_secs_f64() * 1e6);
    }

    /// What a new connection made apart from requests takes; `None` before the first.
    pub(crate) fn idle_connect(&self) -> Option<Duration> {
        self.idle_connect.mean_us().map(from_us)
    }

    pub(crate) fn learn_idle_connect(&self, took: Duration) {
        self.idle_connect.observe_mean(took.as_secs_f64() * 1e6);
    }

    /// What the liveness check's request takes to be answered; `None` before the first.
    pub(crate) fn check(&self) -> Option<Duration> {
        self.check.mean_us().map(from_us)
    }

    pub(crate) fn learn_check(&self, took: Duration) {
        self.check.observe_mean(took.as_secs_f64() * 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_is_taken_at_once_and_a_fall_is_blended_in() {
        let l = Latency::new();
        assert_eq!(l.estimate_us(1), None);
        l.observe(1_000.0, 1, false);
        assert_eq!(l.estimate_us(1), Some(1_000.0));
        l.observe(20_000.0, 2, false);
        let peak = l.estimate_us(2).unwrap();
        assert!((peak - 20_000.0).abs() < 1.0, "{peak}");
        // A fast answer 100 ms later: decayed by 1 %, then moved 1 % of the way to the sample.
        l.observe(1_000.0, 102, false);
        let est = l.estimate_us(102).unwrap();
        assert!((19_550.0..19_700.0).contains(&est), "{est}");
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero_without_a_write() {
        let l = Latency::new();
        l.observe(10_000.0, 5, false);
        let later = l.estimate_us(5 + 10_000).unwrap();
        assert!((3_670.0..3_690.0).contains(&later), "e^-1 of it: {later}");
        assert_eq!(l.estimate_us(5), Some(10_000.0), "reading changed nothing");
    }

    #[test]
    fn a_quick_failure_does_not_lower_the_estimate() {
        let l = Latency::new();
        l.observe(5_000.0, 1, false);
        l.observe(10.0, 2, true);
        assert_eq!(l.estimate_us(2).map(|e| e.round()), Some(5_000.0));
        l.observe(900_000.0, 3, true);
        assert_eq!(l.estimate_us(3).map(|e| e.round()), Some(900_000.0));
    }

    #[test]
    fn the_mean_moves_a_twentieth_of_the_way_and_does_not_decay() {
        let l = Latency::new();
        assert_eq!(l.mean_us(), None);
        l.observe_mean(1_000.0);
        l.observe_mean(21_000.0);
        assert_eq!(l.mean_us(), Some(2_000.0));
    }

    #[test]
    fn the_failure_rate_is_the_share_failed_of_the_last_seconds_and_fades() {
        // An outcome every 10 ms for 30 s; every tenth or every hundredth a failure.
        let run = |fail_every: u64| {
            let t = Timing::new();
            for i in 1..=3_000u64 {
                t.learn_outcome(i % fail_every == 0, i * 10);
            }
            t
        };
        let (tenth, hundredth) = (run(10), run(100));
        // Just after a failure (the last outcome was one): a tenth reads about 12 %, a
        // hundredth 5 %, falling to nothing over the next ones.
        let rate = tenth.failure_rate(30_000);
        assert!((0.10..0.14).contains(&rate), "{rate}");
        let rate = hundredth.failure_rate(30_000);
        assert!((0.04..0.06).contains(&rate), "{rate}");
        let (rate, floor) = tenth.penalty(30_000);
        assert!((0.10..0.14).contains(&rate) && floor == 0.0, "{rate}");
        // Without outcomes it holds for 10 s, then fades: 10 s more, to e^-1 of it.
        assert_eq!(tenth.failure_rate(40_000), tenth.failure_rate(30_000));
        let later = tenth.failure_rate(50_000) / tenth.failure_rate(30_000);
        assert!((0.36..0.37).contains(&later), "{later}");
        // Outcomes a second apart weigh as outcomes: a peer failing every request reads near
        // 1 after 60 of them, not what a decay between them would leave.
        let slow = Timing::new();
        for i in 1..=60u64 {
            slow.learn_outcome(true, i * 1_000);
        }
        assert!(
            slow.failure_rate(60_000) > 0.95,
            "{}",
            slow.failure_rate(60_000)
        );
        // A thousand successes, then one failure: 5 %, not the whole of it.
        let once = Timing::new();
        for i in 1..=1_000u64 {
            once.learn_outcome(false, i);
        }
        once.learn_outcome(true, 1_001);
        assert!((0.049..0.051).contains(&once.failure_rate(1_001)));
        assert_eq!(
            Timing::new().penalty(5),
            (0.0, 0.0),
            "no outcome, no penalty"
        );
    }

    #[test]
    fn a_fast_failure_is_not_a_fast_answer() {
        let t = Timing::new();
        t.learn(20_000.0, 1, true);
        t.learn_failed_answer(100.0, 2, None);
        assert!(t.latency_us(2).is_some_and(|e| e > 19_990.0));
        assert_eq!(t.typical().map(|d| d.as_micros()), Some(20_000));
    }

    #[test]
    fn a_retry_after_holds_the_cost_up_until_it_ends() {
        let t = Timing::new();
        t.learn(1_000.0, 1, true);
        t.learn_failed_answer(100.0, 2, Some(2_000));
        assert_eq!(t.penalty(1_002).1, 1_000_000.0, "a second left");
        assert_eq!(t.penalty(2_002).1, 0.0);
        let never = Timing::new();
        never.learn_failed_answer(100.0, 1, Some(600_000));
        assert_eq!(never.penalty(1).1, 60_000_000.0, "60 s at most");
    }

    #[test]
    fn the_clock_may_wrap() {
        let l = Latency::new();
        let t = (1u64 << 32) - 10;
        l.observe(1_000.0, t, false);
        let est = l.estimate_us(t + 20).unwrap();
        assert!((990.0..1_000.0).contains(&est), "{est}");
    }
}
