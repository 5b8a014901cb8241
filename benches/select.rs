//! `select()` on the stock selectors, for 2, 16 and 256 peers: a first attempt, and a retry
//! after one failed peer.
//!
//! ```text
//! cargo bench --bench select
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pingora_failover::{Attempt, AttemptRecord, OrderedList, Peer, PeerSelector, RoundRobin};

fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            Peer::builder(format!("127.0.0.1:{}", 10_000 + i))
                .with_weight(1 + (i % 4) as u32)
                .build()
                .unwrap()
        })
        .collect()
}

fn bench_selector<S: PeerSelector>(c: &mut Criterion, name: &str, make: fn(Vec<Peer>) -> S) {
    let mut group = c.benchmark_group(name);
    for n in [2, 16, 256] {
        let peers = peers(n);
        let selector = make(peers.clone());
        group.bench_with_input(BenchmarkId::new("first", n), &n, |b, _| {
            b.iter(|| black_box(selector.select(black_box(&Attempt::new(&[], None)))))
        });
        let tried = [AttemptRecord::new(peers[0].clone())];
        group.bench_with_input(BenchmarkId::new("retry", n), &n, |b, _| {
            b.iter(|| black_box(selector.select(black_box(&Attempt::new(&tried, None)))))
        });
    }
    group.finish();
}

fn selectors(c: &mut Criterion) {
    bench_selector(c, "ordered", |p| OrderedList::new(p).unwrap());
    bench_selector(c, "round_robin", |p| RoundRobin::new(p).unwrap());
}

criterion_group!(benches, selectors);
criterion_main!(benches);
