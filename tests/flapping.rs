//! A primary whose listener closes and reopens over and over, as an upstream restarting in a loop
//! does: connects are refused, reset mid-handshake, or accepted and then reset. With a healthy
//! backup, no GET may fail and no POST may arrive twice, however the health rules are set.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pingora_failover::{Failover, FailoverProxy, OutlierDetection, StandardPolicy};
use support::{client, ordered, start_proxy, Mode, Rng, Upstream};

const REQUESTS: usize = 1200;
const CLIENTS: usize = 12;
const MAX_FLAPS: usize = 400;

async fn flapping_primary_loses_no_get(
    outliers: Option<OutlierDetection>,
    budget: bool,
    seed: u64,
) {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = ordered(
        &[primary.peer_addr(), backup.peer_addr()],
        Duration::from_secs(2),
    );
    let mut engine = Failover::builder(list, StandardPolicy::default());
    engine = match outliers {
        Some(rules) => engine.with_outlier_detection(rules),
        None => engine.without_outlier_detection(),
    };
    if !budget {
        engine = engine.without_budget();
    }
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, next) = (client(), proxy.url("/"), next.clone());
        load.push(tokio::spawn(async move {
            let mut results = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= REQUESTS {
                    return results;
                }
                let post = n % 2 == 1;
                let req = if post {
                    http.post(&url)
                        .header("x-request-id", n.to_string())
                        .body("order")
                } else {
                    http.get(&url)
                };
                let status = req.send().await.unwrap().status().as_u16();
                results.push((post, status));
            }
        }));
    }

    // Flap until the load is done (bounded in count as well).
    let mut rng = Rng(seed);
    let mut flaps = 0;
    while next.load(std::sync::atomic::Ordering::Relaxed) < REQUESTS && flaps < MAX_FLAPS {
        primary.restart().await;
        flaps += 1;
        tokio::time::sleep(Duration::from_micros(rng.below(3000))).await;
    }
    let mut results = Vec::new();
    for task in load {
        results.extend(task.await.unwrap());
    }

    let mut kinds: HashMap<String, usize> = HashMap::new();
    for attempts in log.wait_for(REQUESTS).await {
        for a in &attempts {
            if let pingora_failover::Outcome::Failed { kind, .. } = a.outcome() {
                *kinds.entry(kind.label().to_owned()).or_default() += 1;
            }
        }
    }
    let failed_gets = results
        .iter()
        .filter(|(post, s)| !post && *s != 200)
        .count();
    let failed_posts: Vec<u16> = results
        .iter()
        .filter(|(post, s)| *post && *s != 200)
        .map(|(_, s)| *s)
        .collect();
    println!(
        "{flaps} flaps, {} requests: {failed_gets} GETs failed, {} POSTs got 502; \
         failures by kind {kinds:?}; primary {} hits, backup {}",
        results.len(),
        failed_posts.len(),
        primary.hits(),
        backup.hits()
    );
    assert_eq!(results.len(), REQUESTS);
    assert_eq!(
        failed_gets,
        0,
        "a GET failed while the backup was healthy (seed {seed}); the failed requests' errors: \
         {:?}",
        log.errors().into_iter().flatten().collect::<Vec<_>>()
    );
    assert!(failed_posts.iter().all(|s| *s == 502), "{failed_posts:?}");
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    for u in [&primary, &backup] {
        for (id, n) in u.ids() {
            *arrivals.entry(id).or_default() += n;
        }
    }
    let twice: Vec<_> = arrivals.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs arrived twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_primary_loses_no_get_with_ejection_and_budget_off() {
    for seed in 1..=3 {
        flapping_primary_loses_no_get(None, false, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_primary_loses_no_get_with_fast_ejection() {
    let fast = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(5))
        .with_max_ejection(Duration::from_millis(20));
    flapping_primary_loses_no_get(Some(fast), true, 4).await;
}
