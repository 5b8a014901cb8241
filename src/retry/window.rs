//! The lock-free core of the retry budget: requests and retries counted in one-second slots over
//! a window. Time is passed in, as whole seconds (never 0, which marks an unused slot).
//!
//! Each count is one atomic word holding the second it counts and the count itself, so that a
//! slot moves to a new second and restarts its count in the same atomic step: a count can never
//! be wiped by another thread recycling the slot.
//!
//! This file depends on nothing but `crate::sync`, so that `tests/loom.rs` can model-check it
//! with loom's atomics: concurrent withdrawals within one second never take more retries than
//! the budget allows, and a refund is never lost.

use crate::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) struct Window {
    ratio: f64,
    floor: f64,
    slots: Box<[Slot]>,
}

#[derive(Debug)]
struct Slot {
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A count for one second: the second in the high 32 bits, the count in the low 32.
fn pack(second: u64, count: u64) -> u64 {
    (second << 32) | count.min(u64::from(u32::MAX))
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> 32, word & u64::from(u32::MAX))
}

/// The count in `word` if it is for second `now`, else 0 (an older second's count is stale).
fn count_at(word: u64, now: u64) -> u64 {
    match unpack(word) {
        (second, count) if second == now => count,
        _ => 0,
    }
}

impl Window {
    /// `ratio` retries per request plus `floor` retries in all, over `seconds` slots.
    pub(crate) fn new(ratio: f64, floor: f64, seconds: u64) -> Self {
        let slots = (0..seconds.max(1))
            .map(|_| Slot {
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            })
            .collect();
        Self {
            ratio,
            floor,
            slots,
        }
    }

    pub(crate) fn deposit(&self, now: u64) {
        let _ = self
            .slot(now)
            .requests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                // A caller that read the clock just before the second turned must not wipe the
                // new second's count: its own count is dropped instead.
                (unpack(w).0 <= now).then(|| pack(now, count_at(w, now) + 1))
            });
    }

    /// Takes one retry; `false` when the budget is spent. The check and the count are one
    /// atomic update of this second's word, so racing withdrawals cannot overdraw it together.
    pub(crate) fn withdraw(&self, now: u64) -> bool {
        let slot = self.slot(now);
        let (requests, retries) = self.others(now);
        slot.retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let requests = requests + count_at(slot.requests.load(Ordering::Relaxed), now);
                let allowed = self.floor + self.ratio * requests as f64;
                let mine = count_at(w, now);
                (unpack(w).0 <= now && (retries + mine + 1) as f64 <= allowed)
                    .then(|| pack(now, mine + 1))
            })
            .is_ok()
    }

    /// Gives back a retry withdrawn but not made (in the same second; a retry counted in an
    /// older second leaves the window by itself).
    pub(crate) fn refund(&self, now: u64) {
        let _ = self
            .slot(now)
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                let mine = count_at(w, now);
                (mine > 0).then(|| pack(now, mine - 1))
            });
    }

    pub(crate) fn remaining(&self, now: u64) -> u64 {
        let slot = self.slot(now);
        let (requests, retries) = self.others(now);
        let requests = requests + count_at(slot.requests.load(Ordering::Relaxed), now);
        let retries = retries + count_at(slot.retries.load(Ordering::Acquire), now);
        let allowed = self.floor + self.ratio * requests as f64;
        (allowed - retries as f64).max(0.0) as u64
    }

    fn slot(&self, now: u64) -> &Slot {
        &self.slots[(now % self.slots.len() as u64) as usize]
    }

    /// Requests and retries counted in the window's earlier seconds.
    fn others(&self, now: u64) -> (u64, u64) {
        let oldest = now.saturating_sub(self.slots.len() as u64 - 1);
        let in_window = |w: u64| {
            let (second, count) = unpack(w);
            if second >= oldest && second < now {
                count
            } else {
                0
            }
        };
        self.slots.iter().fold((0, 0), |(q, r), s| {
            (
                q + in_window(s.requests.load(Ordering::Relaxed)),
                r + in_window(s.retries.load(Ordering::Acquire)),
            )
        })
    }
}
