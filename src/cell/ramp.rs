//! When a peer last joined traffic, for slow start: added to a running set, re-admitted after an
//! ejection, or passing its active check again.

use std::sync::atomic::{AtomicU64, Ordering};

/// The start of a peer's ramp, in ms on its clock; 0 when it has served from the start.
#[derive(Debug, Default)]
pub(crate) struct Ramp(AtomicU64);

impl Ramp {
    /// When the ramp started; `None` when there is none.
    pub(crate) fn from(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Starts a ramp at `now_ms`.
    pub(crate) fn start(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }

    /// Ends the ramp that started at `from` (a newer one stays).
    pub(crate) fn end(&self, from: u64) {
        let _ = self
            .0
            .compare_exchange(from, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}
