//! Failover on connect failures: refused, blackholed, everything down; round-robin spreading.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pingora_failover::{
    Failover, FailoverProxy, FailureKind, OrderedList, Outcome, Peer, RoundRobin, StandardPolicy,
    StopReason, Verdict,
};
use support::{
    client, failed, refused_addr, start_failover, start_proxy, Blackhole, Mode, Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_primary_every_request_goes_to_the_backup() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary = Peer::new(&refused_addr()).unwrap();
    let list = OrderedList::new(vec![
        primary.clone(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    let (proxy, log) = start_failover(list.unwrap(), StandardPolicy::default()).await;

    let http = client();
    for _ in 0..10 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "backup");
    }
    assert_eq!(backup.hits(), 10);
    let all = log.wait_for(10).await;
    // The first request tried the primary, which was refused and ejected...
    assert_eq!(all[0].len(), 2, "the primary was tried first");
    assert_eq!(all[0][0].peer(), &primary);
    assert_eq!(
        all[0][0].outcome(),
        failed(FailureKind::ConnectRefused, Verdict::Retried)
    );
    assert_eq!(all[0][1].outcome(), Outcome::Responded { status: 200 });
    // ...so the next ones went straight to the backup.
    for attempts in &all[1..] {
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome(), Outcome::Responded { status: 200 });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ejection_every_request_tries_the_refusing_primary_first() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary = Peer::new(&refused_addr()).unwrap();
    let list = OrderedList::new(vec![
        primary.clone(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    let engine =
        Failover::builder(list.unwrap(), StandardPolicy::default()).without_outlier_detection();
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    let http = client();
    for _ in 0..5 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "backup");
    }
    for attempts in log.wait_for(5).await {
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].peer(), &primary);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_primary_fails_over_after_the_connect_timeout() {
    let hole = Blackhole::start().await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let connect_timeout = Duration::from_millis(300);
    let primary = Peer::builder(hole.peer_addr())
        .with_connect_timeout(connect_timeout)
        .build()
        .unwrap();
    let list = OrderedList::new(vec![
        primary.clone(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    let (proxy, log) = start_failover(list.unwrap(), StandardPolicy::default()).await;

    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "backup");

    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].peer(), &primary);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::ConnectTimeout, Verdict::Retried)
    );
    // The primary's attempt lasted the connect timeout: it hung, it was not refused.
    assert!(attempts[0].duration().unwrap() >= connect_timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_peers_down_gives_502_with_every_attempt_recorded() {
    let hole = Blackhole::start().await;
    let timeout = Duration::from_millis(200);
    let peers = vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::builder(hole.peer_addr())
            .with_connect_timeout(timeout)
            .build()
            .unwrap(),
        Peer::new(&refused_addr()).unwrap(),
    ];
    let list = OrderedList::new(peers.clone()).unwrap();
    let (proxy, log) = start_failover(list, StandardPolicy::default()).await;

    let started = Instant::now();
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 502);
    // Bounded: one connect timeout plus backoff (at most 25 + 50 ms), never an open-ended wait.
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let attempts = log.wait_for(1).await.remove(0);
    let tried: Vec<_> = attempts.iter().map(|a| a.peer().clone()).collect();
    assert_eq!(tried, peers, "every peer tried once, in order");
    // The error behind the 502 names every peer tried and why each failed.
    let error = log.errors().remove(0).expect("the 502 has an error");
    assert!(
        error.contains("failover stopped (attempt cap reached) after 3 attempt(s)"),
        "{error}"
    );
    for (peer, why) in peers.iter().zip([
        "connection refused",
        "connect timeout",
        "connection refused",
    ]) {
        assert!(error.contains(&format!("{peer}: {why}")), "{error}");
    }
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::ConnectRefused, Verdict::Retried)
    );
    assert_eq!(
        attempts[1].outcome(),
        failed(FailureKind::ConnectTimeout, Verdict::Retried)
    );
    assert_eq!(
        attempts[2].outcome(),
        failed(
            FailureKind::ConnectRefused,
            Verdict::Stopped(StopReason::MaxAttempts)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fewer_peers_than_attempts_retries_take_turns_after_every_peer_was_tried() {
    let peers = vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::new(&refused_addr()).unwrap(),
    ];
    let list = OrderedList::new(peers.clone()).unwrap();
    let policy = StandardPolicy::builder()
        .with_max_attempts(5)
        .build()
        .unwrap();
    let (proxy, log) = start_failover(list, policy).await;

    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let attempts = log.wait_for(1).await.remove(0);
    let tried: Vec<_> = attempts.iter().map(|a| a.peer().clone()).collect();
    let (a, b) = (peers[0].clone(), peers[1].clone());
    assert_eq!(
        tried,
        [a.clone(), b.clone(), a.clone(), b, a],
        "each peer once, then turns"
    );
    assert_eq!(
        attempts[4].outcome(),
        failed(
            FailureKind::ConnectRefused,
            Verdict::Stopped(StopReason::MaxAttempts)
        )
    );
    // Only a return to a peer already tried waits for the backoff; the first retry goes at once.
    let gap = |i: usize| {
        let prev = &attempts[i - 1];
        attempts[i].started() - (prev.started() + prev.duration().unwrap())
    };
    assert!(gap(1) < Duration::from_millis(20), "{:?}", gap(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_over_healthy_peers() {
    let ups = [
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start("c", Mode::Ok).await,
    ];
    let peers = ups.iter().map(|u| Peer::new(&u.peer_addr()).unwrap());
    let rr = RoundRobin::new(peers.collect()).unwrap();
    let (proxy, _log) = start_failover(rr, StandardPolicy::default()).await;

    let http = client();
    let mut answered: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let body = http.get(proxy.url("/")).send().await.unwrap().text().await;
        *answered.entry(body.unwrap()).or_default() += 1;
    }
    assert_eq!(
        answered,
        HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_retry_never_picks_the_peer_that_failed() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let dead = Peer::new(&refused_addr()).unwrap();
    let peers = vec![
        dead.clone(),
        Peer::new(&a.peer_addr()).unwrap(),
        Peer::new(&b.peer_addr()).unwrap(),
    ];
    let rr = RoundRobin::new(peers).unwrap();
    // Ejection would take the dead peer out after its first failure; this test is about the
    // retry's choice of peer, so it keeps every peer in the rotation.
    let engine = Failover::builder(rr, StandardPolicy::default()).without_outlier_detection();
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    let http = client();
    for _ in 0..30 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let all = log.wait_for(30).await;
    let retried: Vec<_> = all.iter().filter(|a| a.len() > 1).collect();
    assert_eq!(
        retried.len(),
        10,
        "a third of the turns land on the dead peer"
    );
    for attempts in &all {
        assert_eq!(attempts.len(), 1 + usize::from(attempts[0].peer() == &dead));
        assert_ne!(attempts.last().unwrap().peer(), &dead);
    }
    // First attempts: 10 each; the 10 retries alternate between the two live peers.
    assert_eq!((a.hits(), b.hits()), (15, 15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_cut_short_by_pingoras_cap_is_recorded_and_refunded() {
    use std::sync::Arc;

    use pingora_core::server::configuration::ServerConf;
    use pingora_failover::RetryBudget;
    use support::{ProxyServer, RequestLog};

    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = OrderedList::new(vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    // Two retries in the budget (1/s over 2 s) and three requests that each decide one: if a
    // retry pingora never made stayed spent, the third would be refused by the budget.
    let engine = Failover::builder(list.unwrap(), StandardPolicy::default())
        .with_budget(RetryBudget::new(0.0, 1, Duration::from_secs(2)).unwrap())
        .without_outlier_detection();
    let log = RequestLog::default();
    let proxy = FailoverProxy::from_builder(engine)
        .unwrap()
        .on_request_done(log.recorder());
    // `into_app` would refuse this configuration; pingora's own constructor does not.
    let conf = Arc::new(ServerConf {
        max_retries: 1,
        ..ServerConf::default()
    });
    let server = ProxyServer::start(pingora_proxy::http_proxy(&conf, proxy)).await;

    let http = client();
    for _ in 0..3 {
        assert_eq!(
            http.get(server.url("/")).send().await.unwrap().status(),
            502
        );
    }
    assert_eq!(backup.hits(), 0);
    for attempts in log.wait_for(3).await {
        assert_eq!(
            attempts[0].outcome(),
            failed(
                FailureKind::ConnectRefused,
                Verdict::Stopped(StopReason::PingoraRetryCap)
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_sees_the_pingora_error_behind_a_failure() {
    use std::sync::{Arc, Mutex};

    use pingora_failover::{Failure, RetryDecision, RetryPolicy};

    #[derive(Debug, Default)]
    struct Watching(Mutex<Vec<Option<String>>>);

    impl RetryPolicy for Watching {
        fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
            let etype = failure.error().map(|e| e.etype().as_str().to_owned());
            self.0.lock().unwrap().push(etype);
            RetryDecision::Retry
        }
    }

    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = OrderedList::new(vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    let policy = Arc::new(Watching::default());
    let (proxy, _log) = start_failover(list.unwrap(), policy.clone()).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    assert_eq!(
        *policy.0.lock().unwrap(),
        [Some("ConnectRefused".to_owned())]
    );
}
