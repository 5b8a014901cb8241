//! Failover beyond connect errors, and the safety rules that keep it from duplicating or
//! corrupting a request: slow and hung upstreams, non-idempotent requests, retriable statuses,
//! body stalls, the replay buffer, the budget, the deadline and closed reused connections.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_failover::{
    Failover, FailoverProxy, FailureKind, Outcome, RetryBudget, StandardPolicy, StopReason, Verdict,
};
use support::{
    client, failed, ordered, primary_and_backup, refused_addr, start_failover, start_proxy,
    stopped, Mode, Upstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READ_TIMEOUT: Duration = Duration::from_millis(300);

fn statuses(codes: &[u16]) -> StandardPolicy {
    let codes = codes.iter().copied();
    StandardPolicy::builder()
        .with_retry_statuses(codes)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_primary_get_is_answered_by_the_backup() {
    let (primary, _backup, proxy, log) = primary_and_backup(
        Mode::Slow(Duration::from_secs(1)),
        StandardPolicy::default(),
        READ_TIMEOUT,
    )
    .await;

    let started = Instant::now();
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "backup");
    // Had the proxy waited for the primary, this would take its full second.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(primary.hits(), 1);

    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::HeaderTimeout, Verdict::Retried)
    );
    assert_eq!(attempts[1].outcome(), Outcome::Responded { status: 200 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_get_is_answered_by_the_backup() {
    let (_primary, _backup, proxy, log) =
        primary_and_backup(Mode::Hang, StandardPolicy::default(), READ_TIMEOUT).await;

    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::HeaderTimeout, Verdict::Retried)
    );
    assert!(attempts[0].duration().unwrap() >= READ_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_to_a_slow_primary_is_not_retried() {
    let (primary, backup, proxy, log) = primary_and_backup(
        Mode::Slow(Duration::from_secs(1)),
        StandardPolicy::default(),
        READ_TIMEOUT,
    )
    .await;

    let resp = client()
        .post(proxy.url("/orders"))
        .header("x-request-id", "order-1")
        .body("one order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "an error, not a duplicate");
    assert_eq!(primary.ids().get("order-1"), Some(&1));
    assert_eq!(backup.hits(), 0, "never sent twice");
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        stopped(FailureKind::HeaderTimeout, StopReason::NotIdempotent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_to_a_refusing_primary_fails_over_and_arrives_once() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = ordered(&[refused_addr(), backup.peer_addr()], READ_TIMEOUT);
    let (proxy, _log) = start_failover(list, StandardPolicy::default()).await;

    let resp = client()
        .post(proxy.url("/orders"))
        .header("x-request-id", "order-2")
        .body("one order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert_eq!(backup.ids().get("order-2"), Some(&1));
    assert_eq!(backup.bodies(), ["one order"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_status_fails_over_for_get() {
    let (_primary, _backup, proxy, log) =
        primary_and_backup(Mode::Status(503), statuses(&[502, 503, 504]), READ_TIMEOUT).await;

    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "backup");
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::Status(503), Verdict::Retried)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_peer_answers_503_the_last_503_goes_through() {
    let ups = [
        Upstream::start("a", Mode::Status(503)).await,
        Upstream::start("b", Mode::Status(503)).await,
        Upstream::start("c", Mode::Status(503)).await,
    ];
    let list = ordered(&ups.each_ref().map(Upstream::peer_addr), READ_TIMEOUT);
    let (proxy, log) = start_failover(list, statuses(&[503])).await;

    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.text().await.unwrap(),
        "c 503",
        "the upstream's own body"
    );
    assert_eq!(ups.each_ref().map(Upstream::hits), [1, 1, 1]);
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[2].outcome(),
        stopped(FailureKind::Status(503), StopReason::MaxAttempts)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_retriable_status_is_passed_through() {
    let (_primary, backup, proxy, log) =
        primary_and_backup(Mode::Status(503), statuses(&[503]), READ_TIMEOUT).await;

    let resp = client().post(proxy.url("/")).body("x").send().await;
    assert_eq!(resp.unwrap().status(), 503);
    assert_eq!(backup.hits(), 0);
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        stopped(FailureKind::Status(503), StopReason::NotIdempotent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stall_after_the_header_is_not_retried() {
    let (_primary, backup, proxy, log) =
        primary_and_backup(Mode::StallBody, StandardPolicy::default(), READ_TIMEOUT).await;

    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the header went through before the stall"
    );
    assert_eq!(resp.headers()["x-upstream"], "primary");
    // The body ends in an error: the client sees a truncated response, never the backup's
    // bytes appended to the primary's.
    assert!(resp.bytes().await.is_err());
    assert_eq!(backup.hits(), 0);
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].outcome(),
        stopped(FailureKind::BodyTimeout, StopReason::ResponseStarted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_within_the_replay_buffer_is_replayed_intact() {
    let (primary, backup, proxy, _log) = primary_and_backup(
        Mode::Slow(Duration::from_secs(1)),
        StandardPolicy::default(),
        READ_TIMEOUT,
    )
    .await;

    let body: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let resp = client()
        .put(proxy.url("/blob"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert_eq!(primary.bodies(), std::slice::from_ref(&body));
    assert_eq!(backup.bodies(), [body], "replayed byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_buffer_is_not_retried() {
    let (primary, backup, proxy, log) = primary_and_backup(
        Mode::Slow(Duration::from_secs(1)),
        StandardPolicy::default(),
        READ_TIMEOUT,
    )
    .await;

    let body = vec![7u8; 200 * 1024];
    let resp = client()
        .put(proxy.url("/blob"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(primary.bodies(), [body]);
    assert_eq!(backup.hits(), 0, "a partial body is never sent");
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        stopped(FailureKind::HeaderTimeout, StopReason::BodyNotReplayable)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_fails_fast_with_a_clear_reason() {
    let primary = Upstream::start("primary", Mode::Status(503)).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = ordered(&[primary.peer_addr(), backup.peer_addr()], READ_TIMEOUT);
    // Half a retry per request and no floor: the first request may not retry, the second may.
    let budget = RetryBudget::new(0.5, 0, Duration::from_secs(60)).unwrap();
    // Without ejection, so that the second request meets the failing primary again.
    let policy = StandardPolicy::builder()
        .with_retry_statuses([503])
        .build()
        .unwrap();
    let engine = Failover::builder(list, policy)
        .with_budget(budget)
        .without_outlier_detection();
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    let http = client();
    assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 503);
    assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    let records = log.wait_for(2).await;
    assert_eq!(
        records[0][0].outcome(),
        stopped(FailureKind::Status(503), StopReason::Budget)
    );
    assert_eq!(records[1].len(), 2);
    assert_eq!(backup.hits(), 1);
}

/// The retry of a request no upstream acted on (here, a refused connect) repeats no work, and
/// is not charged to the budget: with no retry left in it, every request still reaches the
/// backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_whatever_the_budget() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = ordered(&[refused_addr(), backup.peer_addr()], READ_TIMEOUT);
    let budget = RetryBudget::new(0.0, 0, Duration::from_secs(60)).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default())
        .with_budget(budget)
        .without_outlier_detection();
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..5 {
        assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    }
    let records = log.wait_for(5).await;
    assert!(records.iter().all(|r| r.len() == 2), "{records:?}");
    assert_eq!(backup.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_the_total_time_when_every_peer_is_slow() {
    let slow = Mode::Slow(Duration::from_secs(2));
    let ups = [
        Upstream::start("a", slow).await,
        Upstream::start("b", slow).await,
        Upstream::start("c", slow).await,
    ];
    let list = ordered(&ups.each_ref().map(Upstream::peer_addr), READ_TIMEOUT);
    let deadline = Duration::from_millis(500);
    let engine = Failover::builder(list, StandardPolicy::default()).with_deadline(deadline);
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    let started = Instant::now();
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    // Without the deadline: 3 attempts of 300 ms. With it, the second attempt gets what is
    // left of the 500 ms, and no third one starts.
    assert!(took < Duration::from_millis(800), "took {took:?}");
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[1].outcome(),
        stopped(FailureKind::HeaderTimeout, StopReason::Deadline)
    );
}

/// Reads a request's head from `s`; `false` when the connection ended first.
async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers the first request on each connection and keeps it alive, then
/// closes the connection when the next request arrives on it: a pooled connection going stale.
async fn closes_reused_connections() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let reply =
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-upstream: stale\r\n\r\nfirst";
                s.write_all(reply.as_bytes()).await.unwrap();
                // Wait for the next request, then drop the connection unanswered.
                let _ = s.read(&mut [0u8; 4096]).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_reused_connection_is_retried_for_get_and_not_for_post() {
    let (stale, _task) = closes_reused_connections().await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = ordered(&[stale, backup.peer_addr()], READ_TIMEOUT);
    let (proxy, log) = start_failover(list, StandardPolicy::default()).await;
    let http = client();

    // Fresh connection: answered. The connection goes to pingora's pool.
    let first = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(first.text().await.unwrap(), "first");
    // Reused connection, closed under the request: retried on the backup.
    let second = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(second.text().await.unwrap(), "backup");
    let records = log.wait_for(2).await;
    assert_eq!(
        records[1][0].outcome(),
        failed(FailureKind::ReusedConnectionClosed, Verdict::Retried)
    );

    // Pool a connection again, then a POST on it: it may have been read, so it is not retried.
    let third = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(third.text().await.unwrap(), "first");
    let post = http.post(proxy.url("/")).body("x").send().await.unwrap();
    assert_eq!(post.status(), 502);
    let records = log.wait_for(4).await;
    assert_eq!(
        records[3][0].outcome(),
        stopped(
            FailureKind::ReusedConnectionClosed,
            StopReason::NotIdempotent
        )
    );
    assert_eq!(backup.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_when_the_retry_returns_to_the_same_peer() {
    let only = Upstream::start("only", Mode::StatusRetryAfter(503, 1)).await;
    let list = ordered(&[only.peer_addr()], READ_TIMEOUT);
    let (proxy, log) = start_failover(list, statuses(&[503])).await;

    let request = tokio::spawn(client().get(proxy.url("/")).send());
    // The upstream recovers once it has answered the first 503.
    while only.hits() == 0 {
        tokio::task::yield_now().await;
    }
    only.set_mode(Mode::Ok);
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(only.hits(), 2);
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::Status(503), Verdict::Retried)
    );
    let waited = attempts[1].started() - attempts[0].started();
    assert!(waited >= Duration::from_secs(1), "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_allowed_passes_the_answer_through() {
    let only = Upstream::start("only", Mode::StatusRetryAfter(503, 30)).await;
    let list = ordered(&[only.peer_addr()], READ_TIMEOUT);
    let (proxy, log) = start_failover(list, statuses(&[503])).await;

    let started = Instant::now();
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["retry-after"],
        "30",
        "the client can wait itself"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(only.hits(), 1);
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        stopped(FailureKind::Status(503), StopReason::RetryAfter)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_timeout_answers_504_and_a_final_refusal_502() {
    let slow = Upstream::start("slow", Mode::Slow(Duration::from_secs(5))).await;
    let list = ordered(&[slow.peer_addr()], READ_TIMEOUT);
    let (proxy, _log) = start_failover(list, StandardPolicy::default()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504, "a response header timeout");

    let list = ordered(&[refused_addr()], READ_TIMEOUT);
    let (proxy, _log) = start_failover(list, StandardPolicy::default()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502, "a refused connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_holds_only_for_a_return_to_the_peer_that_sent_it() {
    // The first peer asks for 30 s; the retry goes to the second at once, whose connect is
    // refused; the third attempt returns to the first after a backoff, not after 30 s, and its
    // own answer goes through.
    let busy = Upstream::start("busy", Mode::StatusRetryAfter(503, 30)).await;
    let list = ordered(&[busy.peer_addr(), refused_addr()], READ_TIMEOUT);
    let (proxy, log) = start_failover(list, statuses(&[503])).await;

    let started = Instant::now();
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(
        attempts[2].outcome(),
        stopped(FailureKind::Status(503), StopReason::MaxAttempts)
    );
}

/// A request two peers fail the same way (a 500 on both) is the likely cause, not the peers (a
/// query of death): it is not sent to a third peer, and the second peer is not blamed for it.
/// Peers failing it differently are each tried as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_two_peers_fail_alike_stops_and_blames_no_second_peer() {
    let a = Upstream::start("a", Mode::Status(500)).await;
    let b = Upstream::start("b", Mode::Status(500)).await;
    let c = Upstream::start("c", Mode::Ok).await;
    // (Two 503s are no query of death: `when_every_peer_answers_503_the_last_503_goes_through`.)
    let list = ordered(&[a.peer_addr(), b.peer_addr(), c.peer_addr()], READ_TIMEOUT);
    let peers = list.peers().to_vec();
    let engine = Failover::builder(list, statuses(&[500, 503])).with_outlier_detection(
        pingora_failover::OutlierDetection::new()
            .with_consecutive_failures(1)
            .without_recovery_probe(),
    );
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500, "the second 500 goes to the client");
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 0));
    let records = log.wait_for(1).await;
    assert_eq!(
        records[0][1].outcome(),
        stopped(FailureKind::Status(500), StopReason::QueryOfDeath),
        "{records:?}"
    );
    assert!(!peers[0].health().is_healthy(), "the first failure counts");
    assert!(
        peers[1].health().is_healthy(),
        "the second, alike, does not"
    );

    // Failing differently (503 on one, 500 on the other) is no query of death either: the third
    // peer serves it.
    let d = Upstream::start("d", Mode::Status(503)).await;
    let e = Upstream::start("e", Mode::Status(500)).await;
    let f = Upstream::start("f", Mode::Ok).await;
    let list = ordered(&[d.peer_addr(), e.peer_addr(), f.peer_addr()], READ_TIMEOUT);
    let (proxy, _log) = start_failover(list, statuses(&[500, 503])).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "f");
}

/// An upstream that reads each request and resets the connection unanswered; its count of
/// requests read.
async fn resets_after_reading() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                // A zero linger: the drop resets the connection.
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
            });
        }
    });
    (addr, seen)
}

/// A request that breaks the connection after it was sent, on two peers in a row, is the
/// likely cause (a query of death): no third peer, and the second not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_breaks_two_connections_after_sending_stops() {
    let (a, a_seen) = resets_after_reading().await;
    let (b, b_seen) = resets_after_reading().await;
    let c = Upstream::start("c", Mode::Ok).await;
    let list = ordered(&[a, b, c.peer_addr()], READ_TIMEOUT);
    let peers = list.peers().to_vec();
    let engine = Failover::builder(list, StandardPolicy::default()).with_outlier_detection(
        pingora_failover::OutlierDetection::new()
            .with_consecutive_failures(1)
            .without_recovery_probe(),
    );
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let seen = (a_seen.load(Ordering::SeqCst), b_seen.load(Ordering::SeqCst));
    assert_eq!((seen, c.hits()), ((1, 1), 0), "no third peer");
    let records = log.wait_for(1).await;
    assert_eq!(
        records[0][1].outcome(),
        stopped(FailureKind::Io, StopReason::QueryOfDeath),
        "{records:?}"
    );
    assert!(!peers[0].health().is_healthy(), "the first failure counts");
    assert!(
        peers[1].health().is_healthy(),
        "the second, alike, does not"
    );
}
