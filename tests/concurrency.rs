//! The shared state (round-robin cursor, peer health, probe slot, retry budget) under many
//! threads at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use pingora_failover::{
    Admission, Attempt, FailureKind, HealthState, OutlierDetection, Peer, PeerSelector,
    RetryBudget, RoundRobin,
};

const THREADS: usize = 8;

/// Runs `f(thread)` on `THREADS` threads released at the same moment.
fn together(f: impl Fn(usize) + Sync) {
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (start, f) = (&start, &f);
            s.spawn(move || {
                start.wait();
                f(t)
            });
        }
    });
}

/// Peers for their shared state only: nothing in this file connects to them.
fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| Peer::new(&format!("127.0.0.1:{}", 4000 + i)).unwrap())
        .collect()
}

#[test]
fn round_robin_hands_out_every_turn_exactly_once() {
    let peers = peers(4);
    let rr = RoundRobin::new(peers.clone()).unwrap();
    let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
    together(|_| {
        for _ in 0..10_000 {
            let p = rr.select(&Attempt::new(&[], None)).unwrap();
            let i = peers.iter().position(|q| *q == p).unwrap();
            counts[i].fetch_add(1, Ordering::Relaxed);
        }
    });
    let counts: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(counts, [20_000; 4]);
}

#[test]
fn racing_failures_eject_a_peer_exactly_once() {
    let rules = OutlierDetection::new()
        .with_consecutive_failures(5)
        .with_consecutive_connect_failures(5);
    for _ in 0..200 {
        let peer = peers(1).remove(0);
        let ejections = AtomicUsize::new(0);
        together(|_| {
            if rules
                .record_failure(&peer, FailureKind::ConnectRefused)
                .is_some()
            {
                ejections.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert_eq!(ejections.load(Ordering::Relaxed), 1);
    }
}

/// Selectors only ask: racing queries of a half-open peer all see it free to probe, and none
/// of them takes its slot (the engine claims it when it sends; the single probe of racing
/// requests is tested end to end in `health.rs` and modelled in `loom.rs`).
#[test]
fn racing_queries_claim_nothing() {
    let rules = OutlierDetection::new().with_base_ejection(Duration::from_millis(1));
    let peer = peers(1).remove(0);
    rules
        .record_failure(&peer, FailureKind::ConnectTimeout)
        .unwrap();
    while peer.health().state() != HealthState::HalfOpen {
        std::thread::yield_now();
    }
    let admitted = AtomicUsize::new(0);
    together(|_| {
        let attempt = Attempt::new(&[], None);
        for _ in 0..100 {
            if attempt.admits(&peer) {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 100 * THREADS);
    assert_eq!(peer.health().admission(), Admission::Probe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_under_racing_withdrawals() {
    let budget = RetryBudget::new(0.1, 0, Duration::from_secs(60)).unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..125 {
                    budget.deposit();
                }
            });
        }
    });
    assert_eq!(budget.remaining(), 100, "1,000 requests at 10 %");
    let granted = AtomicUsize::new(0);
    together(|_| {
        while budget.withdraw() {
            granted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let granted = granted.load(Ordering::Relaxed);
    // Check-then-count: each racing thread may pass the check once after the last true grant.
    assert!(
        (100..100 + THREADS).contains(&granted),
        "granted {granted} of 100"
    );
}
