//! Weights and panic mode end to end: sequential requests through the proxy to real upstreams,
//! counted per upstream.

mod support;

use pingora_failover::{
    Failover, FailoverProxy, LeastRequest, OrderedList, PeakEwma, Peer, PeerSelector, RoundRobin,
    StandardPolicy,
};
use support::{client, refused_addrs, start_proxy, Mode, ProxyServer, RequestLog, Upstream};

/// A peer at `addr` of weight `weight`.
fn weighted(addr: &str, weight: u32) -> Peer {
    Peer::builder(addr).with_weight(weight).build().unwrap()
}

/// A proxy over `selector` with the standard policy, and no retry budget: panic mode sends
/// many requests to dead peers first, and each must reach the live one.
async fn proxy<S: PeerSelector>(selector: S) -> (ProxyServer, RequestLog) {
    let engine = Failover::builder(selector, StandardPolicy::default()).without_budget();
    start_proxy(FailoverProxy::from_builder(engine).unwrap()).await
}

/// Sends `n` GETs one after another through a proxy over `selector`; every one succeeds.
async fn sequential<S: PeerSelector>(selector: S, n: usize) -> RequestLog {
    let (proxy, log) = proxy(selector).await;
    let http = client();
    for i in 0..n {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        if resp.status() != 200 {
            let records = log.wait_for(i + 1).await;
            panic!("request {i}: {} after {:?}", resp.status(), records[i]);
        }
    }
    log.wait_for(n).await;
    log
}

/// How many of the requests from the `from`-th on had their first attempt at each of `addrs`.
async fn first_attempts(log: &RequestLog, from: usize, to: usize, addrs: &[String]) -> Vec<usize> {
    let records = log.wait_for(to).await;
    let mut counts = vec![0; addrs.len()];
    for r in &records[from..to] {
        let name = r[0].peer().name();
        counts[addrs.iter().position(|a| a == name).unwrap()] += 1;
    }
    counts
}

/// Two equal upstreams of weights 2 and 1 answering as `mode`, and the share of `n` sequential
/// requests the heavy one answered. With `idle`, each request waits until the one before has left the peers' counts
/// of requests in flight (the proxy settles them just after its log, which a fast client may
/// overtake).
async fn heavy_share<S: PeerSelector>(
    make: impl FnOnce(Vec<Peer>) -> S,
    mode: Mode,
    n: usize,
    idle: bool,
) -> f64 {
    let heavy = Upstream::start("heavy", mode).await;
    let light = Upstream::start("light", mode).await;
    let peers = vec![
        weighted(&heavy.peer_addr(), 2),
        weighted(&light.peer_addr(), 1),
    ];
    let (proxy, log) = proxy(make(peers.clone())).await;
    let http = client();
    for _ in 0..n {
        if idle {
            support::eventually("no request in flight", || {
                peers.iter().all(|p| p.health().in_flight() == 0)
            })
            .await;
        }
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    log.wait_for(n).await;
    assert_eq!(heavy.hits() + light.hits(), n);
    println!(
        "weights 2:1, {n} requests: {}/{}",
        heavy.hits(),
        light.hits()
    );
    heavy.hits() as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_shares_sequential_requests_by_weight() {
    // Due: 400 of 600, with a standard deviation of 12.
    let share = heavy_share(
        |p| LeastRequest::new(p).unwrap().with_seed(21),
        Mode::Ok,
        600,
        true,
    )
    .await;
    assert!(
        (0.6..0.73).contains(&share),
        "the heavy peer took {share:.2}"
    );
}

/// Peers that answer in 20 ms: alike within the estimates' noise. (Answers of a fraction of a
/// millisecond on a busy machine vary by several times, and a peak estimate keeps the worst of
/// the last seconds: then the faster estimate takes more than its weight, run by run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_shares_sequential_requests_to_equal_peers_by_weight() {
    let slow = Mode::Slow(std::time::Duration::from_millis(20));
    // Due: 100 of 150, with a standard deviation of 6.
    let share = heavy_share(
        |p| PeakEwma::new(p).unwrap().with_seed(22),
        slow,
        150,
        false,
    )
    .await;
    assert!(
        (0.55..0.8).contains(&share),
        "the heavy peer took {share:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_without_its_heavy_peer_alternates_the_others() {
    let [dead] = refused_addrs::<1>();
    let b = Upstream::start("b", Mode::Ok).await;
    let c = Upstream::start("c", Mode::Ok).await;
    let peers = vec![
        weighted(&dead, 8),
        weighted(&b.peer_addr(), 1),
        weighted(&c.peer_addr(), 1),
    ];
    // The dead peer fails its first request over to another and is ejected.
    sequential(RoundRobin::new(peers).unwrap(), 200).await;
    println!("weights 8:1:1, the 8 dead: {}/{}", b.hits(), c.hits());
    assert!(
        b.hits().abs_diff(c.hits()) <= 2,
        "{} / {}",
        b.hits(),
        c.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_panic_threshold_an_ordered_list_spreads_first_attempts() {
    let dead = refused_addrs::<2>();
    let c = Upstream::start("c", Mode::Ok).await;
    let addrs = vec![dead[0].clone(), dead[1].clone(), c.peer_addr()];
    let peers = addrs.iter().map(|a| Peer::new(a).unwrap()).collect();
    let list = OrderedList::new(peers)
        .unwrap()
        .with_panic_threshold(0.5)
        .unwrap();
    // The first request ejects both dead peers on its way to c; then two of three are out.
    let log = sequential(list, 301).await;
    let counts = first_attempts(&log, 1, 301, &addrs).await;
    println!("panic mode, first attempts: {counts:?}");
    assert!(counts.iter().all(|n| (70..130).contains(n)), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_peer_ejected_first_attempts_spread() {
    let addrs = refused_addrs::<4>().to_vec();
    let peers = addrs.iter().map(|a| Peer::new(a).unwrap()).collect();
    let (proxy, log) = proxy(RoundRobin::new(peers).unwrap()).await;
    let http = client();
    // Each request tries every peer and fails; the first ejects them all.
    for _ in 0..101 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 502);
    }
    let counts = first_attempts(&log, 1, 101, &addrs).await;
    println!("every peer ejected, first attempts: {counts:?}");
    assert!(counts.iter().all(|n| *n >= 10), "{counts:?}");
}
