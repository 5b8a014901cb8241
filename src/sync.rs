//! The atomics the lock-free state is built on. `tests/loom.rs` compiles the same state files
//! against loom's atomics instead, to check them in every interleaving.

pub(crate) use std::sync::atomic;
