//! What each kind of request typically takes to answer, learned from every peer's answers: a
//! report that takes 300 ms everywhere is slow by nature, and its wait is judged against that,
//! not against the peer's 5 ms for everything else. A peer with nothing learned yet borrows it
//! too (a cold start).
//!
//! A kind of request is its method and path (without the query). The table is a fixed array of
//! words, a hash's slot each, lock-free; a slot holds its key's tag and a moving average. Two
//! kinds that share a slot take turns in it: the table forgets, it never grows.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pingora_http::RequestHeader;

/// Slots in the table (a power of two).
const SLOTS: usize = 1024;
/// The tag takes the high 16 bits of a slot; the average, in µs, the low 48.
const TAG_SHIFT: u32 = 48;
const VALUE: u64 = (1 << TAG_SHIFT) - 1;
/// Weight of a new answer in the moving average (about the last 10 answers).
const ALPHA: f64 = 0.1;

/// The kind of one request: where its slot is, and its tag there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RouteKey(u64);

/// What each kind of request typically takes to answer, what a new connection typically takes,
/// and what the liveness check's request does, learned across peers.
pub(crate) struct Routes {
    slots: Box<[AtomicU64]>,
    /// A random seed of the key's hash, per table.
    seed: u64,
    /// What a new connection to any peer takes.
    connect: PoolMean,
    /// What the liveness check's request takes any peer to answer.
    check: PoolMean,
}

/// A moving average of one time across peers, in µs, in one atomic word (0: none yet).
#[derive(Default)]
struct PoolMean(AtomicU64);

impl PoolMean {
    fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn learn(&self, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, VALUE);
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    0 => us,
                    old => ((old as f64 + ALPHA * (us as f64 - old as f64)) as u64).max(1),
                })
            });
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("slots", &SLOTS).finish()
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            seed: std::collections::hash_map::RandomState::new().hash_one(SLOTS),
            connect: PoolMean::default(),
            check: PoolMean::default(),
        }
    }
}

impl Routes {
    /// The kind of `request`.
    pub(crate) fn key(&self, request: &RequestHeader) -> RouteKey {
        let h = mix(self.seed, request.method.as_str().as_bytes());
        let h = finish(mix(h, request.uri.path().as_bytes()));
        // 0 marks an empty slot: no key has tag 0.
        RouteKey(h | (1 << 63))
    }

    fn slot(&self, key: RouteKey) -> &AtomicU64 {
        &self.slots[(key.0 as usize) & (SLOTS - 1)]
    }

    fn tag(key: RouteKey) -> u64 {
        key.0 >> TAG_SHIFT
    }

    /// What requests of kind `key` typically take to answer, if learned.
    pub(crate) fn typical(&self, key: RouteKey) -> Option<Duration> {
        let word = self.slot(key).load(Ordering::Relaxed);
        (word >> TAG_SHIFT == Self::tag(key)).then(|| Duration::from_micros(word & VALUE))
    }

    /// What a new connection to any peer typically takes, if learned: the prior of a peer
    /// that has made none yet.
    pub(crate) fn typical_connect(&self) -> Option<Duration> {
        self.connect.get()
    }

    /// A new connection to some peer was made in `took`.
    pub(crate) fn learn_connect(&self, took: Duration) {
        self.connect.learn(took);
    }

    /// What the liveness check's request typically takes any peer to answer, if learned: the
    /// prior of a peer that has answered nothing yet.
    pub(crate) fn typical_check(&self) -> Option<Duration> {
        self.check.get()
    }

    /// Some peer answered the liveness check's request after `took`.
    pub(crate) fn learn_check(&self, took: Duration) {
        self.check.learn(took);
    }

    /// A request of kind `key` was answered after `took`.
    pub(crate) fn learn(&self, key: RouteKey, took: Duration) {
        let us = (took.as_micros() as u64).min(VALUE);
        let tag = Self::tag(key);
        let _ = self
            .slot(key)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let mean = if word >> TAG_SHIFT == tag {
                    let old = (word & VALUE) as f64;
                    (old + ALPHA * (us as f64 - old)) as u64
                } else {
                    us
                };
                Some(tag << TAG_SHIFT | mean.min(VALUE))
            });
    }
}

/// Folds `bytes` into the hash `h`, eight at a time (FxHash's multiply-rotate step), then their
/// length, so that "GET" + "/a" and "GE" + "T/a" differ. The key is hashed on every request,
/// and SipHash's resistance to chosen collisions buys little here: two kinds that collide take
/// turns in a slot, as any two kinds may, or, more rarely (their tags equal too), share one
/// average. A client that crafts paths to collide with a route can at worst blend that
/// route's learned time with its own; flooding distinct paths evicts learned times anyway.
fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(w));
    }
    step(h, bytes.len() as u64)
}

/// Spreads every bit of `h` over the low bits (the slot) and the high ones (the tag).
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> RequestHeader {
        RequestHeader::build(method, path.as_bytes(), None).unwrap()
    }

    #[test]
    fn each_kind_learns_its_own_time_and_the_query_does_not_count() {
        let routes = Routes::default();
        let report = routes.key(&req("GET", "/report?day=1"));
        let fast = routes.key(&req("GET", "/fast"));
        assert_eq!(routes.typical(report), None);
        routes.learn(report, Duration::from_millis(300));
        routes.learn(fast, Duration::from_millis(1));
        assert_eq!(
            routes.typical(routes.key(&req("GET", "/report?day=2"))),
            Some(Duration::from_millis(300))
        );
        assert_eq!(routes.typical(fast), Some(Duration::from_millis(1)));
        assert_eq!(routes.typical(routes.key(&req("POST", "/report"))), None);
        // A moving average: one fast answer moves it a tenth of the way.
        routes.learn(report, Duration::ZERO);
        assert_eq!(routes.typical(report), Some(Duration::from_millis(270)));
    }
}
