//! Balancing around a slow peer: two upstreams answer in 1 ms; 1 s into the run one turns 20
//! times slower (20 ms) and stays so. Under 32 closed-loop connections through `failover_proxy`
//! (one worker thread), for round-robin, least-request and peak EWMA:
//! - the slow peer's share of requests over the 2 s after the slowdown, and over the rest of the
//!   run;
//! - p50, p99 and p99 corrected for coordinated omission (wrk's way, at the interval of the first
//!   second), after the slowdown;
//! - throughput after the slowdown.
//!
//! ```text
//! make bench   # or:
//! cargo build --release --example failover_proxy
//! cargo bench --bench balance
//! ```
//!
//! Loopback only; every process it starts is killed when it ends.

mod common;

use std::time::{Duration, Instant};

use common::{
    bench_runtime, corrected, free_port, load, mean_latency_before, ms, quantile, spawn_proxy,
    Mode, Record, Upstream,
};

const CLIENTS: usize = 32;
const SLOW_AT: Duration = Duration::from_secs(1);
const END_AT: Duration = Duration::from_secs(7);
const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(20);

struct Row {
    share_2s: f64,
    share: f64,
    p50: Duration,
    p99: Duration,
    p99_corrected: Duration,
    rps: f64,
}

async fn run(selector: &str) -> Row {
    let steady = Upstream::start("steady", Mode::Slow(FAST)).await;
    let slowed = Upstream::start("slowed", Mode::Slow(FAST)).await;
    let listen = free_port();
    let (l, a, b) = (
        listen.to_string(),
        steady.addr.to_string(),
        slowed.addr.to_string(),
    );
    let args = [
        "--listen",
        &l,
        "--peer",
        &a,
        "--peer",
        &b,
        "--selector",
        selector,
        "--threads",
        "1",
        "--quiet",
    ];
    let _proxy = spawn_proxy("failover_proxy", &args, listen).await;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load(listen, t0, END_AT, None, b"slowed")))
        .collect();
    tokio::time::sleep_until((t0 + SLOW_AT).into()).await;
    slowed.mode.send_replace(Mode::Slow(SLOW));
    let mut records: Vec<Record> = Vec::new();
    for c in clients {
        records.extend(c.await.unwrap());
    }
    analyse(&records)
}

fn analyse(records: &[Record]) -> Row {
    let interval = mean_latency_before(records, SLOW_AT);
    let after: Vec<&Record> = records.iter().filter(|r| r.start >= SLOW_AT).collect();
    let share = |upto: Duration| {
        let window: Vec<&&Record> = after.iter().filter(|r| r.start < upto).collect();
        window.iter().filter(|r| r.marked).count() as f64 / window.len().max(1) as f64
    };
    let mut plain: Vec<f64> = after.iter().map(|r| r.latency.as_secs_f64()).collect();
    plain.sort_by(f64::total_cmp);
    let mut fixed = Vec::new();
    for r in &after {
        corrected(r.latency.as_secs_f64(), interval, &mut fixed);
    }
    fixed.sort_by(f64::total_cmp);
    let secs = |s: f64| Duration::from_secs_f64(s);
    Row {
        share_2s: share(SLOW_AT + Duration::from_secs(2)),
        share: share(END_AT),
        p50: secs(quantile(&plain, 0.5)),
        p99: secs(quantile(&plain, 0.99)),
        p99_corrected: secs(quantile(&fixed, 0.99)),
        rps: after.len() as f64 / (END_AT - SLOW_AT).as_secs_f64(),
    }
}

fn main() {
    let Some(runtime) = bench_runtime("balance") else {
        return;
    };
    println!(
        "balance: {CLIENTS} closed-loop connections; both peers answer in {} ms, one in {} ms \
         from {} s; end at {} s",
        ms(FAST),
        ms(SLOW),
        SLOW_AT.as_secs(),
        END_AT.as_secs()
    );
    println!();
    println!("| selector | slow peer's share, first 2 s | slow peer's share, all | p50 ms | p99 ms | p99 ms (corrected) | req/s |");
    println!("|---|---|---|---|---|---|---|");
    for selector in ["round-robin", "least-request", "ewma"] {
        let row = runtime.block_on(run(selector));
        println!(
            "| {selector} | {:.1} % | {:.1} % | {:.1} | {:.1} | {:.1} | {:.0} |",
            row.share_2s * 100.0,
            row.share * 100.0,
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            row.p99_corrected.as_secs_f64() * 1000.0,
            row.rps
        );
    }
}
