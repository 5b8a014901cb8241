//! HTTP/2 upstreams (h2c): streams refused unprocessed, GOAWAY, a request for HTTP/1.1, and gRPC
//! statuses in trailers-only responses.

mod support;

use pingora_failover::{FailureKind, OrderedList, StandardPolicy, Verdict};
use support::{
    client, failed, start_failover, stopped, Mode, Proto, ProxyServer, RequestLog, Upstream,
};

/// An h2c primary in `mode` and an h2c backup that answers, behind an ordered list.
async fn h2c_pair(
    mode: Mode,
    policy: StandardPolicy,
) -> (Upstream, Upstream, ProxyServer, RequestLog) {
    let primary = Upstream::start_with("primary", mode, Proto::H2c).await;
    let backup = Upstream::start_with("backup", Mode::Ok, Proto::H2c).await;
    let peers = vec![
        primary.peer_builder().build().unwrap(),
        backup.peer_builder().build().unwrap(),
    ];
    let (proxy, log) = start_failover(OrderedList::new(peers).unwrap(), policy).await;
    (primary, backup, proxy, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upstream_serves_through_the_proxy() {
    let (primary, backup, proxy, _log) = h2c_pair(Mode::Ok, StandardPolicy::default()).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "primary");
    let resp = proxy.post_order("/orders", "order-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(primary.ids().get("order-1"), Some(&1));
    assert_eq!(backup.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_to_an_upstream_refusing_every_stream_is_answered_by_the_backup() {
    let (primary, _backup, proxy, log) = h2c_pair(Mode::Refuse, StandardPolicy::default()).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    assert!(primary.refused() >= 1);
    assert_eq!(primary.hits(), 0, "a refused stream is never processed");
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::Unprocessed, Verdict::Retried)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_refused_unprocessed_reaches_the_backup_exactly_once() {
    let (primary, backup, proxy, log) = h2c_pair(Mode::Refuse, StandardPolicy::default()).await;
    let resp = proxy.post_order("/orders", "order-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert_eq!(backup.ids().get("order-1"), Some(&1), "exactly once");
    assert_eq!(primary.hits(), 0);
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::Unprocessed, Verdict::Retried)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_met_by_goaway_reaches_the_backup_exactly_once() {
    let (primary, backup, proxy, log) = h2c_pair(Mode::GoAway, StandardPolicy::default()).await;
    for n in 0..5 {
        let id = format!("order-{n}");
        let resp = proxy.post_order("/orders", &id).await;
        if resp.status() != 200 {
            log.wait_for(n + 1).await;
            panic!("{id}: {} after {:?}", resp.status(), log.errors());
        }
        assert_eq!(resp.text().await.unwrap(), "backup");
        assert_eq!(backup.ids().get(&id), Some(&1), "exactly once");
    }
    assert_eq!(
        primary.hits(),
        0,
        "GOAWAY with last stream 0: nothing processed"
    );
    for attempts in log.wait_for(5).await {
        // The stream above the GOAWAY's last id, or a connection already going away: either way
        // nothing reached the application.
        let first = attempts[0].outcome();
        assert!(
            first == failed(FailureKind::Unprocessed, Verdict::Retried)
                || first == failed(FailureKind::ConnectOther, Verdict::Retried),
            "{first:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_http1_fails_over_for_get_and_not_for_post() {
    let (primary, backup, proxy, log) =
        h2c_pair(Mode::Http11Required, StandardPolicy::default()).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    let resp = proxy.post_order("/orders", "order-1").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(backup.ids().get("order-1"), None, "a POST is not replayed");
    assert_eq!(primary.hits(), 0);
    // Each request is logged after its answer went out: the two may be logged in either order.
    let firsts = log.first_outcomes(2).await;
    assert!(firsts.contains(&failed(FailureKind::Protocol, Verdict::Retried)));
    assert!(firsts.contains(&stopped(
        FailureKind::Protocol,
        pingora_failover::StopReason::NotIdempotent
    )));
}

fn grpc_policy() -> StandardPolicy {
    StandardPolicy::builder()
        .with_retry_grpc_statuses([14])
        .with_replay_paths(["/shop.Catalog/"])
        .build()
        .unwrap()
}

async fn grpc_call(proxy: &ProxyServer, path: &str, id: &str) -> reqwest::Response {
    client()
        .post(proxy.url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", id)
        .body(&b"\0\0\0\0\0"[..])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_fails_over_on_a_route_marked_replayable() {
    let primary = Upstream::start_with("primary", Mode::Grpc(14), Proto::H2c).await;
    let backup = Upstream::start_with("backup", Mode::Grpc(0), Proto::H2c).await;
    let peers = vec![
        primary.peer_builder().build().unwrap(),
        backup.peer_builder().build().unwrap(),
    ];
    let (proxy, log) = start_failover(OrderedList::new(peers).unwrap(), grpc_policy()).await;

    let resp = grpc_call(&proxy, "/shop.Catalog/Get", "get-1").await;
    assert_eq!(resp.headers()["grpc-status"], "0", "the backup answered");
    assert_eq!(primary.ids().get("get-1"), Some(&1));
    assert_eq!(backup.ids().get("get-1"), Some(&1));

    // Elsewhere a gRPC call is a POST that may have taken effect: the UNAVAILABLE goes through.
    let resp = grpc_call(&proxy, "/shop.Orders/Place", "place-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(primary.ids().get("place-1"), Some(&1));
    assert_eq!(backup.ids().get("place-1"), None);

    let firsts: Vec<_> = log
        .wait_for(2)
        .await
        .iter()
        .map(|r| r[0].outcome())
        .collect();
    assert!(firsts.contains(&failed(FailureKind::GrpcStatus(14), Verdict::Retried)));
    assert!(firsts.contains(&stopped(
        FailureKind::GrpcStatus(14),
        pingora_failover::StopReason::NotIdempotent
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_are_not_failures_unless_configured() {
    let (primary, backup, proxy, _log) = h2c_pair(Mode::Grpc(14), StandardPolicy::default()).await;
    let resp = grpc_call(&proxy, "/shop.Catalog/Get", "get-1").await;
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(primary.hits(), 1);
    assert_eq!(backup.hits(), 0);
}
