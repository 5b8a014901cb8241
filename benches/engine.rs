//! The other hot paths: the policy decision, the retry budget, peer health updates; alone and
//! under contention from one thread per core.
//!
//! ```text
//! cargo bench --bench engine
//! ```

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pingora_failover::{
    Attempt, Failure, FailureKind, OutlierDetection, Peer, PeerSelector, RetryBudget, RetryPolicy,
    RoundRobin, StandardPolicy,
};
use pingora_http::RequestHeader;

fn single_thread(c: &mut Criterion) {
    let policy = StandardPolicy::builder()
        .with_retry_statuses([502, 503, 504])
        .build()
        .unwrap();
    let req = RequestHeader::build("GET", b"/", None).unwrap();
    let peer = Peer::new("127.0.0.1:1").unwrap();
    c.bench_function("policy/decide", |b| {
        b.iter(|| {
            let f = Failure::new(black_box(FailureKind::HeaderTimeout), 1, &req, &peer);
            black_box(policy.decide(&f))
        })
    });

    let budget = RetryBudget::default();
    c.bench_function("budget/deposit", |b| b.iter(|| budget.deposit()));
    c.bench_function("budget/deposit+withdraw", |b| {
        b.iter(|| {
            budget.deposit();
            black_box(budget.withdraw())
        })
    });

    let defaults = OutlierDetection::new();
    c.bench_function("health/success", |b| {
        b.iter(|| black_box(defaults.record_success(&peer)))
    });
    // High thresholds: measures the counting, not the ejection.
    let rules = OutlierDetection::new()
        .with_consecutive_failures(u32::MAX)
        .with_consecutive_connect_failures(u32::MAX);
    c.bench_function("health/failure", |b| {
        b.iter(|| black_box(rules.record_failure(&peer, FailureKind::HeaderTimeout)))
    });
    // Alternating samples, so that both the peak and the blend are taken.
    let mut n = 0u64;
    c.bench_function("health/learn_latency", |b| {
        b.iter(|| {
            n += 1;
            peer.health()
                .record_latency(black_box(Duration::from_micros(500 + (n & 1) * 900)))
        })
    });
}

/// Runs `op` on `threads` threads at once, `iters` times each, and returns the wall time of the
/// slowest thread divided by `iters`: the per-operation cost under contention.
fn contended(threads: usize, iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let start = Barrier::new(threads);
    let slowest = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    t.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    });
    slowest / iters as u32
}

fn contention(c: &mut Criterion) {
    let peers: Vec<_> = (0..16)
        .map(|i| Peer::new(&format!("127.0.0.1:{}", 20_000 + i)).unwrap())
        .collect();
    let rr = RoundRobin::new(peers.clone()).unwrap();
    let budget = RetryBudget::default();
    let rules = OutlierDetection::new();
    let ops: [(&str, &(dyn Fn() + Sync)); 4] = [
        ("round_robin/select", &|| {
            black_box(rr.select(&Attempt::new(&[], None)));
        }),
        ("budget/deposit+withdraw", &|| {
            budget.deposit();
            black_box(budget.withdraw());
        }),
        ("health/success", &|| {
            black_box(rules.record_success(&peers[0]));
        }),
        // Every thread's answers from one peer: the compare-and-swap contended.
        ("health/learn_latency", &|| {
            peers[0]
                .health()
                .record_latency(black_box(Duration::from_micros(700)));
        }),
    ];
    // One thread per core: more would measure the scheduler rather than the contention.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let mut group = c.benchmark_group(format!("contended-{threads}-threads"));
    for (name, op) in ops {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| contended(threads, iters.max(1), op) * iters as u32)
        });
    }
    group.finish();
}

criterion_group!(benches, single_thread, contention);
criterion_main!(benches);
