//! Least-request end to end: a slow peer holds its requests longer, so it is chosen less.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use pingora_failover::{LeastRequest, Peer, PeerSelector, RoundRobin, StandardPolicy};
use support::{client, start_failover, Mode, Upstream};

const WORKERS: usize = 8;
const EACH: usize = 25;

/// The slow peer's share of a closed loop of `WORKERS` clients, `EACH` requests each.
async fn slow_share<S: PeerSelector>(make: impl FnOnce(Vec<Peer>) -> S) -> f64 {
    let fast = Upstream::start("fast", Mode::Ok).await;
    let slow = Upstream::start("slow", Mode::Slow(Duration::from_millis(100))).await;
    let peers = vec![
        Peer::new(&fast.peer_addr()).unwrap(),
        Peer::new(&slow.peer_addr()).unwrap(),
    ];
    let (proxy, _log) = start_failover(make(peers), StandardPolicy::default()).await;
    let http = client();
    join_all((0..WORKERS).map(|_| async {
        for _ in 0..EACH {
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
        }
    }))
    .await;
    // Every request, and perhaps a liveness check or two (the stall cut's, on the slow peer
    // while it has nothing learned yet).
    let hits = fast.hits() + slow.hits();
    assert!(
        (WORKERS * EACH..WORKERS * EACH + 4).contains(&hits),
        "{hits}"
    );
    slow.hits() as f64 / (WORKERS * EACH) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_gets_a_small_share_where_round_robin_gives_it_half() {
    let least = slow_share(|p| LeastRequest::new(p).unwrap().with_seed(3)).await;
    let rr = slow_share(|p| RoundRobin::new(p).unwrap()).await;
    assert!(
        least < 0.25,
        "least-request sent {:.0} % to the slow peer",
        least * 100.0
    );
    assert!(
        rr > 0.45,
        "round-robin sent {:.0} % to the slow peer",
        rr * 100.0
    );
    println!("slow peer's share: least-request {least:.3}, round-robin {rr:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_return_to_zero_whichever_way_requests_end() {
    let ok = Upstream::start("ok", Mode::Ok).await;
    let peers = vec![
        Peer::new(&support::refused_addr()).unwrap(),
        Peer::new(&ok.peer_addr()).unwrap(),
    ];
    let lr = LeastRequest::new(peers.clone()).unwrap();
    let (proxy, log) = start_failover(lr, StandardPolicy::default()).await;
    let http = client();
    for _ in 0..10 {
        assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    }
    log.wait_for(10).await;
    // The count is settled when the request's context is dropped, just after `logging`.
    support::eventually("every in-flight count back to zero", || {
        peers.iter().all(|p| p.health().in_flight() == 0)
    })
    .await;
}
