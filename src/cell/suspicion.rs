//! In-flight suspicion: the requests waiting on a peer for their response header, when it last
//! answered, what its liveness checks found, and when the evidence last showed it stuck.
//!
//! The count (high 16 bits) and the time it last rose from zero (ms on the peer's clock, low 48
//! bits) share one word, so a reader never pairs a count with the time of another spell.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How long a cut keeps its peer suspected once no request waits on it (ms). The requests
/// caught on a stuck peer are cut and retried elsewhere together, before enough of their
/// retries have answered to eject it (5 by default), and a request sent in between would wait
/// on the peer again: a second wave. After this, with nothing to clear the evidence, a request
/// may go to the peer again. Evidence without a cut (the stall cut off, or a request it may not
/// cut) keeps a peer suspected only while requests wait on it: a peer that is only slow is not
/// held out.
const IDLE_MS: u64 = 1_000;

const TIME: u64 = (1 << 48) - 1;
const ONE: u64 = 1 << 48;

/// The liveness checks of a peer, as they bear on one wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// A check that began after the wait began passed: the peer is alive.
    Passed,
    /// A check that began after the wait began failed: the peer is stuck.
    Failed,
    /// A check is running.
    Checking,
    /// No check since the wait began.
    Unknown,
}

#[derive(Debug, Default)]
pub(crate) struct Waiting {
    word: AtomicU64,
    /// When the peer last answered (ms), 0 before its first answer.
    answered_at: AtomicU64,
    /// A liveness check is running.
    checking: AtomicBool,
    /// When the latest liveness check that passed began (ms), 0 before one.
    passed_from: AtomicU64,
    /// When the latest liveness check that failed ended (ms), 0 before one.
    failed_until: AtomicU64,
    /// When the evidence last showed the peer stuck (ms), 0 before.
    stuck_at: AtomicU64,
    /// When the evidence first showed the peer stuck since its last answer or passing check
    /// (ms), 0 before.
    stuck_from: AtomicU64,
    /// When a request was last cut on the evidence (ms), 0 before.
    cut_at: AtomicU64,
}

