//! Failover at the moment of failure, not after a warm-up that hides it.
//!
//! Under closed-loop load (32 connections, one request at a time each, one in eight a POST), a
//! healthy primary breaks 2 s into the run and heals at 8 s; the run ends at 14 s. Every
//! request's latency is recorded. The faults, played by an upstream in this process:
//! - crash: the listener closes (connects refused) and every open connection is reset;
//! - blackhole: connects hang (a listener with a full backlog) and open connections stall;
//! - slow: the primary answers after 1 s;
//! - 503: the primary answers 503;
//! - drop: every packet to the primary is dropped (iptables on loopback, as root; skipped
//!   elsewhere): a blackholed route, where the primary's kernel acknowledges nothing, so that a
//!   POST caught there provably never arrived;
//! - drop-h2: the same, with both upstreams speaking HTTP/2 in clear text (h2c), where one
//!   connection carries every request to the primary.
//!
//! Each fault is run against `failover_proxy` (ordered list: primary, then backup) with its
//! defaults, again with `--no-stall-cut` (`failover-no-cut`), with `--undelivered-retry`
//! (`failover-undelivered`, which also moves a POST its peer never received), and against bare
//! pingora with the
//! usual hand-written failover (a try counter in `CTX`, one retry of a connect failure on the
//! backup), all with one worker thread, a 400 ms connect timeout and a 1 s read timeout (300 ms
//! for slow). Reported per run:
//! - failed GETs and POSTs (an error or a 5xx), and POSTs that reached the upstreams twice;
//! - requests slower than 50 ms, and the slowest;
//! - onset: from the fault until the last GET slower than 50 ms ended (within the fault
//!   window): how long clients kept waiting on the primary (a POST, once sent, waits for its
//!   answer or its timeout whatever a proxy does);
//! - the p99 of the GETs sent in the fault window, corrected for coordinated omission as wrk
//!   does (each stall adds the requests its connection would have sent meanwhile, at the
//!   healthy interval); POSTs are left out as for the onset;
//! - throughput in the fault window;
//! - back: after the heal, until the first 100 ms in which 90 % of requests went to the primary.
//!
//! ```text
//! make bench   # or:
//! cargo build --release --example failover_proxy --example bare_proxy
//! cargo bench --bench onset
//! ```
//!
//! `ONSET_FAULTS=crash,blackhole,slow,503,drop,drop-h2` chooses faults;
//! `ONSET_PROXIES=bare,failover,failover-no-cut,failover-undelivered` proxies.
//! `ONSET_SHOW=1` lists every request of the fault window slower than 50 ms, how many requests
//! the primary answered in the second before the fault, and the GETs of its first 50 ms.
//! `ONSET_COLD=1` breaks the primary before the first request instead (a host down at deploy:
//! nothing learned of it yet); the onset then counts from the start.
//! Loopback only; every process it starts is killed when it ends.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    bench_runtime, corrected, free_port, h2_config, load, mean_latency_before, ms, quantile,
    spawn_proxy, Mode, Proxy, Record, Upstream,
};

const CLIENTS: usize = 32;
const FAULT_AT: Duration = Duration::from_secs(2);
const HEAL_AT: Duration = Duration::from_secs(8);
const END_AT: Duration = Duration::from_secs(14);
const STALL: Duration = Duration::from_millis(50);

const FAULTS: [(&str, Mode); 6] = [
    ("crash", Mode::Crash),
    ("blackhole", Mode::Blackhole),
    ("slow", Mode::Slow(Duration::from_secs(1))),
    ("503", Mode::Unavailable),
    // The upstream keeps serving; its packets are dropped on the way in.
    ("drop", Mode::Up),
    // The same with HTTP/2 (h2c) upstreams: every stream on the primary's connection stalls.
    ("drop-h2", Mode::Up),
];

/// Drops every packet to `port` on loopback while it lives (iptables).
struct Dropped(u16);

