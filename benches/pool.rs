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

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bench_runtime, binary, free_port, until_listening, Client, Mode, Upstream};
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
    until_listening("the proxy", listen).await;
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

/// A `failover_proxy` (release) with `args` and the TOML `config`, listening on `listen`: its
/// health events (stderr), each with the time since it started listening, arrive on the
/// returned receiver.
async fn spawn_watched(
    args: &[String],
    config: &str,
    listen: SocketAddr,
) -> (
    tokio::process::Child,
    Instant,
    tokio::sync::mpsc::UnboundedReceiver<(Duration, String)>,
) {
    let path =
        std::env::temp_dir().join(format!("pool-bench-{}-{listen}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary("failover_proxy"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy starts");
    until_listening("the proxy", listen).await;
    let _ = std::fs::remove_file(&path);
    let t0 = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(event) = line.strip_prefix("failover_proxy: peer ") {
                let _ = tx.send((t0.elapsed(), event.to_owned()));
            }
        }
    });
    (child, t0, rx)
}

/// `CLIENTS` clients loop GETs of paths from `path` (given the client and a counter) until
/// `end`; the answers that were not 200.
async fn clients_on(
    listen: SocketAddr,
    end: Instant,
    path: impl Fn(u64, u64) -> String + Send + Sync + 'static,
) -> u64 {
    let path = Arc::new(path);
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|c| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut client = Client::new(listen, b"");
                let mut failed = 0;
                let mut n = 0;
                while Instant::now() < end {
                    n += 1;
                    match client.get(&path(c, n), (c << 32) + n, 0).await {
                        Ok((200, _)) => {}
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap_or(0);
    }
    failed
}

/// The requests for `/item` an upstream answered.
fn items(u: &Upstream) -> u64 {
    u.answered("/item")
}

/// What a row of partly failing peers showed.
struct Partly {
    /// When the peer failing 30 % was first ejected (s).
    first_ejection: Option<f64>,
    /// Its ejections, and the ejections of the peer failing 1 %.
    ejections: (usize, usize),
    /// Its share of the requests, and the share of the peer failing 1 %.
    shares: (f64, f64),
    /// Requests, and those answered other than 200.
    requests: u64,
    failed: u64,
}

/// Round-robin over a peer failing 30 % of its requests (503, never twice in a row), one failing
/// 1 % and one that never fails, 16 clients, 503 retried; with the failure-ratio rule (30 % of
/// at least 20 requests over 10 s) or without it.
async fn partly_failing(ratio: bool, seconds: u64) -> Partly {
    let partly = Upstream::start("partly", Mode::FailSome(3, 10)).await;
    let rarely = Upstream::start("rarely", Mode::FailSome(1, 100)).await;
    let fine = Upstream::start("fine", Mode::Up).await;
    let listen = free_port();
    let mut args = vec!["--selector".to_owned(), "round-robin".to_owned()];
    for u in [&partly, &rarely, &fine] {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    args.extend(["--retry-status".to_owned(), "503".to_owned()]);
    let config = if ratio {
        "[health]\nfailure_ratio_percent = 30\nfailure_ratio_min_requests = 20\n"
    } else {
        ""
    };
    let (child, t0, mut events) = spawn_watched(&args, config, listen).await;
    let failed = clients_on(listen, t0 + Duration::from_secs(seconds), |_, _| {
        "/item".into()
    })
    .await;
    drop(child);
    let (mut first, mut of_partly, mut of_rarely) = (None, 0, 0);
    while let Ok((at, event)) = events.try_recv() {
        if !event.contains(" ejected") {
            continue;
        }
        if event.starts_with(&partly.addr.to_string()) {
            of_partly += 1;
            first.get_or_insert(at.as_secs_f64());
        } else if event.starts_with(&rarely.addr.to_string()) {
            of_rarely += 1;
        }
    }
    let (p, r, f) = (items(&partly), items(&rarely), items(&fine));
    let all = (p + r + f).max(1) as f64;
    Partly {
        first_ejection: first,
        ejections: (of_partly, of_rarely),
        shares: (p as f64 / all, r as f64 / all),
        requests: p + r + f,
        failed,
    }
}

/// Four peers all answering 503 (a shared overload), round-robin, 16 clients; the most peers
/// ejected at once with a cap of `cap` percent (or none), and the requests each peer answered.
async fn storm(cap: Option<u8>, seconds: u64) -> (usize, Vec<u64>) {
    let mut ups = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ups.push(Upstream::start(name, Mode::Unavailable).await);
    }
    let listen = free_port();
    let mut args = vec!["--selector".to_owned(), "round-robin".to_owned()];
    for u in &ups {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    let config = match cap {
        Some(percent) => format!("[health]\nmax_ejection_percent = {percent}\n"),
        None => String::new(),
    };
    let (child, t0, mut events) = spawn_watched(&args, &config, listen).await;
    clients_on(listen, t0 + Duration::from_secs(seconds), |_, _| {
        "/item".into()
    })
    .await;
    drop(child);
    let mut out = std::collections::HashSet::new();
    let mut most = 0;
    while let Ok((_, event)) = events.try_recv() {
        let peer = event.split(' ').next().unwrap_or("").to_owned();
        if event.contains(" ejected") {
            out.insert(peer);
        } else if event.contains(" re-admitted") {
            out.remove(&peer);
        }
        most = most.max(out.len());
    }
    (most, ups.iter().map(items).collect())
}

/// What a hot-key row showed.
struct Hot {
    /// The most requests each peer had in flight at once, the hot key's home first.
    most: Vec<u64>,
    /// The mean in flight over all peers (16 clients over 4 peers).
    mean: f64,
    /// Requests of other keys answered by a peer other than their own (the one that answered
    /// the key most): of keys whose own peer is the hot key's, and of the others; and all
    /// requests of other keys.
    moved: (u64, u64, u64),
    /// Requests of the hot key answered away from its home.
    hot_spilled: (u64, u64),
}

/// Consistent hashing on the path over four peers answering after 10 ms, 16 clients; 30 % of
/// requests are for one hot key, the rest for 1,000 others; with bounded loads (the factor) or
/// not.
async fn hot_key(bound: Option<&str>, seconds: u64) -> Hot {
    let slow = Mode::Slow(Duration::from_millis(10));
    let mut ups = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ups.push(Upstream::start(name, slow).await);
    }
    let listen = free_port();
    let mut args = vec!["--selector".to_owned(), "hash".to_owned()];
    for u in &ups {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    if let Some(factor) = bound {
        args.extend(["--hash-balance-factor".to_owned(), factor.to_owned()]);
    }
    let (child, t0, _events) = spawn_watched(&args, "", listen).await;
    clients_on(listen, t0 + Duration::from_secs(seconds), |c, n| {
        // A small deterministic stream per client: 3 in 10 hot, the rest spread.
        let x = (c * 7_919 + n * 104_729) % 1_000;
        if n % 10 < 3 {
            "/hot".into()
        } else {
            format!("/k/{x}")
        }
    })
    .await;
    drop(child);
    let paths: Vec<HashMap<String, u64>> = ups
        .iter()
        .map(|u| u.load.paths.lock().unwrap().clone())
        .collect();
    let home = |key: &str| {
        (0..ups.len())
            .max_by_key(|&i| paths[i].get(key).copied().unwrap_or(0))
            .unwrap()
    };
    let hot_home = home("/hot");
    let hot_all: u64 = paths
        .iter()
        .map(|p| p.get("/hot").copied().unwrap_or(0))
        .sum();
    let mut keys: Vec<&String> = paths.iter().flat_map(|p| p.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut with_hot, mut elsewhere, mut others) = (0, 0, 0);
    for key in keys.into_iter().filter(|k| k.starts_with("/k/")) {
        let h = home(key);
        for (i, p) in paths.iter().enumerate() {
            let n = p.get(key).copied().unwrap_or(0);
            others += n;
            match (i != h, h == hot_home) {
                (true, true) => with_hot += n,
                (true, false) => elsewhere += n,
                _ => {}
            }
        }
    }
    let mut most: Vec<u64> = ups
        .iter()
        .map(|u| u.load.most.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    most.swap(0, hot_home);
    Hot {
        most,
        mean: CLIENTS as f64 / ups.len() as f64,
        moved: (with_hot, elsewhere, others),
        hot_spilled: (
            hot_all - paths[hot_home].get("/hot").copied().unwrap_or(0),
            hot_all,
        ),
    }
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