impl Waiting {
    /// A request starts waiting at `now_ms`.
    pub(crate) fn start(&self, now_ms: u64) {
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(match w >> 48 {
                    0 => ONE | (now_ms & TIME),
                    n if n < 0xffff => w + ONE,
                    _ => w,
                })
            });
    }

    /// A request stops waiting (its header came, or it ended without one).
    pub(crate) fn stop(&self) {
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(match w >> 48 {
                    0 | 1 => 0,
                    _ => w - ONE,
                })
            });
    }

    /// The peer answered at `now_ms`.
    pub(crate) fn answered(&self, now_ms: u64) {
        self.answered_at.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// When the peer last answered (ms), 0 before its first answer.
    pub(crate) fn answered_at(&self) -> u64 {
        self.answered_at.load(Ordering::Relaxed)
    }

    /// How many requests wait for their header.
    pub(crate) fn count(&self) -> u64 {
        self.word.load(Ordering::Relaxed) >> 48
    }

    /// Takes the peer's one liveness check slot, unless a check is running: whether it did.
    /// Whoever took it gives it back with [`release_check`](Self::release_check).
    pub(crate) fn start_check(&self) -> bool {
        self.checking
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The check that began at `from_ms` ended at `now_ms`, and `passed` or not.
    pub(crate) fn finish_check(&self, from_ms: u64, now_ms: u64, passed: bool) {
        if passed {
            self.passed_from.fetch_max(from_ms, Ordering::AcqRel);
        } else {
            self.failed_until.fetch_max(now_ms, Ordering::AcqRel);
            // Unanswered: the peer is stuck from now, for new requests too.
            self.stuck(now_ms);
        }
    }

    /// Gives the check slot back.
    pub(crate) fn release_check(&self) {
        self.checking.store(false, Ordering::Release);
    }

    /// What the liveness checks say of a wait that began at `since_ms`: a check that began
    /// after it and passed shows the peer alive; one that failed after it, or less than
    /// `slack_ms` before it with nothing answered since, shows it stuck.
    pub(crate) fn live_since(&self, since_ms: u64, slack_ms: u64) -> Live {
        let passed = self.passed_from.load(Ordering::Acquire);
        let failed = self.failed_until.load(Ordering::Acquire);
        let answered = self.answered_at.load(Ordering::Relaxed);
        if passed >= since_ms && passed >= failed {
            Live::Passed
        } else if failed >= since_ms
            || (failed > passed && failed > answered && failed + slack_ms >= since_ms)
        {
            Live::Failed
        } else if self.checking.load(Ordering::Acquire) {
            Live::Checking
        } else {
            Live::Unknown
        }
    }

    /// The evidence showed the peer stuck at `now_ms`.
    pub(crate) fn stuck(&self, now_ms: u64) {
        self.stuck_at.fetch_max(now_ms, Ordering::AcqRel);
        let alive = self.alive_at();
        let _ = self
            .stuck_from
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |from| {
                (from <= alive).then_some(now_ms)
            });
    }

    /// When the peer last showed itself alive: its last answer, or the start of its last
    /// passing check (ms).
    fn alive_at(&self) -> u64 {
        self.answered_at
            .load(Ordering::Relaxed)
            .max(self.passed_from.load(Ordering::Acquire))
    }

    /// Whether the peer broke under a wait that began at `since_ms`: it has shown nothing
    /// alive since (no answer, no passing check), and the evidence had not shown it stuck
    /// before (a stuck period that began after its last sign of life and before the wait).
    pub(crate) fn broke_under(&self, since_ms: u64) -> bool {
        let alive = self.alive_at();
        let from = self.stuck_from.load(Ordering::Acquire);
        alive < since_ms && !(alive < from && from < since_ms)
    }

    /// A request was cut at `now_ms` on the evidence that the peer is stuck.
    pub(crate) fn cut(&self, now_ms: u64) {
        self.cut_at.fetch_max(now_ms, Ordering::AcqRel);
    }

    /// Whether the peer is suspected: the evidence showed it stuck after its last answer and
    /// its last passing check, and requests still wait on it, or one was cut on it less than
    /// [`IDLE_MS`] before `now_ms` (read only then).
    pub(crate) fn suspected(&self, now_ms: impl FnOnce() -> u64) -> bool {
        let stuck = self.stuck_at.load(Ordering::Acquire);
        let alive = self.alive_at();
        if stuck == 0 || stuck <= alive {
            return false;
        }
        if self.count() > 0 {
            return true;
        }
        let cut = self.cut_at.load(Ordering::Acquire);
        cut > alive && now_ms().saturating_sub(cut) < IDLE_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Waiting {
        fn live_since_test(&self, since_ms: u64) -> Live {
            self.live_since(since_ms, 0)
        }
    }

    #[test]
    fn a_failed_check_counts_for_waits_soon_after_it_while_the_peer_stays_silent() {
        let w = Waiting::default();
        w.start(100);
        assert!(w.start_check());
        w.finish_check(120, 170, false);
        w.release_check();
        assert!(w.suspected(|| 170), "a failed check is evidence at once");
        assert_eq!(w.live_since(200, 50), Live::Failed, "30 ms after it");
        assert_eq!(w.live_since(300, 50), Live::Unknown, "long after it");
        w.answered(180);
        assert_eq!(
            w.live_since(200, 50),
            Live::Unknown,
            "the peer answered since"
        );
    }

    #[test]
    fn suspicion_needs_evidence_and_lasts_while_requests_wait_or_a_second_after_a_cut_and_ends_with_an_answer(
    ) {
        let w = Waiting::default();
        w.start(100);
        w.start(100);
        let never = || unreachable!("the time is read only when nothing waits");
        assert!(!w.suspected(never), "waiting alone is no evidence");
        w.stuck(200);
        assert!(w.suspected(never));
        w.answered(250);
        assert!(
            !w.suspected(never),
            "an answer after the evidence clears it"
        );
        w.stuck(300);
        assert!(w.suspected(never));
        w.stop();
        w.stop();
        assert!(!w.suspected(|| 400), "nothing waits, and nothing was cut");
        w.start(500);
        w.stuck(550);
        w.cut(550);
        w.stop();
        assert!(
            w.suspected(|| 600),
            "nothing waits, a request cut 50 ms ago"
        );
        assert!(
            !w.suspected(|| 1_600),
            "nothing waits, the cut a second old"
        );
        w.start(1_650);
        assert!(w.suspected(never), "a request waits on it again");
        w.answered(1_700);
        assert!(!w.suspected(never));
        assert!(!w.suspected(|| 1_710), "an answer clears a cut's hold too");
    }

    #[test]
    fn a_check_counts_for_the_waits_it_bears_on() {
        let w = Waiting::default();
        assert_eq!(w.live_since_test(100), Live::Unknown);
        assert!(w.start_check());
        assert!(!w.start_check(), "one check at a time");
        assert_eq!(w.live_since_test(100), Live::Checking);
        w.finish_check(120, 170, true);
        w.release_check();
        assert_eq!(w.live_since_test(100), Live::Passed, "began after the wait");
        assert_eq!(
            w.live_since_test(130),
            Live::Unknown,
            "began before the wait"
        );
        assert!(w.start_check());
        w.finish_check(200, 260, false);
        w.release_check();
        assert_eq!(w.live_since_test(130), Live::Failed);
        assert_eq!(
            w.live_since_test(250),
            Live::Failed,
            "failed while the wait ran"
        );
        assert_eq!(w.live_since_test(261), Live::Unknown);
    }

    #[test]
    fn a_stuck_period_runs_from_the_first_evidence_until_an_answer() {
        let w = Waiting::default();
        assert!(w.broke_under(100), "no evidence yet, and no answer");
        w.stuck(100);
        w.stuck(150);
        assert!(w.broke_under(100), "a wait begun as it broke");
        assert!(
            !w.broke_under(120),
            "known stuck since 100, later evidence or not"
        );
        w.answered(200);
        assert!(!w.broke_under(150), "it answered while the wait ran");
        assert!(w.broke_under(250), "it answered: the period is over");
        w.stuck(300);
        assert!(w.broke_under(260));
        assert!(!w.broke_under(301));
    }
}
