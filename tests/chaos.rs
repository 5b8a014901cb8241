//! Chaos under load: while GETs and POSTs flow through the proxy, every upstream but one is
//! killed, restarted, made to flap (its listener closed and reopened in a burst), blackholed,
//! slowed, hung and made to answer 503, at random from a printed seed. One of them speaks h2c and
//! also refuses streams or sends GOAWAY; with the `rustls` feature, one is HTTPS with a private CA.
//! The anchor, plain HTTP/1.1, stays healthy throughout. Replay a run with `CHAOS_SEED=N`; make it longer
//! with `CHAOS_SECONDS=N` (`make chaos` runs 60 s).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora_failover::{
    Failover, FailoverProxy, HealthChange, Outcome, OutlierDetection, Peer, RoundRobin,
    StandardPolicy,
};
use support::{
    client, open_fds, rss_bytes, start_proxy, Blackhole, Events, Mode, Proto, Rng, Upstream,
};

/// Counts the bytes live on the heap, for the check that memory returns to its baseline.
struct Tracking;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

fn live_heap() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const DEADLINE: Duration = Duration::from_millis(1500);
/// Time a request may take beyond the deadline: the client's and the proxy's own work.
const SLACK: Duration = Duration::from_millis(1000);
const CLIENTS: usize = 8;

/// What chaos did to one upstream.
enum Trouble {
    None,
    Down,
    Blackholed(Blackhole),
}

