//! Timeouts learned per peer: a connect far slower than the peer has shown is abandoned and the
//! request goes on at once; the last attempt keeps the configured timeout; a peer that serves
//! legitimately slow requests among fast ones is never held out, and none of them fails.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use pingora_failover::{
    AdaptiveTimeouts, Failover, FailoverProxy, FailureKind, HealthChange, OrderedList, Outcome,
    Peer, StandardPolicy,
};
use support::{client, start_proxy, Blackhole, Events, Mode, Upstream};

const CONFIGURED: Duration = Duration::from_secs(5);

fn peer(addr: &str, read: Duration) -> Peer {
    Peer::builder(addr)
        .with_connect_timeout(CONFIGURED)
        .with_read_timeout(read)
        .build()
        .unwrap()
}

/// A primary and a backup with the configured timeouts, the peers in that order, and a proxy
/// over them with `adaptive`.
async fn primary_and_backup(
    adaptive: AdaptiveTimeouts,
) -> (
    Upstream,
    Upstream,
    Vec<Peer>,
    support::ProxyServer,
    support::RequestLog,
) {
    let primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = vec![
        peer(&primary.peer_addr(), CONFIGURED),
        peer(&backup.peer_addr(), CONFIGURED),
    ];
    let list = OrderedList::new(peers.clone()).unwrap();
    let engine =
        Failover::builder(list, StandardPolicy::default()).with_adaptive_timeouts(adaptive);
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    (primary, backup, peers, proxy, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_far_past_the_learned_time_is_abandoned_before_the_configured_timeout() {
    let (primary, _backup, peers, proxy, log) = primary_and_backup(AdaptiveTimeouts::new()).await;
    let http = client();
    assert_eq!(
        http.get(proxy.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "primary"
    );
    let learned = peers[0]
        .health()
        .connect_time()
        .expect("learned from the new connection");
    assert!(learned < CONFIGURED);

    // The primary's host vanishes: its pooled connection is closed, new connects hang.
    primary.stop_and_wait().await;
    let _hole = Blackhole::on(primary.addr).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");
    let records = log.wait_for(2).await;
    let hung = records[1]
        .iter()
        .find(|a| {
            a.peer() == &peers[0]
                && matches!(
                    a.outcome(),
                    Outcome::Failed {
                        kind: FailureKind::ConnectTimeout,
                        ..
                    }
                )
        })
        .unwrap_or_else(|| panic!("no connect to the primary timed out: {:?}", records[1]));
    assert!(
        hung.duration().unwrap() < CONFIGURED,
        "abandoned after {:?}, the configured timeout",
        hung.duration()
    );
}

/// A peer with a learned connect time, and a 400 ms connect timeout, whose host then vanishes
/// (connects hang), alone or before a healthy backup, under `policy`: the status of the
/// request sent then, and how long its attempt to the peer took.
async fn connect_to_a_vanished_host(backup: bool, policy: StandardPolicy) -> (u16, Duration) {
    let up = Upstream::start("only", Mode::Ok).await;
    let spare = Upstream::start("backup", Mode::Ok).await;
    let only = Peer::builder(up.peer_addr())
        .with_connect_timeout(CUT_FREE)
        .build()
        .unwrap();
    let mut peers = vec![only.clone()];
    if backup {
        peers.push(Peer::new(&spare.peer_addr()).unwrap());
    }
    let list = OrderedList::new(peers).unwrap();
    let engine = Failover::builder(list, policy).with_adaptive_timeouts(AdaptiveTimeouts::new());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    assert_eq!(
        client().get(proxy.url("/")).send().await.unwrap().status(),
        200
    );
    assert!(only.health().connect_time().is_some());
    up.stop_and_wait().await;
    let _hole = Blackhole::on(up.addr).await;
    let status = client().get(proxy.url("/")).send().await.unwrap().status();
    let records = log.wait_for(2).await;
    (status.as_u16(), records[1][0].duration().unwrap())
}

/// The connect timeout of [`connect_to_a_vanished_host`].
const CUT_FREE: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_attempt_keeps_the_configured_connect_timeout() {
    let policy = StandardPolicy::builder()
        .with_max_attempts(1)
        .build()
        .unwrap();
    let (status, took) = connect_to_a_vanished_host(false, policy).await;
    assert_eq!(status, 504);
    assert!(took >= CUT_FREE, "cut after {took:?} on the only attempt");
}

/// A cut where no retry could follow would turn a slow connect into an error: a policy that does
/// not retry connect timeouts gets the configured timeout on every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_is_cut_when_the_policy_would_not_retry_it() {
    let policy = StandardPolicy::builder()
        .without_retry_on(FailureKind::ConnectTimeout)
        .build()
        .unwrap();
    let (status, took) = connect_to_a_vanished_host(true, policy).await;
    assert_eq!(status, 504, "not retried, as the policy says");
    assert!(
        took >= CUT_FREE,
        "cut after {took:?} with no retry to follow"
    );
}

/// 5 % of requests take 2 s (a report, an export), the rest answer at once; the read timeout is
/// 5 s. The peer keeps completing requests, so it is never held out, and every slow request
/// gets its answer from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_some_legitimately_slow_requests_is_never_held_out() {
    let mixed = Upstream::start("mixed", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let read = Duration::from_secs(5);
    let list = OrderedList::new(vec![
        peer(&mixed.peer_addr(), read),
        peer(&backup.peer_addr(), read),
    ])
    .unwrap();
    let events = Events::default();
    let engine =
        Failover::builder(list, StandardPolicy::default()).on_health_change(events.observer());
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    let results = join_all((0..10).map(|c| {
        let (http, url) = (http.clone(), proxy.url("/"));
        async move {
            let mut out = Vec::new();
            for i in 0..40 {
                let slow = (c * 40 + i) % 20 == 7;
                let mut req = http.get(&url);
                if slow {
                    req = req.header("x-delay-ms", "2000");
                }
                let resp = req.send().await.unwrap();
                out.push((slow, resp.status().as_u16(), resp.text().await.unwrap()));
            }
            out
        }
    }))
    .await;
    let all: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(all.iter().filter(|r| r.0).count(), 20, "5 % slow");
    for (slow, status, by) in &all {
        assert_eq!((*status, by.as_str()), (200, "mixed"), "slow: {slow}");
    }
    assert_eq!(backup.hits(), 0);
    assert!(
        events
            .all()
            .iter()
            .all(|(_, c)| !matches!(c, HealthChange::Ejected { .. })),
        "{:?}",
        events.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_stall_cut_a_late_header_is_cut_and_retried_and_a_post_is_not() {
    let cut = AdaptiveTimeouts::new()
        .with_stall_cut(10.0, Duration::from_millis(50))
        .unwrap();
    let (primary, _backup, _peers, proxy, log) = primary_and_backup(cut).await;
    let http = client();
    for _ in 0..20 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    primary.set_mode(Mode::Slow(Duration::from_secs(3)));
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup", "cut and retried");
    let records = log.wait_for(21).await;
    let first = &records[20][0];
    assert!(
        matches!(
            first.outcome(),
            Outcome::Failed {
                kind: FailureKind::HeaderTimeout,
                ..
            }
        ),
        "{:?}",
        first.outcome()
    );
    assert!(
        first.duration().unwrap() < Duration::from_secs(3),
        "{:?}",
        first.duration()
    );
    // A POST is never cut: it waits for the primary's answer.
    let resp = http.post(proxy.url("/")).body("x").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
}
