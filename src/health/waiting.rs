//! Requests waiting on a peer for their response header, for in-flight suspicion.
//!
//! The count (high 16 bits) and the time it last rose from zero (ms on the peer's clock, low 48
//! bits) share one word, so a reader never pairs a count with the time of another spell.

use std::sync::atomic::{AtomicU64, Ordering};

const TIME: u64 = (1 << 48) - 1;
const ONE: u64 = 1 << 48;

#[derive(Debug, Default)]
pub(crate) struct Waiting {
    word: AtomicU64,
    /// When the peer last answered (ms), 0 before its first answer.
    answered_at: AtomicU64,
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
        self.answered_at.store(now_ms, Ordering::Relaxed);
    }

    /// When the peer last answered (ms), 0 before its first answer.
    pub(crate) fn answered_at(&self) -> u64 {
        self.answered_at.load(Ordering::Relaxed)
    }

    /// How long, at `now_ms`, two or more requests have waited without the peer answering
    /// anything; `None` when fewer than two wait.
    pub(crate) fn stalled_for(&self, now: impl FnOnce() -> u64) -> Option<u64> {
        let w = self.word.load(Ordering::Relaxed);
        if w >> 48 < 2 {
            return None;
        }
        let since = (w & TIME).max(self.answered_at.load(Ordering::Relaxed));
        Some(now().saturating_sub(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_timed_from_the_later_of_the_first_wait_and_the_last_answer() {
        let w = Waiting::default();
        w.start(100);
        assert_eq!(w.stalled_for(|| 500), None, "one request waiting");
        w.start(150);
        assert_eq!(w.stalled_for(|| 500), Some(400));
        w.answered(300);
        assert_eq!(w.stalled_for(|| 500), Some(200));
        w.stop();
        w.stop();
        assert_eq!(w.stalled_for(|| 900), None);
        // A new spell starts its own clock.
        w.start(1000);
        w.start(1000);
        assert_eq!(w.stalled_for(|| 1100), Some(100));
        // More stops than starts never wrap the count.
        (0..5).for_each(|_| w.stop());
        assert_eq!(w.stalled_for(|| 2000), None);
    }
}