#[derive(Debug)]
struct Done {
    post: bool,
    status: u16,
    body: String,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_under_load_keeps_every_promise() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let seconds = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6u64);
    println!("chaos seed {seed} ({seconds} s); replay with CHAOS_SEED={seed}");

    let fds_before = open_fds();
    let heap_before = live_heap();
    #[cfg(feature = "rustls")]
    let last = Proto::Tls(support::TestCa::new());
    #[cfg(not(feature = "rustls"))]
    let last = Proto::H1;
    let mut ups = vec![
        Upstream::start("anchor", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start_with("h2c", Mode::Ok, Proto::H2c).await,
        Upstream::start_with("d", Mode::Ok, last).await,
    ];
    let h2c = 2;
    let peers: Vec<Peer> = ups
        .iter()
        .map(|u| {
            u.peer_builder()
                .with_connect_timeout(Duration::from_millis(200))
                .with_read_timeout(Duration::from_millis(300))
                .build()
                .unwrap()
        })
        .collect();
    let events = Events::default();
    let engine = Failover::builder(
        RoundRobin::new(peers).unwrap(),
        StandardPolicy::builder()
            // One attempt per peer: with three in trouble, the fourth reaches the anchor.
            .with_max_attempts(4)
            .with_retry_statuses([502, 503, 504])
            .build()
            .unwrap(),
    )
    .with_deadline(DEADLINE)
    .with_outlier_detection(
        OutlierDetection::new()
            .with_base_ejection(Duration::from_millis(200))
            .with_max_ejection(Duration::from_secs(1)),
    )
    .on_health_change(events.observer());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();

    // Warm up.
    for _ in 0..50 {
        assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    }
    let rss_warm = rss_bytes();

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Mutex::new(Vec::<Done>::new()));
    let mut load = Vec::new();
    for client_no in 0..CLIENTS {
        let (http, url, stop, done) = (http.clone(), proxy.url("/"), stop.clone(), done.clone());
        let mut rng = Rng(seed ^ ((client_no as u64 + 1) * 0x1000_0001));
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let post = rng.below(3) == 0;
                let id = format!("{client_no}-{n}");
                let req = if post {
                    http.post(&url)
                        .header("x-request-id", &id)
                        .body(format!("order {id}"))
                } else {
                    http.get(&url)
                };
                let started = Instant::now();
                let resp = req.send().await.expect("the proxy always answers");
                let status = resp.status().as_u16();
                let body = resp.text().await.expect("a complete body");
                let took = started.elapsed();
                done.lock().unwrap().push(Done {
                    post,
                    status,
                    body,
                    took,
                });
            }
        }));
    }

    // Chaos on all but the anchor.
    let mut rng = Rng(seed);
    let mut trouble: Vec<Trouble> = (0..ups.len()).map(|_| Trouble::None).collect();
    let mut actions: HashMap<&str, usize> = HashMap::new();
    let chaos_end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < chaos_end {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(250))).await;
        let i = 1 + rng.below(ups.len() as u64 - 1) as usize;
        // Undo what was done to it first.
        match std::mem::replace(&mut trouble[i], Trouble::None) {
            Trouble::Blackholed(hole) => {
                drop(hole);
                ups[i].restart().await;
            }
            Trouble::Down => trouble[i] = Trouble::Down,
            Trouble::None => {}
        }
        let action = match rng.below(if i == h2c { 10 } else { 8 }) {
            0 => {
                ups[i].stop();
                trouble[i] = Trouble::Down;
                "kill"
            }
            1 => {
                ups[i].stop();
                trouble[i] = Trouble::Blackholed(Blackhole::on(ups[i].addr).await);
                "blackhole"
            }
            2 => {
                ups[i].set_mode(Mode::Slow(Duration::from_secs(1)));
                "slow"
            }
            3 => {
                ups[i].set_mode(Mode::Hang);
                "hang"
            }
            4 => {
                ups[i].set_mode(Mode::Status(503));
                "503"
            }
            5 => {
                // A restart loop: refused connects, resets mid-handshake, resets after accept.
                for _ in 0..5 + rng.below(20) {
                    ups[i].restart().await;
                    tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
                }
                "flap"
            }
            8 => {
                ups[i].set_mode(Mode::Refuse);
                "refuse streams"
            }
            9 => {
                ups[i].set_mode(Mode::GoAway);
                "goaway"
            }
            _ => {
                ups[i].set_mode(Mode::Ok);
                "heal"
            }
        };
        if matches!(trouble[i], Trouble::Down) && action != "kill" {
            ups[i].restart().await;
            trouble[i] = Trouble::None;
        }
        *actions.entry(action).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    // Heal everything.
    for (i, t) in trouble.iter_mut().enumerate() {
        let was = std::mem::replace(t, Trouble::None);
        ups[i].set_mode(Mode::Ok);
        if !matches!(was, Trouble::None) {
            drop(was);
            ups[i].restart().await;
        }
    }

    let done = std::mem::take(&mut *done.lock().unwrap());
    let records = log.wait_for(50 + done.len()).await;

    // Totals.
    let gets = done.iter().filter(|d| !d.post).count();
    let retries: usize = records.iter().map(|r| r.len().saturating_sub(1)).sum();
    let ejections = events
        .all()
        .iter()
        .filter(|e| matches!(e.1, HealthChange::Ejected { .. }))
        .count();
    let mut causes: HashMap<String, usize> = HashMap::new();
    for r in &records {
        if let Some(Outcome::Failed { kind, verdict }) = r.last().map(|a| a.outcome()) {
            *causes.entry(format!("{kind}: {verdict:?}")).or_default() += 1;
        }
    }
    let failed: Vec<_> = done.iter().filter(|d| d.status != 200).collect();
    println!(
        "requests {} ({gets} GET, {} POST), retries {retries}, ejections {ejections}, \
         failed {}; chaos {actions:?}",
        done.len(),
        done.len() - gets,
        failed.len()
    );
    println!("last-attempt failures by cause: {causes:?}");
    let mut errors: HashMap<String, usize> = HashMap::new();
    for e in log.errors().into_iter().flatten() {
        *errors.entry(e).or_default() += 1;
    }
    println!("errors the clients got: {errors:#?}");

    // Every GET succeeded, with an uncorrupted body from one upstream.
    let names = ["anchor", "b", "h2c", "d"];
    for d in done.iter().filter(|d| !d.post) {
        assert_eq!(d.status, 200, "a GET failed (seed {seed}): {d:?}");
        assert!(names.contains(&d.body.as_str()), "corrupted body: {d:?}");
    }
    // Every failure is a clean 5xx, every success a whole body.
    for d in &done {
        match d.status {
            200 => assert!(names.contains(&d.body.as_str()), "corrupted body: {d:?}"),
            502..=504 => {}
            s => panic!("unclean status {s} (seed {seed}): {d:?}"),
        }
        assert!(
            d.took <= DEADLINE + SLACK,
            "past the deadline (seed {seed}): {d:?}"
        );
    }
    // No POST reached an upstream twice.
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    for u in &ups {
        for (id, n) in u.ids() {
            *arrivals.entry(id).or_default() += n;
        }
    }
    let twice: Vec<_> = arrivals.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "POSTs sent twice (seed {seed}): {twice:?}"
    );

    // Resources return to their baseline once the proxy and its upstreams are gone.
    let rss_peak = rss_bytes();
    drop((
        http, proxy, ups, log, events, records, done, arrivals, causes,
    ));
    tokio::time::timeout(Duration::from_secs(10), async {
        while open_fds() > fds_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fds: {} before, {} after", fds_before, open_fds()));
    // Connection tasks end asynchronously once their sockets close.
    let heap_after = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let live = live_heap();
            if live - heap_before < HEAP_SLACK {
                return live;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "live heap {} KiB before, {} KiB after",
            heap_before / 1024,
            live_heap() / 1024
        )
    });
    println!(
        "fds {fds_before} -> {}; live heap {} KiB before -> {} KiB after; \
         rss {} KiB warm, {} KiB at the end of the load",
        open_fds(),
        heap_before / 1024,
        heap_after / 1024,
        rss_warm / 1024,
        rss_peak / 1024
    );
}

/// Heap that may stay allocated for good after the first use of pingora, tokio and hyper
/// (their lazily built statics), however many requests went through.
const HEAP_SLACK: isize = 1024 * 1024;
