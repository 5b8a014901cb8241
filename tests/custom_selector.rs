//! A selector written outside the crate, through the public API alone: route by a request
//! header, fall back to the other peers in order.

mod support;

use pingora_failover::{
    Attempt, ConfigError, PanicThreshold, Peer, PeerSelector, PeerSet, StandardPolicy,
};
use support::{client, refused_addr, start_failover, Mode, Upstream};

/// Sends a request to the peer named by its `x-route` header (an index), then to the others.
struct ByHeader {
    peers: Vec<Peer>,
}

impl PeerSelector for ByHeader {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let wanted = attempt
            .request()
            .and_then(|r| r.headers.get("x-route"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .and_then(|i| self.peers.get(i));
        let candidates = wanted.into_iter().chain(&self.peers);
        // Healthy and untried first; when every untried one is ejected, the best of them.
        candidates
            .clone()
            .find(|p| attempt.admits(p))
            .or_else(|| attempt.best_untried(candidates))
            .cloned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_header_and_falls_back_to_the_others() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let dead = refused_addr();
    let peers = vec![
        Peer::new(&a.peer_addr()).unwrap(),
        Peer::new(&b.peer_addr()).unwrap(),
        Peer::new(&dead).unwrap(),
    ];
    let (proxy, log) = start_failover(ByHeader { peers }, StandardPolicy::default()).await;
    let http = client();
    let get = |route: Option<&str>| {
        let mut req = http.get(proxy.url("/"));
        if let Some(r) = route {
            req = req.header("x-route", r);
        }
        async move { req.send().await.unwrap().text().await.unwrap() }
    };

    assert_eq!(get(None).await, "a");
    assert_eq!(get(Some("1")).await, "b");
    // Routed to the dead peer: falls back to the first of the others.
    assert_eq!(get(Some("2")).await, "a");
    // The dead peer is now ejected, and the selector sees it through `Attempt::admits`: the next
    // request routed to it goes straight to the fallback.
    assert_eq!(get(Some("2")).await, "a");
    assert_eq!((a.hits(), b.hits()), (3, 1));

    let records = log.wait_for(4).await;
    assert_eq!(records[2].len(), 2);
    assert_eq!(records[2][0].peer().name(), dead);
    assert_eq!(records[3].len(), 1, "the ejected peer was skipped");
}

/// Always returns its one peer, as it was built.
struct Only(Peer);

impl PeerSelector for Only {
    fn select(&self, _: &Attempt<'_>) -> Option<Peer> {
        Some(self.0.clone())
    }
}

/// `select/ordered.rs` as a user would copy it: a priority list with a panic threshold, through
/// the public API alone.
struct MyOrderedList {
    set: PeerSet,
    panic: PanicThreshold,
}

impl MyOrderedList {
    fn new(peers: Vec<Peer>, panic: f64) -> Result<Self, ConfigError> {
        Ok(Self {
            set: PeerSet::new(peers)?,
            panic: PanicThreshold::new(panic)?,
        })
    }
}

impl PeerSelector for MyOrderedList {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let snapshot = self.set.snapshot();
        let peers = snapshot.peers();
        if self.panic.reached(peers) {
            return attempt.any_untried(peers.iter()).cloned();
        }
        peers
            .iter()
            .find(|p| attempt.takes(p, false))
            .or_else(|| attempt.best_untried(peers.iter()))
            .cloned()
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.set)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_no_set_resolved_is_never_connected_to() {
    // A listener on the local host, at the port the name gives: an unresolved name must not
    // reach it (0.0.0.0 connects to the local host on Linux).
    let local = Upstream::start("local", Mode::Ok).await;
    let name = format!("never.invalid:{}", local.addr.port());
    let peer = Peer::new(&name).unwrap();
    let (proxy, log) = start_failover(Only(peer), StandardPolicy::default()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(
        local.hits(),
        0,
        "the local listener answered {status} {body:?}"
    );
    assert_eq!(status, 502);
    log.wait_for(1).await;
    let error = log.errors()[0].clone().unwrap_or_default();
    assert!(
        error.contains("never.invalid") && error.contains("not resolved"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_ordered_list_with_panic_mode_builds_outside_the_crate() {
    let dead = support::refused_addrs::<2>();
    let c = Upstream::start("c", Mode::Ok).await;
    let addrs = [dead[0].clone(), dead[1].clone(), c.peer_addr()];
    let peers = addrs.iter().map(|a| Peer::new(a).unwrap()).collect();
    let list = MyOrderedList::new(peers, 0.5).unwrap();
    // No retry budget: two first attempts in three go to a dead peer and must reach c.
    let engine =
        pingora_failover::Failover::builder(list, StandardPolicy::default()).without_budget();
    let proxy = pingora_failover::FailoverProxy::from_builder(engine).unwrap();
    let (proxy, log) = support::start_proxy(proxy).await;
    let http = client();
    for _ in 0..61 {
        assert_eq!(
            http.get(proxy.url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "c"
        );
    }
    // Past the threshold, first attempts spread over all three.
    let records = log.wait_for(61).await;
    for addr in &addrs {
        let first = records[1..]
            .iter()
            .filter(|r| r[0].peer().name() == addr)
            .count();
        assert!(first >= 8, "{addr} had {first} first attempts of 60");
    }
}
