//! `select()` on the stock selectors (and two tiers of round-robin), for 2, 16 and 256 peers, with none, one and half of the
//! peers ejected: a first attempt, and a retry after one failed peer. And the cost of updating a
//! peer set of 1,000 peers.
//!
//! ```text
//! cargo bench --bench select
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pingora_failover::{
    Attempt, AttemptRecord, FailureKind, HashKey, HashRing, LeastRequest, OrderedList,
    OutlierDetection, PeakEwma, Peer, PeerSelector, PeerSet, PriorityTiers, RoundRobin, SlowStart,
};

/// Weighted peers, each with a learned latency.
fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            let p = Peer::builder(format!("127.0.0.1:{}", 10_000 + i))
                .with_weight(1 + (i % 4) as u32)
                .build()
                .unwrap();
            p.health()
                .record_latency(std::time::Duration::from_micros(800 + 10 * i as u64));
            p
        })
        .collect()
}

/// Two tiers of round-robin: the first half of the peers, then the rest.
fn two_tiers(p: Vec<Peer>) -> PriorityTiers {
    let half = p.len() / 2;
    PriorityTiers::new(vec![
        Box::new(RoundRobin::new(p[..half].to_vec()).unwrap()),
        Box::new(RoundRobin::new(p[half..].to_vec()).unwrap()),
    ])
    .unwrap()
}

/// Ejects `count` peers spread over the list, the first one included.
fn eject(peers: &[Peer], count: usize) {
    let rules = OutlierDetection::new().with_base_ejection(std::time::Duration::from_secs(3600));
    let stride = peers.len() / count.max(1);
    for p in peers.iter().step_by(stride.max(1)).take(count) {
        rules.record_failure(p, FailureKind::ConnectRefused);
    }
}

fn bench_selector<S: PeerSelector>(c: &mut Criterion, name: &str, make: fn(Vec<Peer>) -> S) {
    let mut group = c.benchmark_group(name);
    for n in [2, 16, 256] {
        for (label, ejected) in [("0", 0), ("1", 1), ("half", n / 2)] {
            let peers = peers(n);
            eject(&peers, ejected);
            let selector = make(peers.clone());
            let id = |what| BenchmarkId::new(format!("{what}/ejected-{label}"), n);
            group.bench_function(id("first"), |b| {
                b.iter(|| black_box(selector.select(black_box(&Attempt::new(&[], None)))))
            });
            let tried = [AttemptRecord::new(peers[n - 1].clone())];
            group.bench_function(id("retry"), |b| {
                b.iter(|| black_box(selector.select(black_box(&Attempt::new(&tried, None)))))
            });
        }
    }
    group.finish();
}

fn selectors(c: &mut Criterion) {
    bench_selector(c, "ordered", |p| OrderedList::new(p).unwrap());
    bench_selector(c, "round_robin", |p| RoundRobin::new(p).unwrap());
    bench_selector(c, "hash", |p| HashRing::new(p, HashKey::path()).unwrap());
    bench_selector(c, "least_request", |p| LeastRequest::new(p).unwrap());
    bench_selector(c, "ewma", |p| PeakEwma::new(p).unwrap());
    bench_selector(c, "tiers", two_tiers);
    // Slow start configured, no peer ramping: the steady state's extra cost.
    bench_selector(c, "round_robin_slow_start", |p| {
        RoundRobin::new(p)
            .unwrap()
            .with_slow_start(SlowStart::new(std::time::Duration::from_secs(30)).unwrap())
    });
}

/// The cost of an update of a set of 1,000 peers: the same list again from new handles (every
/// peer stays and keeps its health), and a list of which half is new.
fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("set_update");
    let all = peers(1500);
    let set = PeerSet::new(all[..1000].to_vec()).unwrap();
    let same: Vec<Peer> = all[..1000]
        .iter()
        .map(|p| Peer::new(p.name()).unwrap())
        .collect();
    group.bench_function("1000/all_stay", |b| {
        b.iter(|| set.replace(black_box(same.clone())).unwrap())
    });
    let halves = [all[500..1500].to_vec(), all[..1000].to_vec()];
    let mut turn = 0;
    group.bench_function("1000/half_new", |b| {
        b.iter(|| {
            turn ^= 1;
            set.replace(black_box(halves[turn].clone())).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, selectors, updates);
criterion_main!(benches);