impl Dropped {
    fn rule(op: &str, port: u16) -> Vec<String> {
        let port = port.to_string();
        [
            "INPUT", "-i", "lo", "-p", "tcp", "--dport", &port, "-j", "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .fold(vec![op.to_owned()], |mut v, a| {
            v.push(a);
            v
        })
    }

    fn on(port: u16) -> Option<Self> {
        std::process::Command::new("iptables")
            .args(Self::rule("-I", port))
            .status()
            .is_ok_and(|s| s.success())
            .then_some(Self(port))
    }
}

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(Self::rule("-D", self.0))
            .status();
    }
}

fn iptables_usable() -> bool {
    std::process::Command::new("iptables")
        .args(["-L", "INPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `h2`: the upstreams speak HTTP/2 in clear text.
async fn start_proxy(
    kind: &str,
    primary: SocketAddr,
    backup: SocketAddr,
    slow: bool,
    h2: bool,
) -> (Proxy, SocketAddr) {
    let listen = free_port();
    let read_ms = if slow { "300" } else { "1000" };
    let (p, b, l) = (primary.to_string(), backup.to_string(), listen.to_string());
    // The reference proxy takes peers of another protocol from its configuration file.
    let c = h2.then(|| h2_config(primary, backup, listen));
    let peers: Vec<&str> = match &c {
        Some(c) => vec!["--config", c],
        None => vec!["--peer", &p, "--peer", &b],
    };
    let mut args: Vec<&str> = match kind {
        "failover" | "failover-no-cut" | "failover-undelivered" => vec![
            "--listen",
            &l,
            "--threads",
            "1",
            "--quiet",
            "--connect-timeout-ms",
            "400",
            "--read-timeout-ms",
            read_ms,
            "--retry-status",
            "502",
            "--retry-status",
            "503",
            "--retry-status",
            "504",
        ],
        _ => vec![
            "--listen",
            &l,
            "--peer",
            &p,
            "--backup",
            &b,
            "--threads",
            "1",
            "--connect-timeout-ms",
            "400",
            "--read-timeout-ms",
            read_ms,
            "--http",
            if h2 { "h2" } else { "h1" },
        ],
    };
    if kind != "bare" {
        args.extend(peers);
    }
    if kind == "failover-no-cut" {
        args.push("--no-stall-cut");
    }
    if kind == "failover-undelivered" {
        args.push("--undelivered-retry");
    }
    let name = if kind == "bare" {
        "bare_proxy"
    } else {
        "failover_proxy"
    };
    let proxy = spawn_proxy(name, &args, listen).await;
    if let Some(c) = &c {
        let _ = std::fs::remove_file(c);
    }
    (proxy, listen)
}

struct Row {
    failed_get: usize,
    failed_post: usize,
    twice: usize,
    stalled: usize,
    max: Duration,
    onset: Duration,
    p99: Duration,
    rps: f64,
    back: Option<Duration>,
}

/// `fault_at`: when the fault began (0 for a cold start, where the interval between requests
/// while all was well is taken from the last seconds, after the heal).
fn analyse(records: &[Record], twice: usize, fault_at: Duration) -> Row {
    let interval = if fault_at.is_zero() {
        let healthy = HEAL_AT + Duration::from_secs(2);
        let (sum, n) = records
            .iter()
            .filter(|r| r.start >= healthy)
            .fold((0.0, 0usize), |(s, n), r| {
                (s + r.latency.as_secs_f64(), n + 1)
            });
        sum / n.max(1) as f64
    } else {
        mean_latency_before(records, fault_at)
    };
    let in_window = |r: &&Record| r.start >= fault_at && r.start < HEAL_AT;
    let mut window: Vec<f64> = Vec::new();
    for r in records.iter().filter(in_window).filter(|r| !r.post) {
        corrected(r.latency.as_secs_f64(), interval, &mut window);
    }
    window.sort_by(f64::total_cmp);
    let p99 = quantile(&window, 0.99);
    // A POST sent to the primary cannot be moved once sent: it waits its answer or timeout
    // whatever the proxy does, so the onset is the GETs'.
    let onset = records
        .iter()
        .filter(|r| !r.post && (r.latency > STALL || r.failed()))
        .map(|r| r.start + r.latency)
        .filter(|end| *end > fault_at && *end < HEAL_AT + STALL)
        .max()
        .map_or(Duration::ZERO, |end| end - fault_at);
    let served = records.iter().filter(in_window).count();
    // After the heal, 100 ms buckets by when requests were sent.
    let mut back = None;
    let mut t = HEAL_AT;
    while t + Duration::from_millis(100) <= END_AT {
        let bucket: Vec<&Record> = records
            .iter()
            .filter(|r| r.start >= t && r.start < t + Duration::from_millis(100))
            .collect();
        let primary = bucket.iter().filter(|r| r.marked).count();
        if !bucket.is_empty() && primary * 10 >= bucket.len() * 9 {
            back = Some(t + Duration::from_millis(100) - HEAL_AT);
            break;
        }
        t += Duration::from_millis(100);
    }
    Row {
        failed_get: records.iter().filter(|r| !r.post && r.failed()).count(),
        failed_post: records.iter().filter(|r| r.post && r.failed()).count(),
        twice,
        stalled: records.iter().filter(|r| r.latency > STALL).count(),
        max: records.iter().map(|r| r.latency).max().unwrap_or_default(),
        onset,
        p99: Duration::from_secs_f64(p99),
        rps: served as f64 / (HEAL_AT - fault_at).as_secs_f64(),
        back,
    }
}

/// Prints each request of the fault window slower than `STALL`, in the order sent.
fn show_slow(records: &[Record], fault_at: Duration) {
    let mut slow: Vec<&Record> = records
        .iter()
        .filter(|r| r.latency > STALL && r.start + r.latency > fault_at && r.start < HEAL_AT)
        .collect();
    slow.sort_by_key(|r| r.start);
    let before: Vec<&Record> = records
        .iter()
        .filter(|r| r.start < fault_at && r.start + Duration::from_secs(1) >= fault_at)
        .collect();
    println!(
        "  in the second before the fault: {} requests, {} answered by the primary",
        before.len(),
        before.iter().filter(|r| r.marked).count()
    );
    let first: Vec<&Record> = records
        .iter()
        .filter(|r| !r.post && r.start >= fault_at && r.start < fault_at + STALL)
        .collect();
    let mut took: Vec<f64> = first
        .iter()
        .map(|r| r.latency.as_secs_f64() * 1e3)
        .collect();
    took.sort_by(f64::total_cmp);
    println!(
        "  GETs sent in the fault's first 50 ms: {}, {} answered by the primary, took {:.1}-{:.1} ms",
        first.len(),
        first.iter().filter(|r| r.marked).count(),
        took.first().copied().unwrap_or_default(),
        took.last().copied().unwrap_or_default(),
    );
    for r in slow {
        println!(
            "  slow {}: sent at fault {:+.1} ms, took {:.1} ms, status {}, answered by {}",
            if r.post { "POST" } else { "GET" },
            (r.start.as_secs_f64() - fault_at.as_secs_f64()) * 1e3,
            r.latency.as_secs_f64() * 1e3,
            r.status,
            if r.marked {
                "the primary"
            } else {
                "the backup"
            },
        );
    }
}

/// `cold`: the primary is broken before the proxy has seen a request (one host of a pool down
/// at deploy), rather than at `FAULT_AT`.
async fn run(kind: &str, name: &str, fault: Mode, cold: bool) -> Row {
    let h2 = name == "drop-h2";
    let (primary, backup) = Upstream::pair(h2).await;
    let slow = matches!(fault, Mode::Slow(_));
    let (_proxy, addr) = start_proxy(kind, primary.addr, backup.addr, slow, h2).await;
    let mut dropped = None;
    let mut break_primary = || {
        dropped = name
            .starts_with("drop")
            .then(|| Dropped::on(primary.addr.port()).expect("iptables"));
        primary.mode.send_replace(fault);
    };
    if cold {
        break_primary();
    }
    let t0 = Instant::now();
    let ids = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load(addr, t0, END_AT, Some(ids.clone()), b"primary")))
        .collect();
    tokio::time::sleep_until((t0 + FAULT_AT).into()).await;
    if !cold {
        break_primary();
    }
    tokio::time::sleep_until((t0 + HEAL_AT).into()).await;
    drop(dropped);
    primary.mode.send_replace(Mode::Up);
    let mut records = Vec::new();
    for c in clients {
        records.extend(c.await.unwrap());
    }
    let mut posts = primary.posts.lock().unwrap().clone();
    for (id, n) in backup.posts.lock().unwrap().iter() {
        *posts.entry(*id).or_default() += n;
    }
    let twice = posts.values().filter(|n| **n > 1).count();
    let fault_at = if cold { Duration::ZERO } else { FAULT_AT };
    if std::env::var("ONSET_SHOW").is_ok_and(|v| v == "1") {
        show_slow(&records, fault_at);
    }
    analyse(&records, twice, fault_at)
}

fn main() {
    let Some(runtime) = bench_runtime("onset") else {
        return;
    };
    let pick = |var: &str| std::env::var(var).ok();
    let faults: Vec<(&str, Mode)> = match pick("ONSET_FAULTS") {
        Some(list) => FAULTS
            .iter()
            .filter(|(n, _)| list.split(',').any(|w| w == *n))
            .copied()
            .collect(),
        None => FAULTS.to_vec(),
    };
    let faults: Vec<(&str, Mode)> = faults
        .into_iter()
        .filter(|(n, _)| {
            let usable = !n.starts_with("drop") || iptables_usable();
            if !usable {
                println!("drop: skipped (iptables needs root and the iptables package)");
            }
            usable
        })
        .collect();
    let proxies: Vec<String> = pick("ONSET_PROXIES")
        .map(|l| l.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| {
            [
                "bare",
                "failover",
                "failover-no-cut",
                "failover-undelivered",
            ]
            .map(String::from)
            .to_vec()
        });
    println!(
        "onset: {CLIENTS} closed-loop connections; fault at {} s, heal at {} s, end at {} s",
        FAULT_AT.as_secs(),
        HEAL_AT.as_secs(),
        END_AT.as_secs()
    );
    println!();
    println!("| fault | proxy | failed GET / POST | POST twice | >50 ms | max ms | onset ms | GET p99 ms (corrected) | req/s in fault | back >=90 % |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // ONSET_COLD=1: the primary is broken from the start instead (its fault time is 0).
    let cold = pick("ONSET_COLD").is_some_and(|v| v == "1");
    if cold {
        println!("cold start: the primary is broken before the first request");
    }
    for (name, fault) in &faults {
        for kind in &proxies {
            // Moving an undelivered POST matters only where the kernel can tell.
            if kind == "failover-undelivered" && !matches!(*name, "drop" | "drop-h2" | "blackhole")
            {
                continue;
            }
            let row = runtime.block_on(run(kind, name, *fault, cold));
            let back = row.back.map_or_else(
                || format!("> {} ms", ms(END_AT - HEAL_AT)),
                |b| format!("{} ms", ms(b)),
            );
            println!(
                "| {name} | {kind} | {} / {} | {} | {} | {} | {} | {} | {:.0} | {back} |",
                row.failed_get,
                row.failed_post,
                row.twice,
                row.stalled,
                ms(row.max),
                ms(row.onset),
                ms(row.p99),
                row.rps,
            );
        }
    }
}
