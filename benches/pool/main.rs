//! Protecting the pool: how many attempts reach the upstreams per client request when every
//! peer is down, second by second, with the retry budget and without it.
//!
//! 16 clients loop GETs, one request at a time, through `failover_proxy` (release) in front of
//! three upstreams that are all refused (no listener), all blackholed (a full accept backlog:
//! the connect times out after 400 ms) or all answering 503. Each request may make 3 attempts.
//! The attempts of each request are read from the proxy's access log (`attempts=N`), counted in
//! the second the request ended. Reported per row: requests, attempts per request after the
//! first second, the worst single second, and the series. `budget` is the default retry budget
//! (20 % of requests over 10 s, or 3 a second with 20 at once); `none` runs without a budget,
//! as a proxy with an attempt cap alone does.
//!
//! ```text
//! make bench   # or:
//! cargo build --release --example failover_proxy
//! cargo bench --bench pool
//! ```
//!
//! Then failover under a limit: 64 clients loop GETs (each answered after 20 ms) over a primary,
//! a backup and a third peer in that order; the primary crashes 2 s in. With `limit`, every peer
//! may have 16 requests in flight (`--max-requests-per-peer 16`); `none` has no limit. Reported:
//! the most requests the backup and the third peer had in flight at once, answers by status,
//! and the slowest request: a full pool answers 503 at once, it waits for nothing.
//!
//! Then a partly failing peer: round-robin over a peer failing 30 % of its requests with 503
//! (spread, never twice in a row), one failing 1 % and one that never fails, 16 clients, 503
//! retried; with the failure-ratio rule (30 % of at least 20 requests over 10 s) and without.
//! Reported: when the 30 % peer was first ejected, each peer's ejections (from the proxy's
//! health events on stderr), each peer's share of the requests, and answers other than 200.
//!
//! Then a shared overload: four peers all answering 503, with an ejection cap of 50 % and
//! without: the most peers ejected at once, and the requests each answered.
//!
//! Then a hot key: consistent hashing on the path over four peers answering after 10 ms, 16
//! clients, 30 % of requests for one key and the rest over 1,000 others; with bounded loads
//! (`--hash-balance-factor` 1.25 and 2) and without. Reported: the most requests each peer had
//! in flight at once (the hot key's peer first; the bound is the factor times the mean), the
//! requests of other keys answered away from their own peer (the one that answered the key
//! most), for keys that share the hot key's peer and for the others, and the hot key's requests
//! answered away from its peer.
//!
//! `POOL_ROWS` picks rows (`down,limit,partly,storm,hot`; all by default). `POOL_SECONDS` sets
//! each row's length (default 12: past a 10 s window, where a reserve spent in the first seconds
//! came back). Loopback only; every process it starts is killed when it ends.

#[path = "../common/mod.rs"]
mod common;
mod down;
mod hot;
mod limit;
mod watched;

use common::bench_runtime;
use down::{run, Down};
use hot::hot_key;
use limit::limited;
use watched::{partly_failing, storm};

/// Clients of the rows but the limit rows.
const CLIENTS: usize = 16;

