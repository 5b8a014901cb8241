//! Hedged requests end to end: a GET late on its first peer is sent to a second, and the first
//! answer wins; a fast GET, a POST, and a GET without a retry in the budget are sent once.

mod support;

use std::time::Duration;

use pingora_failover::{
    AdaptiveTimeouts, Failover, FailoverBuilder, FailoverProxy, Hedging, OrderedList, Outcome,
    RetryBudget, StandardPolicy,
};
use support::{client, ordered, start_proxy, Mode, ProxyServer, RequestLog, Upstream};

const DELAY: Duration = Duration::from_millis(50);

/// An engine over `primary` then `backup` (each with `read_timeout`) that hedges after 50 ms.
/// The stall cut is off: hedging alone is tested.
fn hedged_engine(
    primary: &Upstream,
    backup: &Upstream,
    read_timeout: Duration,
) -> FailoverBuilder<OrderedList, StandardPolicy> {
    let list = ordered(&[primary.peer_addr(), backup.peer_addr()], read_timeout);
    Failover::builder(list, StandardPolicy::default())
        .with_adaptive_timeouts(AdaptiveTimeouts::new().without_stall_cut())
        .with_hedging(Hedging::after(DELAY).unwrap())
}

/// A proxy over [`hedged_engine`] with 5 s read timeouts; `budget` when given.
async fn hedging(
    primary: &Upstream,
    backup: &Upstream,
    budget: Option<RetryBudget>,
) -> (ProxyServer, RequestLog) {
    let mut engine = hedged_engine(primary, backup, Duration::from_secs(5));
    if let Some(budget) = budget {
        engine = engine.with_budget(budget);
    }
    start_proxy(FailoverProxy::from_builder(engine).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_get_is_hedged_and_the_first_answer_wins() {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(800))).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let (proxy, log) = hedging(&primary, &backup, None).await;
    let resp = client().get(proxy.url("/report")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "backup",
        "the hedge answered first"
    );
    assert_eq!((primary.hits(), backup.hits()), (1, 1));
    // The record: the answer's attempt, and the other peer named.
    let records = log.wait_for(1).await;
    assert_eq!(records.len(), 1, "one record for the client's request");
    assert_eq!(records[0].len(), 1);
    assert_eq!(records[0][0].peer().name(), backup.peer_addr());
    assert_eq!(records[0][0].outcome(), Outcome::Responded { status: 200 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_answered_in_time_and_a_post_are_sent_once() {
    let primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let (proxy, _log) = hedging(&primary, &backup, None).await;
    let http = client();
    for _ in 0..5 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    assert_eq!((primary.hits(), backup.hits()), (5, 0));

    primary.set_mode(Mode::Slow(Duration::from_millis(300)));
    let resp = http
        .post(proxy.url("/orders"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
    // (The primary may also see a liveness check, `GET /`, while the POST waits.)
    let posts = primary
        .seen()
        .iter()
        .filter(|s| s.path == "/orders")
        .count();
    assert_eq!((posts, backup.hits()), (1, 0), "a POST is never hedged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_needs_a_retry_from_the_budget() {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(300))).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    // No ratio and no floor: no retry, so no hedge.
    let budget = RetryBudget::new(0.0, 0, Duration::from_secs(10)).unwrap();
    let (proxy, _log) = hedging(&primary, &backup, Some(budget)).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
    assert_eq!((primary.hits(), backup.hits()), (1, 0));
}

/// A fast 503 from the hedge does not beat the late 200 of the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_from_one_attempt_waits_for_the_other() {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(300))).await;
    let backup = Upstream::start("backup", Mode::Status(503)).await;
    let (proxy, _log) = hedging(&primary, &backup, None).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "primary");
    assert_eq!((primary.hits(), backup.hits()), (1, 1));
}

/// The hedge answers first, then its body stalls until the read timeout: the client's response
/// fails, rather than ending cleanly on the part that came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_fails_the_response() {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_secs(2))).await;
    let backup = Upstream::start("backup", Mode::StallBody).await;
    let engine = hedged_engine(&primary, &backup, Duration::from_millis(300));
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.is_err(),
        "a cut-short body is not a whole one"
    );
    assert_eq!(backup.hits(), 1);
}

/// A client speaking HTTP/2 (h2c) is answered, not hedged: pingora 0.9.1 builds a subrequest
/// from the HTTP/1 form of its request, which an HTTP/2 request does not survive (it was
/// answered 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_is_answered_without_a_hedge() {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(800))).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let engine = hedged_engine(&primary, &backup, Duration::from_secs(5));
    let log = RequestLog::default();
    let mut app = FailoverProxy::from_builder(engine)
        .unwrap()
        .on_request_done(log.recorder())
        .into_app(&support::server_conf())
        .unwrap();
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = true;
    app.server_options = Some(options);
    let proxy = ProxyServer::start(app).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let resp = h2.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    assert_eq!((primary.hits(), backup.hits()), (2, 0));
    assert_eq!(log.wait_for(2).await.len(), 2);
}

/// Hedges, and requests that waited in the queue, are counted.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_and_queued_requests_are_counted() {
    use pingora_failover::{Metrics, Peer};

    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(600))).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let engine =
        hedged_engine(&primary, &backup, Duration::from_secs(5)).with_metrics(metrics.clone());
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");

    // One place, a queue of one: of three at once, one waits and is placed, one is turned away.
    let only = Upstream::start("only", Mode::Slow(Duration::from_millis(300))).await;
    let list = OrderedList::new(vec![Peer::builder(only.peer_addr())
        .with_max_requests(1)
        .build()
        .unwrap()])
    .unwrap();
    let engine = Failover::builder(list, StandardPolicy::default())
        .with_queue(1, Duration::from_secs(5))
        .with_metrics(metrics);
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    assert_eq!(proxy.concurrent_statuses(3).await, [200, 200, 503]);

    let text = support::metrics_text(&registry);
    for line in [
        "failover_hedges_total 1",
        "failover_queued_total{outcome=\"placed\"} 1",
        "failover_queued_total{outcome=\"full\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
