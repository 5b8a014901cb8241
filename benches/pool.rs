//! Protecting the pool: how many attempts reach the upstreams per client request when every
//! peer is down, second by second, with the retry budget and without it.
//!
//! 16 clients loop GETs, one request at a time, through `failover_proxy` (release) in front of
//! three upstreams that are all refused (no listener), all blackholed (a full accept backlog:
//! the connect times out after 400 ms) or all answering 503. Each request may make 3 attempts.
//! The attempts of each request are read from the proxy's access log (`attempts=N`), counted in
//! the second the request ended. Reported per row: requests, attempts per request after the
//! first second, the worst single second, and the series. `budget` is the default retry budget
//! (20 % of requests over 10 s, or 3 a second with 10 at once); `none` runs without a budget,
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
//! `POOL_ROWS=limit` runs the limit rows alone. `POOL_SECONDS` sets each row's length (default 12: past a 10 s window, where a reserve spent
//! in the first seconds came back). Loopback only; every process it starts is killed when it
//! ends.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bench_runtime, binary, free_port, Client, Mode, Upstream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const CLIENTS: usize = 16;

/// Attempts and requests per second of the run.
#[derive(Default)]
struct Seconds(Vec<(u64, u64)>);

impl Seconds {
    fn count(&mut self, second: usize, attempts: u64) {
        if self.0.len() <= second {
            self.0.resize(second + 1, (0, 0));
        }
        self.0[second].0 += attempts;
        self.0[second].1 += 1;
    }
}

/// How the peers are down.
#[derive(Clone, Copy)]
enum Down {
    /// Nothing listens.
    Refused,
    /// A full accept backlog: connects hang.
    Blackholed,
    /// They answer 503, which the proxy is told to fail over.
    Unavailable,
}

async fn run(down: Down, budget: bool, seconds: u64) -> (u64, f64, f64, Vec<f64>) {
    let mut upstreams = Vec::new();
    let mut peers = Vec::new();
    for name in ["a", "b", "c"] {
        match down {
            Down::Refused => peers.push(free_port()),
            Down::Blackholed | Down::Unavailable => {
                let u = Upstream::start(name, Mode::Up).await;
                peers.push(u.addr);
                upstreams.push(u);
            }
        }
    }
    for u in &upstreams {
        match down {
            Down::Blackholed => {
                u.mode.send(Mode::Blackhole).unwrap();
                // Until a connect hangs: the backlog is full.
                let hangs = || async {
                    tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(u.addr))
                        .await
                        .is_err()
                };
                while !hangs().await {}
            }
            _ => u.mode.send(Mode::Unavailable).unwrap(),
        }
    }
    let listen = free_port();
    let config = std::env::temp_dir().join(format!("pool-bench-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        if budget {
            "[budget]\nenabled = true\n"
        } else {
            "[budget]\nenabled = false\n"
        },
    )
    .unwrap();
    let mut args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--listen".to_owned(),
        listen.to_string(),
        "--connect-timeout-ms".to_owned(),
        "400".to_owned(),
        "--read-timeout-ms".to_owned(),
        "400".to_owned(),
    ];
    for p in &peers {
        args.push("--peer".to_owned());
        args.push(p.to_string());
    }
    if let Down::Unavailable = down {
        args.push("--retry-status".to_owned());
        args.push("503".to_owned());
    }
    let mut child = Command::new(binary("failover_proxy"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_err() {
        assert!(Instant::now() < deadline, "the proxy never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    let counted = Arc::new(Mutex::new(Seconds::default()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let reader = {
        let counted = counted.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(n) = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("attempts="))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let second = t0.elapsed().as_secs() as usize;
                counted.lock().unwrap().count(second, n);
            }
        })
    };
    let end = t0 + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client_loop(listen, end, c as u64)))
        .collect();
    for c in clients {
        let _ = c.await;
    }
    // The last answers' log lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(child);
    let _ = reader.await;
    let _ = std::fs::remove_file(&config);
    let per_second: Vec<(u64, u64)> = counted.lock().unwrap().0.clone();
    let full = &per_second[..per_second.len().min(seconds as usize)];
    let ratio = |&(a, r): &(u64, u64)| if r == 0 { 0.0 } else { a as f64 / r as f64 };
    let requests: u64 = full.iter().map(|s| s.1).sum();
    let after: (u64, u64) = full[1.min(full.len())..]
        .iter()
        .fold((0, 0), |(a, r), s| (a + s.0, r + s.1));
    let series: Vec<f64> = full.iter().map(ratio).collect();
    let worst = series.iter().cloned().fold(0.0, f64::max);
    (requests, ratio(&after), worst, series)
}

async fn client_loop(proxy: SocketAddr, end: Instant, c: u64) {
    let mut client = Client::new(proxy, b"a");
    let mut id = c << 32;
    while Instant::now() < end {
        id += 1;
        if client.get("/item", id, 0).await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What the clients of the limit rows saw.
#[derive(Default)]
struct Seen {
    ok: u64,
    unavailable: u64,
    other: u64,
    /// The first other answer, or error, for the report.
    first_other: Option<String>,
    slowest: Duration,
}

async fn limited(limit: bool, seconds: u64) -> (u64, u64, Seen) {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(20))).await;
    let backup = Upstream::start("backup", Mode::Slow(Duration::from_millis(20))).await;
    let third = Upstream::start("third", Mode::Slow(Duration::from_millis(20))).await;
    let listen = free_port();
    let mut args = vec![
        "--listen".to_owned(),
        listen.to_string(),
        "--quiet".to_owned(),
        "--connect-timeout-ms".to_owned(),
        "400".to_owned(),
        "--read-timeout-ms".to_owned(),
        "2000".to_owned(),
    ];
    for u in [&primary, &backup, &third] {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    if limit {
        args.push("--max-requests-per-peer".to_owned());
        args.push("16".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _proxy = common::spawn_proxy("failover_proxy", &args, listen).await;
    let end = Instant::now() + Duration::from_secs(seconds);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut client = Client::new(listen, b"backup");
                let mut id = c << 32;
                while Instant::now() < end {
                    id += 1;
                    let t = Instant::now();
                    let status = client.get("/item", id, 0).await.map(|(s, _)| s);
                    let took = t.elapsed();
                    let mut seen = seen.lock().unwrap();
                    seen.slowest = seen.slowest.max(took);
                    match status {
                        Ok(200) => seen.ok += 1,
                        Ok(503) => seen.unavailable += 1,
                        other => {
                            seen.other += 1;
                            seen.first_other.get_or_insert(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    primary.mode.send(Mode::Crash).unwrap();
    for c in clients {
        let _ = c.await;
    }
    let most = |u: &Upstream| u.load.most.load(std::sync::atomic::Ordering::Relaxed);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (most(&backup), most(&third), seen)
}

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
    // `POOL_ROWS=limit`: the limit rows alone.
    let down_rows = std::env::var("POOL_ROWS").map_or(true, |r| r != "limit");
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
        for limit in [true, false] {
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
    });
}
