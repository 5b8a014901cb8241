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

    /// The next turn in a schedule of `len` turns (`len` > 0).
    pub(crate) fn draw(&self, len: usize) -> usize {
        // Only the count needs to be atomic: nothing else is published through it.
        self.0.fetch_add(1, Ordering::Relaxed) % len
    }
}
