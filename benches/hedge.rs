//! Hedging against an occasionally slow peer: two upstreams answer in 1 ms, one of them takes
//! 100 ms (100 times longer) on 1 request in 100. 8 closed-loop connections through
//! `failover_proxy` (round-robin, one worker thread) for 8 s, without hedging and hedging after
//! 5 ms and after 10 ms; bare pingora to the slow-at-times peer alone as the reference.
//!
//! Reported per row: p50, p99 and p99.9 of the client's latency, p99.9 corrected for
//! coordinated omission (wrk's way, at the row's mean latency), requests a second, and the
//! extra requests the upstreams answered (`/item` answered, less the client's requests, per
//! client request): what the cut in the tail costs.
//!
//! ```text
//! make bench   # or:
//! cargo build --release --example failover_proxy --example bare_proxy
//! cargo bench --bench hedge
//! ```
//!
//! Loopback only; every process it starts is killed when it ends.

mod common;

use std::time::{Duration, Instant};

use common::{bench_runtime, corrected, free_port, load, quantile, spawn_proxy, Mode, Upstream};

const CLIENTS: usize = 8;
const RUN: Duration = Duration::from_secs(8);
const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(100);

struct Row {
    p50: f64,
    p99: f64,
    p999: f64,
    p999_corrected: f64,
    rps: f64,
    extra: f64,
}

/// `hedge`: `None` for bare pingora, `Some(None)` for no hedging, `Some(Some(ms))` to hedge.
async fn run(hedge: Option<Option<u64>>) -> Row {
    let jittery = Upstream::start("jittery", Mode::SlowSome(FAST, SLOW, 1, 100)).await;
    let steady = Upstream::start("steady", Mode::Slow(FAST)).await;
    let listen = free_port();
    let (l, a, b) = (
        listen.to_string(),
        jittery.addr.to_string(),
        steady.addr.to_string(),
    );
    let mut args = vec!["--listen", &l, "--peer", &a, "--threads", "1"];
    let name = match hedge {
        None => "bare_proxy",
        Some(_) => {
            args.extend(["--peer", &b, "--selector", "round-robin", "--quiet"]);
            "failover_proxy"
        }
    };
    let ms;
    if let Some(Some(after)) = hedge {
        ms = after.to_string();
        args.extend(["--hedge-after-ms", &ms]);
    }
    let _proxy = spawn_proxy(name, &args, listen).await;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load(listen, t0, RUN, None, b"")))
        .collect();
    let mut records = Vec::new();
    for c in clients {
        records.extend(c.await.unwrap());
    }
    // The last losing attempts finish (at most SLOW) before the upstreams are counted.
    tokio::time::sleep(SLOW * 2).await;
    let answered: u64 = [&jittery, &steady]
        .iter()
        .map(|u| u.answered("/item"))
        .sum();
    let mut plain: Vec<f64> = records.iter().map(|r| r.latency.as_secs_f64()).collect();
    plain.sort_by(f64::total_cmp);
    let mean = plain.iter().sum::<f64>() / plain.len().max(1) as f64;
    let mut fixed = Vec::new();
    for r in &records {
        corrected(r.latency.as_secs_f64(), mean, &mut fixed);
    }
    fixed.sort_by(f64::total_cmp);
    let requests = records.len() as u64;
    Row {
        p50: quantile(&plain, 0.5),
        p99: quantile(&plain, 0.99),
        p999: quantile(&plain, 0.999),
        p999_corrected: quantile(&fixed, 0.999),
        rps: requests as f64 / RUN.as_secs_f64(),
        extra: answered.saturating_sub(requests) as f64 / requests.max(1) as f64,
    }
}

fn main() {
    let Some(runtime) = bench_runtime("hedge") else {
        return;
    };
    println!(
        "hedge: {CLIENTS} closed-loop connections, {} s; peers answer in 1 ms, one of them in \
         100 ms on 1 request in 100",
        RUN.as_secs()
    );
    println!();
    println!(
        "| proxy | p50 ms | p99 ms | p99.9 ms | p99.9 ms (corrected) | req/s | extra requests |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, hedge) in [
        ("bare pingora, the slow-at-times peer alone", None),
        ("failover, round-robin, no hedging", Some(None)),
        ("failover, hedge after 5 ms", Some(Some(5))),
        ("failover, hedge after 10 ms", Some(Some(10))),
    ] {
        let row = runtime.block_on(run(hedge));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} % |",
            row.p50 * 1000.0,
            row.p99 * 1000.0,
            row.p999 * 1000.0,
            row.p999_corrected * 1000.0,
            row.rps,
            row.extra * 100.0
        );
    }
}
