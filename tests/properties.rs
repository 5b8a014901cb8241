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

/// Applies a sequence of failures (`true`) and recoveries (`false`) to peers, with ejections that
/// outlast the test, so that health stays fixed while the selectors are asked.
fn apply(peers: &[Peer], events: &[(usize, bool)]) {
    let rules = pingora_failover::OutlierDetection::new()
        .with_consecutive_failures(2)
        .with_base_ejection(Duration::from_secs(3600))
        .with_max_ejection(Duration::from_secs(3600));
    for &(i, fail) in events {
        let peer = &peers[i % peers.len()];
        if fail {
            rules.record_failure(peer, pingora_failover::FailureKind::HeaderTimeout);
        } else {
            rules.record_success(peer);
        }
    }
}

fn make_peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| Peer::new(&format!("127.0.0.1:{}", 3000 + i)).unwrap())
        .collect()
}

proptest! {
    /// Whatever the health, one request's attempts never repeat a peer, and they end only when
    /// every peer was tried: panic mode always yields a candidate.
    #[test]
    fn attempts_cover_every_peer_once_whatever_the_health(
        n in 1usize..10,
        events in prop::collection::vec((0usize..10, any::<bool>()), 0..60),
        round_robin in any::<bool>(),
    ) {
        let peers = make_peers(n);
        apply(&peers, &events);
        let selector: Box<dyn PeerSelector> = if round_robin {
            Box::new(RoundRobin::new(peers.clone()).unwrap())
        } else {
            Box::new(OrderedList::new(peers.clone()).unwrap())
        };
        let mut tried: Vec<AttemptRecord> = Vec::new();
        while let Some(p) = selector.select(&Attempt::new(&tried, None)) {
            prop_assert!(!tried.iter().any(|r| r.peer() == &p), "{p} chosen twice");
            tried.push(AttemptRecord::new(p));
        }
        prop_assert_eq!(tried.len(), n, "stopped before every peer was tried");
    }

    /// Round-robin gives every healthy peer the same share, skipping the ejected ones.
    #[test]
    fn round_robin_is_fair_over_healthy_peers(
        n in 2usize..10,
        events in prop::collection::vec((0usize..10, any::<bool>()), 0..60),
        rounds in 1usize..5,
    ) {
        let peers = make_peers(n);
        apply(&peers, &events);
        let healthy: Vec<&Peer> = peers.iter().filter(|p| p.health().is_healthy()).collect();
        prop_assume!(!healthy.is_empty());
        let rr = RoundRobin::new(peers.clone()).unwrap();
        let mut counts = vec![0usize; n];
        for _ in 0..rounds * healthy.len() {
            let p = rr.select(&Attempt::new(&[], None)).unwrap();
            prop_assert!(p.health().is_healthy(), "chose ejected {p}");
            counts[peers.iter().position(|q| *q == p).unwrap()] += 1;
        }
        for (p, c) in peers.iter().zip(&counts) {
            let expected = if p.health().is_healthy() { rounds } else { 0 };
            prop_assert_eq!(*c, expected, "{} chosen {} times", p, c);
        }
    }
}
