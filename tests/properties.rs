//! Properties of backoff and selection, over arbitrary inputs.

use std::time::Duration;

use pingora_failover::pingora::RequestHeader;
use pingora_failover::{
    Attempt, AttemptRecord, Backoff, FailureKind, HashKey, HashRing, LeastRequest, OrderedList,
    OutlierDetection, PeakEwma, Peer, PeerSelector, PriorityTiers, RoundRobin,
};
use proptest::prelude::*;

/// Every stock selector over `peers` (tiers: the first half, then the rest, each round-robin).
fn every_selector(peers: &[Peer]) -> Vec<(&'static str, Box<dyn PeerSelector>)> {
    let half = peers.len().div_ceil(2);
    let mut tiers: Vec<Box<dyn PeerSelector>> =
        vec![Box::new(RoundRobin::new(peers[..half].to_vec()).unwrap())];
    if half < peers.len() {
        tiers.push(Box::new(RoundRobin::new(peers[half..].to_vec()).unwrap()));
    }
    vec![
        (
            "ordered",
            Box::new(OrderedList::new(peers.to_vec()).unwrap()),
        ),
        (
            "round-robin",
            Box::new(RoundRobin::new(peers.to_vec()).unwrap()),
        ),
        (
            "least-request",
            Box::new(LeastRequest::new(peers.to_vec()).unwrap()),
        ),
        ("ewma", Box::new(PeakEwma::new(peers.to_vec()).unwrap())),
        (
            "hash",
            Box::new(HashRing::new(peers.to_vec(), HashKey::path()).unwrap()),
        ),
        ("tiers", Box::new(PriorityTiers::new(tiers).unwrap())),
    ]
}

