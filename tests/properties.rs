//! Properties of backoff and selection, over arbitrary inputs.

use std::time::Duration;

use pingora_failover::{
    Attempt, AttemptRecord, Backoff, OrderedList, Peer, PeerSelector, RoundRobin,
};
use proptest::prelude::*;

proptest! {
    /// Every delay lies in [0, min(cap, base * 2^(n-1))], the ceiling never shrinks, and it
    /// reaches the cap.
    #[test]
    fn backoff_stays_within_its_bounds(
        base_ms in 1u64..1_000,
        extra_ms in 0u64..10_000,
        seed in any::<u64>(),
        retry in 1u32..200,
    ) {
        let base = Duration::from_millis(base_ms);
        let max = base + Duration::from_millis(extra_ms);
        let b = Backoff::new(base, max).unwrap().with_seed(seed);
        let ceiling = b.ceiling(retry);
        let expected = base
            .checked_mul(2u32.saturating_pow(retry - 1))
            .map_or(max, |d| d.min(max));
        prop_assert_eq!(ceiling, expected);
        prop_assert!(b.delay(retry) <= ceiling);
        prop_assert!(b.ceiling(retry + 1) >= ceiling);
        prop_assert_eq!(b.ceiling(64), max);
    }

    /// The same seed gives the same delays.
    #[test]
    fn backoff_is_reproducible_from_its_seed(seed in any::<u64>()) {
        let make = || Backoff::new(Duration::from_millis(5), Duration::from_secs(1)).unwrap().with_seed(seed);
        let (a, b) = (make(), make());
        for n in 1..20 {
            prop_assert_eq!(a.delay(n), b.delay(n));
        }
    }

    /// Whatever was tried, both stock selectors return an untried peer while one remains, and
    /// nothing once every peer was tried.
    #[test]
    fn selectors_never_repeat_a_peer_while_another_remains(
        weights in prop::collection::vec(1u32..5, 1..12),
        tried_mask in any::<u16>(),
        spins in 0usize..20,
    ) {
        let peers: Vec<Peer> = weights.iter().enumerate().map(|(i, w)| {
            Peer::builder(format!("127.0.0.1:{}", 2000 + i)).with_weight(*w).build().unwrap()
        }).collect();
        let tried: Vec<AttemptRecord> = peers.iter().enumerate()
            .filter(|(i, _)| tried_mask & (1 << i) != 0)
            .map(|(_, p)| AttemptRecord::new(p.clone()))
            .collect();
        let rr = RoundRobin::new(peers.clone()).unwrap();
        let ol = OrderedList::new(peers.clone()).unwrap();
        for _ in 0..spins {
            rr.select(&Attempt::new(&[], None));
        }
        let attempt = Attempt::new(&tried, None);
        let all_tried = tried.len() == peers.len();
        for chosen in [rr.select(&attempt), ol.select(&attempt)] {
            match chosen {
                Some(p) => prop_assert!(!attempt.has_tried(&p)),
                None => prop_assert!(all_tried),
            }
        }
    }
}