fn main() {
    let Some(runtime) = bench_runtime("pool") else {
        return;
    };
    let seconds: u64 = std::env::var("POOL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("pool: every peer down, {CLIENTS} clients, 3 attempts a request, {seconds} s a row");
    println!(
        "{:<12} {:<7} {:>9} {:>18} {:>12}  attempts/request each second",
        "peers", "budget", "requests", "after 1st second", "worst second"
    );
    // `POOL_ROWS=down,limit,partly,storm,hot` (any of them; all by default).
    let rows = std::env::var("POOL_ROWS").unwrap_or("down,limit,partly,storm,hot".into());
    let row = |name: &str| rows.split(',').any(|r| r == name);
    let down_rows = row("down");
    runtime.block_on(async {
        for (name, down) in [
            ("refused", Down::Refused),
            ("blackholed", Down::Blackholed),
            ("503", Down::Unavailable),
        ]
        .into_iter()
        .filter(|_| down_rows)
        {
            for budget in [true, false] {
                let (requests, after, worst, series) = run(down, budget, seconds).await;
                let series: Vec<String> = series.iter().map(|r| format!("{r:.2}")).collect();
                println!(
                    "{:<12} {:<7} {:>9} {:>18.2} {:>12.2}  {}",
                    name,
                    if budget { "budget" } else { "none" },
                    requests,
                    after,
                    worst,
                    series.join(" ")
                );
            }
        }
        println!();
        println!(
            "failover under a limit: 64 clients, answers after 20 ms, the primary crashes 2 s in, \
             {seconds} s a row"
        );
        println!(
            "{:<7} {:>14} {:>13} {:>9} {:>9} {:>7} {:>9}",
            "limit", "backup at most", "third at most", "200", "503", "other", "slowest"
        );
        for limit in [true, false].into_iter().filter(|_| row("limit")) {
            let (backup, third, seen) = limited(limit, seconds).await;
            println!(
                "{:<7} {:>14} {:>13} {:>9} {:>9} {:>7} {:>7.0}ms",
                if limit { "16" } else { "none" },
                backup,
                third,
                seen.ok,
                seen.unavailable,
                seen.other,
                seen.slowest.as_secs_f64() * 1000.0
            );
            if let Some(other) = seen.first_other {
                println!("        first other answer: {other}");
            }
        }
        println!();
        println!(
            "a partly failing peer: round-robin over peers failing 30 % (503), 1 % and none, \
             {CLIENTS} clients, 503 retried, {seconds} s a row"
        );
        println!(
            "{:<7} {:>15} {:>11} {:>11} {:>12} {:>12} {:>9} {:>7}",
            "ratio", "30 % ejected at", "ejections", "ejections", "30 % share", "1 % share",
            "requests", "non-200"
        );
        println!("{:<7} {:>15} {:>11} {:>11}", "", "", "30 % peer", "1 % peer");
        for ratio in [true, false].into_iter().filter(|_| row("partly")) {
            let p = partly_failing(ratio, seconds).await;
            println!(
                "{:<7} {:>15} {:>11} {:>11} {:>11.1}% {:>11.1}% {:>9} {:>7}",
                if ratio { "30/20" } else { "none" },
                p.first_ejection.map_or("never".into(), |t| format!("{t:.2} s")),
                p.ejections.0,
                p.ejections.1,
                p.shares.0 * 100.0,
                p.shares.1 * 100.0,
                p.requests,
                p.failed
            );
        }
        println!();
        println!("a shared overload: four peers answering 503, round-robin, {CLIENTS} clients, {seconds} s a row");
        println!("{:<7} {:>22}  requests each peer answered", "cap", "most ejected at once");
        for cap in [Some(50), None].into_iter().filter(|_| row("storm")) {
            let (most, each) = storm(cap, seconds).await;
            println!(
                "{:<7} {:>22}  {:?}",
                cap.map_or("none".into(), |c| format!("{c} %")),
                most,
                each
            );
        }
        println!();
        println!(
            "a hot key: hashing on the path over four peers (10 ms answers), {CLIENTS} clients, \
             30 % of requests for one key, {seconds} s a row"
        );
        println!(
            "{:<7} {:>29} {:>7} {:>36} {:>15}",
            "bound",
            "most in flight (hot peer 1st)",
            "mean",
            "other keys moved: on hot peer / else",
            "hot key spilled"
        );
        for bound in [Some("1.25"), Some("2"), None]
            .into_iter()
            .filter(|_| row("hot"))
        {
            let h = hot_key(bound, seconds).await;
            println!(
                "{:<7} {:>29} {:>7.1} {:>17} / {:>6} of {:<7} {:>6} of {:<6}",
                bound.unwrap_or("none"),
                format!("{:?}", h.most),
                h.mean,
                h.moved.0,
                h.moved.1,
                h.moved.2,
                h.hot_spilled.0,
                h.hot_spilled.1
            );
        }
    });
}
