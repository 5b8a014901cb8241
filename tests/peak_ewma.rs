//! Peak EWMA end to end: a peer that turns 20x slower loses its traffic at once, where
//! round-robin keeps sending it half.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pingora_failover::{
    AdaptiveTimeouts, Failover, FailoverProxy, PeakEwma, Peer, PeerSelector, RoundRobin,
    StandardPolicy,
};
use support::{client, start_proxy, Mode, Upstream};

const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(100);

/// Closed-loop load through `proxy` from `clients` clients for `time` (at most 5,000 requests
/// each).
async fn load(proxy: &support::ProxyServer, clients: usize, time: Duration) {
    let http = client();
    let end = Instant::now() + time;
    join_all((0..clients).map(|_| async {
        for _ in 0..5_000 {
            if Instant::now() >= end {
                break;
            }
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "no request fails");
        }
    }))
    .await;
}

/// The share of requests the slowed peer received in the 2 s after it slowed down, under
/// `clients` closed-loop clients.
async fn share_after_slowdown<S: PeerSelector>(
    clients: usize,
    make: impl FnOnce(Vec<Peer>) -> S,
) -> f64 {
    let steady = Upstream::start("steady", Mode::Slow(FAST)).await;
    let slowed = Upstream::start("slowed", Mode::Slow(FAST)).await;
    let peers = vec![
        Peer::new(&steady.peer_addr()).unwrap(),
        Peer::new(&slowed.peer_addr()).unwrap(),
    ];
    // Balancing alone: the stall cut would also take the slowed peer's late answers elsewhere.
    let adaptive = AdaptiveTimeouts::new().without_stall_cut();
    let engine =
        Failover::builder(make(peers), StandardPolicy::default()).with_adaptive_timeouts(adaptive);
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    load(&proxy, clients, Duration::from_millis(500)).await;
    assert!(slowed.hits() > 0, "both peers served before the slowdown");
    let (a, b) = (steady.hits(), slowed.hits());
    slowed.set_mode(Mode::Slow(SLOW));
    load(&proxy, clients, Duration::from_secs(2)).await;
    let (a, b) = (steady.hits() - a, slowed.hits() - b);
    b as f64 / (a + b) as f64
}

/// With one client, nothing is ever in flight when a peer is chosen, so load cannot tell the
/// peers apart (least-request sends half): only the learned latency can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_slowed_20x_loses_its_traffic_within_2_s_where_round_robin_keeps_half() {
    let ewma = share_after_slowdown(1, |p| PeakEwma::new(p).unwrap().with_seed(11)).await;
    let rr = share_after_slowdown(1, |p| RoundRobin::new(p).unwrap()).await;
    println!(
        "one client, the slowed peer's share over 2 s: peak EWMA {:.1} %, round-robin {:.1} %",
        ewma * 100.0,
        rr * 100.0
    );
    assert!(ewma < 0.10, "peak EWMA sent {:.1} %", ewma * 100.0);
    assert!(rr > 0.45, "round-robin sent {:.1} %", rr * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_load_too() {
    let ewma = share_after_slowdown(8, |p| PeakEwma::new(p).unwrap().with_seed(12)).await;
    println!(
        "8 clients, the slowed peer's share over 2 s: peak EWMA {:.1} %",
        ewma * 100.0
    );
    assert!(ewma < 0.10, "peak EWMA sent {:.1} %", ewma * 100.0);
}

/// The hits of `fast` and `good` after 60 GETs, one at a time, through a peak EWMA balancer
/// over the two (no ejection, no retry: balancing alone).
async fn hits_of(fast: &Upstream, good: &Upstream) -> (usize, usize) {
    let peers = vec![
        Peer::new(&fast.peer_addr()).unwrap(),
        Peer::new(&good.peer_addr()).unwrap(),
    ];
    let engine = Failover::builder(PeakEwma::new(peers).unwrap(), StandardPolicy::default())
        .without_outlier_detection();
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..60 {
        http.get(proxy.url("/")).send().await.unwrap();
    }
    (fast.hits(), good.hits())
}

/// A peer that answers 503 at once does not win the traffic for answering fast: the peer that
/// answers 200 in 10 ms takes it. And a 503 with `Retry-After` keeps a fast peer's cost up for
/// the time it asked from its first answer, where its failure rate alone takes a few failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failure_is_not_a_fast_answer_and_a_retry_after_holds() {
    let good_time = Mode::Slow(Duration::from_millis(10));
    let failing = Upstream::start("failing", Mode::Status(503)).await;
    let good = Upstream::start("good", good_time).await;
    let (f, g) = hits_of(&failing, &good).await;
    assert!(g >= 50 && f <= 10, "failing {f}, good {g}");

    let busy = Upstream::start("busy", Mode::StatusRetryAfter(503, 30)).await;
    let good = Upstream::start("good", good_time).await;
    let (b, g) = hits_of(&busy, &good).await;
    assert!(g >= 58 && b <= 2, "busy {b}, good {g}");
}
