//! `select()` on the stock selectors (and two tiers of round-robin), for 2, 16 and 256 peers, with none, one and half of the
//! peers ejected: a first attempt, and a retry after one failed peer. The cost of updating a
//! peer set of 1,000 peers. And `HashRing`'s first selection right after its set was replaced by
//! 200 peers of weight 100 (a ring of 3.2 million points), against the steady state: the ring is
//! built by the update, so the request right after it pays nothing.
//!
//! ```text
//! cargo bench --bench select
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

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

/// 200 peers of weight 100 from port `first`.
fn heavy_peers(first: usize) -> Vec<Peer> {
    (0..200)
        .map(|i| {
            Peer::builder(format!("127.0.0.1:{}", first + i))
                .with_weight(100)
                .build()
                .unwrap()
        })
        .collect()
}

/// The `q` quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q) as usize]
}

/// `HashRing` over 200 peers of weight 100: a selection in the steady state, and the first one
/// after each of 20 replaces of the whole set (timed by hand: each replace builds a ring of 3.2
/// million points, too slow for criterion to repeat at will). Prints p50 and p99 of each.
fn hash_after_replace(c: &mut Criterion) {
    let lists = [heavy_peers(20_000), heavy_peers(21_000)];
    let ring = HashRing::new(lists[0].clone(), HashKey::path()).unwrap();
    let req = pingora_failover::pingora::RequestHeader::build("GET", b"/key", None).unwrap();
    let select = || black_box(ring.select(black_box(&Attempt::new(&[], Some(&req)))));
    let mut group = c.benchmark_group("hash_after_replace");
    group.bench_function("200x100/steady", |b| b.iter(select));
    group.finish();

    // Under `cargo test` (no `--bench`), criterion runs each bench once to show it works: one
    // replace then, not twenty (each builds a ring of 3.2 million points, seconds in a debug
    // build).
    let turns = if std::env::args().any(|a| a == "--bench") {
        20
    } else {
        1
    };
    let mut steady: Vec<Duration> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            select();
            t.elapsed()
        })
        .collect();
    let (mut first, mut replaces) = (Vec::new(), Vec::new());
    for turn in 0..turns {
        let t = Instant::now();
        ring.set().replace(lists[(turn + 1) % 2].clone()).unwrap();
        replaces.push(t.elapsed());
        let t = Instant::now();
        select();
        first.push(t.elapsed());
    }
    println!(
        "hash_after_replace/200x100: steady p50 {:?} p99 {:?}; first select after a replace \
         p50 {:?} p99 {:?}; the replace itself (ring built there) p50 {:?}",
        quantile(&mut steady, 0.5),
        quantile(&mut steady, 0.99),
        quantile(&mut first, 0.5),
        quantile(&mut first, 0.99),
        quantile(&mut replaces, 0.5),
    );
}

criterion_group!(benches, selectors, updates, hash_after_replace);
criterion_main!(benches);
