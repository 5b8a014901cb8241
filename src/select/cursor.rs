//! The lock-free cursor a rotating selector walks its schedule with.
//!
//! This file depends on nothing but `crate::sync`, so that `tests/loom.rs` can model-check it
//! with loom's atomics: racing draws never share a turn, so `n` draws over a schedule of `n`
//! cover it once.

use crate::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub(crate) struct Cursor(AtomicUsize);

impl Cursor {
    pub(crate) fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// The next count: the turn is the count modulo the schedule's length.
    pub(crate) fn next(&self) -> usize {
        // Only the count needs to be atomic: nothing else is published through it.
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    /// Moves the cursor past `turns` more turns after `drawn`, a count this caller drew: the
    /// turns a walk passed over are used up, as if drawn one by one. Nothing moves when another
    /// caller drew since (it drew one of those turns, and found the same peer).
    pub(crate) fn pass(&self, drawn: usize, turns: usize) {
        let _ = self.0.compare_exchange(
            drawn.wrapping_add(1),
            drawn.wrapping_add(1).wrapping_add(turns),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}