fn get(path: &str) -> RequestHeader {
    RequestHeader::build("GET", path.as_bytes(), None).unwrap()
}

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

    /// Whatever was tried, every stock selector returns an untried peer while one remains, and
    /// nothing once every peer was tried.
    #[test]
    fn selectors_never_repeat_a_peer_while_another_remains(
        weights in prop::collection::vec(1u32..5, 1..12),
        tried_mask in any::<u16>(),
        spins in 0usize..20,
        key in "/[a-z]{1,8}",
    ) {
        let peers: Vec<Peer> = weights.iter().enumerate().map(|(i, w)| {
            Peer::builder(format!("127.0.0.1:{}", 2000 + i)).with_weight(*w).build().unwrap()
        }).collect();
        let tried: Vec<AttemptRecord> = peers.iter().enumerate()
            .filter(|(i, _)| tried_mask & (1 << i) != 0)
            .map(|(_, p)| AttemptRecord::new(p.clone()))
            .collect();
        let req = get(&key);
        let all_tried = tried.len() == peers.len();
        for (name, selector) in every_selector(&peers) {
            for _ in 0..spins {
                selector.select(&Attempt::new(&[], Some(&req)));
            }
            let attempt = Attempt::new(&tried, Some(&req));
            match selector.select(&attempt) {
                Some(p) => prop_assert!(!attempt.has_tried(&p), "{name} repeated {p}"),
                None => prop_assert!(all_tried, "{name} gave up with an untried peer left"),
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
        which in 0usize..6,
    ) {
        let peers = make_peers(n);
        apply(&peers, &events);
        let (name, selector) = every_selector(&peers).swap_remove(which);
        let req = get("/k");
        let mut tried: Vec<AttemptRecord> = Vec::new();
        while let Some(p) = selector.select(&Attempt::new(&tried, Some(&req))) {
            prop_assert!(!tried.iter().any(|r| r.peer() == &p), "{name} chose {p} twice");
            tried.push(AttemptRecord::new(p));
        }
        prop_assert_eq!(tried.len(), n, "{} stopped before every peer was tried", name);
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

/// A share of keys, as a count out of `KEYS`.
const KEYS: usize = 4000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Removing one of n peers moves the keys it had, about 1/n of them, and no others; putting
    /// it back moves them back.
    #[test]
    fn removing_a_peer_remaps_only_its_keys(n in 3usize..16, gone in 0usize..16) {
        let gone = gone % n;
        let peers = make_peers(n);
        let ring = HashRing::new(peers.clone(), HashKey::path()).unwrap();
        let pick = |k: usize| {
            let req = get(&format!("/key/{k}"));
            ring.select(&Attempt::new(&[], Some(&req))).unwrap()
        };
        let before: Vec<Peer> = (0..KEYS).map(pick).collect();
        let mut rest = peers.clone();
        rest.remove(gone);
        ring.set().replace(rest).unwrap();
        let after: Vec<Peer> = (0..KEYS).map(pick).collect();
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b.same(&peers[gone]) {
                moved += 1;
                prop_assert!(!a.same(&peers[gone]));
            } else {
                prop_assert!(b.same(a), "a key of {} moved to {}", b, a);
            }
        }
        let share = moved as f64 / KEYS as f64;
        let fair = 1.0 / n as f64;
        prop_assert!(share > fair * 0.5 && share < fair * 1.6, "{share} moved, 1/n = {fair}");
        ring.set().replace(peers.clone()).unwrap();
        let back: Vec<Peer> = (0..KEYS).map(pick).collect();
        prop_assert!(back.iter().zip(&before).all(|(x, y)| x.same(y)), "keys did not return");
    }

    /// Ejecting peers one by one moves traffic down the tiers in order, and re-admitting them
    /// brings it back up: each change moves traffic only towards the tier that changed, and
    /// while the tiers together are healthy enough, the tiers before the last that takes traffic
    /// take their whole health.
    #[test]
    fn tiers_spill_in_order_and_come_back_in_order(
        sizes in prop::collection::vec(1usize..6, 2..5),
        order in prop::collection::vec(any::<prop::sample::Index>(), 30),
    ) {
        let mut port = 7000;
        let tiers: Vec<Vec<Peer>> = sizes.iter().map(|&n| {
            port += 10;
            (0..n).map(|i| Peer::new(&format!("127.0.0.1:{}", port + i)).unwrap()).collect()
        }).collect();
        let t = PriorityTiers::new(tiers.iter().map(|ps| {
            Box::new(RoundRobin::new(ps.clone()).unwrap()) as Box<dyn PeerSelector>
        }).collect()).unwrap();
        let all: Vec<(usize, Peer)> = tiers.iter().enumerate()
            .flat_map(|(i, ps)| ps.iter().map(move |p| (i, p.clone()))).collect();
        let rules = OutlierDetection::new()
            .with_base_ejection(Duration::from_secs(3600))
            .with_max_ejection(Duration::from_secs(3600));
        let cumulative = |loads: &[f64], upto: usize| loads[..=upto].iter().sum::<f64>();
        let check = |loads: &[f64]| -> Result<(), TestCaseError> {
            let total: f64 = loads.iter().sum();
            prop_assert!(total == 0.0 || (total - 1.0).abs() < 1e-9, "{loads:?}");
            Ok(())
        };
        // Out, in a random order, then back in another.
        let mut out: Vec<(usize, Peer)> = Vec::new();
        let mut left = all.clone();
        for ix in &order {
            if left.is_empty() { break; }
            let (tier, p) = left.remove(ix.index(left.len()));
            let before = t.loads();
            rules.record_failure(&p, FailureKind::ConnectRefused);
            let after = t.loads();
            check(&after)?;
            if after.iter().sum::<f64>() > 0.0 {
                prop_assert!(cumulative(&after, tier) <= cumulative(&before, tier) + 1e-9,
                    "ejecting from tier {tier}: {before:?} -> {after:?}");
                // Spilled in order: the last tier with traffic is the first that is not full.
                let last = after.iter().rposition(|l| *l > 0.0).unwrap();
                let healthy = |i: usize| tiers[i].iter().filter(|p| p.health().is_healthy()).count();
                let sum_health: f64 = (0..tiers.len())
                    .map(|i| (1.4 * healthy(i) as f64 / tiers[i].len() as f64).min(1.0)).sum();
                if sum_health >= 1.0 {
                    for i in 0..last {
                        let h = (1.4 * healthy(i) as f64 / tiers[i].len() as f64).min(1.0);
                        prop_assert!((after[i] - h).abs() < 1e-9, "tier {i} of {after:?}");
                    }
                }
            }
            out.push((tier, p));
        }
        for ix in order.iter().rev() {
            if out.is_empty() { break; }
            let (tier, p) = out.remove(ix.index(out.len()));
            let before = t.loads();
            rules.record_success(&p);
            let after = t.loads();
            check(&after)?;
            if before.iter().sum::<f64>() > 0.0 {
                prop_assert!(cumulative(&after, tier) + 1e-9 >= cumulative(&before, tier),
                    "re-admitting into tier {tier}: {before:?} -> {after:?}");
            }
        }
    }

    /// An ordered list and tiers of one peer each make the same choices, whatever the health
    /// and whatever was tried (in panic mode, each a random untried peer).
    #[test]
    fn an_ordered_list_is_tiers_of_one_peer(
        n in 1usize..8,
        events in prop::collection::vec((0usize..8, any::<bool>()), 0..40),
    ) {
        let peers = make_peers(n);
        apply(&peers, &events);
        let list = OrderedList::new(peers.clone()).unwrap();
        let tiers = PriorityTiers::new(peers.iter().map(|p| {
            Box::new(OrderedList::new(vec![p.clone()]).unwrap()) as Box<dyn PeerSelector>
        }).collect()).unwrap();
        let mut tried = Vec::new();
        loop {
            let attempt = Attempt::new(&tried, None);
            let (a, b) = (list.select(&attempt), tiers.select(&attempt));
            // In panic mode (no untried peer admitted) each draws at random among the untried.
            if a.as_ref().is_some_and(|p| !attempt.admits(p)) {
                prop_assert!(b.as_ref().is_some_and(|p| !attempt.admits(p) && !attempt.has_tried(p)));
            } else {
                prop_assert_eq!(&a, &b);
            }
            let Some(p) = a else { break };
            tried.push(AttemptRecord::new(p));
        }
    }
}

/// Weighted peers, those in `out` ejected for the length of the test.
fn weighted_peers(weights: &[u32], out: &[bool], port: usize) -> Vec<Peer> {
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_secs(3600))
        .with_max_ejection(Duration::from_secs(3600));
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let p = Peer::builder(format!("127.0.0.1:{}", port + i))
                .with_weight(*w)
                .build()
                .unwrap();
            if out[i] {
                rules.record_failure(&p, FailureKind::ConnectRefused);
            }
            p
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// At zero load, the weighted selectors give each admitted peer its weight's share of the
    /// admitted weight (within 3 % over 6,000 draws), and an ejected peer nothing, wherever the
    /// ejected peers are in the set.
    #[test]
    fn weighted_selectors_share_by_weight_over_the_admitted_peers(
        weights in prop::collection::vec(1u32..8, 2..7),
        out in prop::collection::vec(any::<bool>(), 7),
        which in 0usize..3,
        seed in any::<u64>(),
    ) {
        let out = &out[..weights.len()];
        prop_assume!(out.iter().any(|o| !o));
        let peers = weighted_peers(&weights, out, 8000);
        let (name, selector): (&str, Box<dyn PeerSelector>) = match which {
            0 => ("round-robin", Box::new(RoundRobin::new(peers.clone()).unwrap())),
            1 => ("least-request", Box::new(LeastRequest::new(peers.clone()).unwrap().with_seed(seed))),
            _ => ("ewma", Box::new(PeakEwma::new(peers.clone()).unwrap().with_seed(seed))),
        };
        const DRAWS: usize = 6_000;
        let mut counts = vec![0usize; peers.len()];
        for _ in 0..DRAWS {
            let p = selector.select(&Attempt::new(&[], None)).unwrap();
            counts[peers.iter().position(|q| *q == p).unwrap()] += 1;
        }
        let admitted: u32 = weights.iter().zip(out).filter(|(_, o)| !**o).map(|(w, _)| w).sum();
        for i in 0..peers.len() {
            let due = if out[i] { 0.0 } else { f64::from(weights[i]) / f64::from(admitted) };
            let got = counts[i] as f64 / DRAWS as f64;
            prop_assert!((got - due).abs() < 0.03,
                "{name} over {weights:?} with {out:?} out: {counts:?}");
        }
    }
}
