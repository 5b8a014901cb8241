//! Peer health end to end: ejection, the half-open probe and re-admission, panic mode, events,
//! metrics. The probe here is a request (`without_recovery_probe`); background probing, the
//! default, is in `recovery.rs`.

mod support;

use std::time::Duration;

use pingora_failover::{
    Failover, FailoverProxy, FailureKind, HealthChange, HealthState, OrderedList, OutlierDetection,
    Peer, StandardPolicy,
};
use support::{client, refused_addr, start_proxy, Events, Mode, ProxyServer, RequestLog, Upstream};

/// A proxy over `primary` then `backup`, ejecting for `base` at first, with requests as probes,
/// and reporting to `events`.
async fn start_ejecting(
    primary: &Peer,
    backup: &Upstream,
    base: Duration,
    events: &Events,
) -> (ProxyServer, RequestLog) {
    let list = OrderedList::new(vec![
        primary.clone(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    let engine = Failover::builder(list.unwrap(), StandardPolicy::default())
        .with_outlier_detection(
            OutlierDetection::new()
                .with_base_ejection(base)
                .without_recovery_probe(),
        )
        .on_health_change(events.observer());
    start_proxy(FailoverProxy::from_builder(engine).unwrap()).await
}

/// Waits until `peer`'s ejection is over.
async fn until_half_open(peer: &Peer) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while peer.health().state() != HealthState::HalfOpen {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the ejection never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_primary_is_probed_once_readmitted_and_gets_traffic_back() {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    primary.stop_and_wait().await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary_peer = Peer::new(&primary.peer_addr()).unwrap();
    let events = Events::default();
    let ejection = Duration::from_millis(300);
    let (proxy, log) = start_ejecting(&primary_peer, &backup, ejection, &events).await;
    let http = client();

    // Refused: ejected after one connect failure; the next request skips it.
    assert_eq!(proxy.get_text(&http, "/").await, "backup");
    assert_eq!(proxy.get_text(&http, "/").await, "backup");
    assert_eq!(log.wait_for(2).await[1].len(), 1, "straight to the backup");

    // It comes back, slow enough that its probe is still running while other requests arrive.
    primary.set_mode(Mode::Slow(Duration::from_secs(1)));
    primary.restart().await;
    until_half_open(&primary_peer).await;
    let probe = tokio::spawn({
        let (http, url) = (http.clone(), proxy.url("/"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    });
    events.wait_until(|e| e.1 == HealthChange::Probing).await;
    for _ in 0..3 {
        assert_eq!(
            proxy.get_text(&http, "/").await,
            "backup",
            "only one request probes"
        );
    }
    assert_eq!(probe.await.unwrap(), "primary");
    assert_eq!(primary.hits(), 1, "probed once");

    // Re-admitted: traffic returns.
    primary.set_mode(Mode::Ok);
    assert_eq!(proxy.get_text(&http, "/").await, "primary");
    assert_eq!(proxy.get_text(&http, "/").await, "primary");

    let addr = primary.peer_addr();
    assert_eq!(
        events.all(),
        [
            (
                addr.clone(),
                HealthChange::Ejected {
                    time: ejection,
                    after: FailureKind::ConnectRefused
                }
            ),
            (addr.clone(), HealthChange::Probing),
            (addr, HealthChange::Readmitted),
        ],
        "every transition, in order"
    );
    let records = log.wait_for(8).await;
    let probes: Vec<_> = records.iter().flatten().filter(|a| a.is_probe()).collect();
    assert_eq!(probes.len(), 1);
    assert_eq!(probes[0].peer(), &primary_peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_ejects_again_for_longer() {
    let primary = refused_addr();
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary_peer = Peer::new(&primary).unwrap();
    let events = Events::default();
    let base = Duration::from_millis(100);
    let (proxy, _log) = start_ejecting(&primary_peer, &backup, base, &events).await;
    let http = client();

    for _ in 0..3 {
        let body = http.get(proxy.url("/")).send().await.unwrap().text().await;
        assert_eq!(body.unwrap(), "backup");
        until_half_open(&primary_peer).await;
    }
    let ejections: Vec<_> = events
        .all()
        .into_iter()
        .filter_map(|(_, c)| match c {
            HealthChange::Ejected { time, .. } => Some(time),
            _ => None,
        })
        .collect();
    assert_eq!(ejections, [base, base * 2, base * 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_peer_down_requests_are_still_attempted() {
    let peers = vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::new(&refused_addr()).unwrap(),
    ];
    let list = OrderedList::new(peers.clone()).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();

    for _ in 0..3 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 502, "the upstream error, not 'no upstream'");
    }
    assert!(peers.iter().all(|p| !p.health().is_healthy()));
    let records = log.wait_for(3).await;
    for attempts in &records[1..] {
        // Both ejected: panic mode tries each anyway (in a random order, so that requests spread
        // over them), then the attempt cap's last try returns to the first.
        let tried: Vec<_> = attempts.iter().map(|a| a.peer().clone()).collect();
        assert_eq!(tried.len(), 3);
        assert_ne!(tried[0], tried[1]);
        assert!(tried.iter().all(|p| peers.contains(p)));
        assert_eq!(tried[2], tried[0]);
    }
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    use pingora_failover::Metrics;

    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary = refused_addr();
    let list = OrderedList::new(vec![
        Peer::new(&primary).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ]);
    let registry = prometheus::Registry::new();
    let engine = Failover::builder(list.unwrap(), StandardPolicy::default())
        .with_metrics(Metrics::register(&registry).unwrap());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..4 {
        http.get(proxy.url("/")).send().await.unwrap();
    }
    log.wait_for(4).await;

    let text = support::metrics_text(&registry);
    let b = backup.addr;
    for line in [
        format!("failover_attempts_total{{outcome=\"connect_refused\",peer=\"{primary}\"}} 1"),
        format!("failover_attempts_total{{outcome=\"ok\",peer=\"{b}\"}} 4"),
        "failover_retries_total 1".to_owned(),
        "failover_budget_refusals_total 0".to_owned(),
        format!("failover_ejections_total{{peer=\"{primary}\"}} 1"),
        "failover_ejected_peers 1".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answering_5xx_to_everything_is_ejected_and_a_5xx_probe_fails() {
    let primary = Upstream::start("primary", Mode::Status(500)).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary_peer = Peer::new(&primary.peer_addr()).unwrap();
    let events = Events::default();
    let ejection = Duration::from_millis(200);
    let (proxy, _log) = start_ejecting(&primary_peer, &backup, ejection, &events).await;
    let http = client();

    // The policy retries no status: each 500 goes to the client, and counts against the peer.
    for _ in 0..5 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 500);
    }
    assert!(
        !primary_peer.health().is_healthy(),
        "five 5xx in a row eject"
    );
    assert_eq!(proxy.get_text(&http, "/").await, "backup");

    // Its probe is answered with a 500 too: a failed probe, ejected again, never re-admitted.
    until_half_open(&primary_peer).await;
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500, "the probe's own answer");
    assert!(matches!(
        primary_peer.health().state(),
        HealthState::Ejected { .. }
    ));
    let changes: Vec<_> = events.all().into_iter().map(|e| e.1).collect();
    let ejections = changes
        .iter()
        .filter(|c| matches!(c, HealthChange::Ejected { .. }))
        .count();
    assert_eq!(ejections, 2, "{changes:?}");
    assert!(!changes.contains(&HealthChange::Readmitted), "{changes:?}");
}

/// Panic mode through the engine: a round-robin told to spread over every peer once a third is
/// out sends the ejected peer its share, rather than having the engine's probe claim turn the
/// choice down and hand the turn to the next peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_keeps_the_ejected_peers_share_through_the_engine() {
    let ups = [
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start("c", Mode::Ok).await,
    ];
    let peers: Vec<Peer> = ups
        .iter()
        .map(|u| Peer::new(&u.peer_addr()).unwrap())
        .collect();
    let ejecting = OutlierDetection::new().with_base_ejection(Duration::from_secs(60));
    ejecting
        .record_failure(&peers[0], FailureKind::ConnectRefused)
        .unwrap();
    let rr = pingora_failover::RoundRobin::new(peers)
        .unwrap()
        .with_panic_threshold(0.3)
        .unwrap();
    let engine = Failover::builder(rr, StandardPolicy::default()).without_outlier_detection();
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..30 {
        assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    }
    let hits: Vec<usize> = ups.iter().map(Upstream::hits).collect();
    assert_eq!(hits, [10, 10, 10]);
}

/// A shared overload: every peer sheds with 503. With a cap of 50 %, half the pool is ejected
/// and the other half keeps its traffic (no pile-up on the last peer standing); without one,
/// every peer goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_keeps_a_shared_overload_from_ejecting_more_than_its_share() {
    for cap in [Some(50), None] {
        let mut upstreams = Vec::new();
        for name in ["a", "b", "c", "d"] {
            upstreams.push(Upstream::start(name, Mode::Status(503)).await);
        }
        let peers: Vec<Peer> = upstreams
            .iter()
            .map(|u| Peer::new(&u.peer_addr()).unwrap())
            .collect();
        let mut rules = OutlierDetection::new()
            .with_consecutive_failures(2)
            .without_recovery_probe();
        if let Some(percent) = cap {
            rules = rules.with_max_ejection_percent(percent);
        }
        let engine = Failover::builder(
            pingora_failover::RoundRobin::new(peers.clone()).unwrap(),
            StandardPolicy::default(),
        )
        .with_outlier_detection(rules);
        let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
        let http = client();
        for _ in 0..40 {
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            assert_eq!(resp.status(), 503);
        }
        let ejected = peers.iter().filter(|p| !p.health().is_healthy()).count();
        match cap {
            Some(_) => {
                assert_eq!(ejected, 2, "half of four");
                // The two left in take the traffic that follows, not one of them alone.
                let before: Vec<usize> = upstreams.iter().map(Upstream::hits).collect();
                for _ in 0..20 {
                    http.get(proxy.url("/")).send().await.unwrap();
                }
                let took: Vec<usize> = upstreams
                    .iter()
                    .zip(&before)
                    .map(|(u, b)| u.hits() - b)
                    .collect();
                let in_pool: Vec<usize> = took
                    .iter()
                    .zip(&peers)
                    .filter(|(_, p)| p.health().is_healthy())
                    .map(|(t, _)| *t)
                    .collect();
                assert_eq!(in_pool.len(), 2, "{took:?}");
                assert!(in_pool.iter().all(|&t| t >= 5), "{took:?}");
            }
            None => assert_eq!(ejected, 4, "no cap: every peer"),
        }
    }
}

/// A peer failing 30 % of its requests, never twice in a row, is ejected by the failure-ratio
/// rule once it has had its minimum of requests; a peer failing 1 % is not, and without the rule
/// neither is (the consecutive rule never sees five in a row). Every GET is answered 200: the
/// 503s are retried on another peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_failing_a_third_of_its_requests_is_ejected_and_one_failing_one_percent_is_not() {
    for with_ratio in [true, false] {
        let partly = Upstream::start(
            "partly",
            Mode::FailSome {
                status: 503,
                k: 3,
                n: 10,
            },
        )
        .await;
        let rarely = Upstream::start(
            "rarely",
            Mode::FailSome {
                status: 503,
                k: 1,
                n: 100,
            },
        )
        .await;
        let fine = Upstream::start("fine", Mode::Ok).await;
        let peers: Vec<Peer> = [&partly, &rarely, &fine]
            .iter()
            .map(|u| Peer::new(&u.peer_addr()).unwrap())
            .collect();
        let mut rules = OutlierDetection::new()
            .with_base_ejection(Duration::from_secs(60))
            .without_recovery_probe();
        if with_ratio {
            rules = rules.with_failure_ratio(30, 20, Duration::from_secs(10));
        }
        let events = Events::default();
        let policy = StandardPolicy::builder()
            .with_retry_statuses([503])
            .build()
            .unwrap();
        let engine = Failover::builder(
            pingora_failover::RoundRobin::new(peers.clone()).unwrap(),
            policy,
        )
        .with_outlier_detection(rules)
        .on_health_change(events.observer());
        let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
        let http = client();
        for i in 0..300 {
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            if resp.status() != 200 {
                panic!("{i}: {:?}", log.wait_for(i + 1).await[i]);
            }
        }
        assert!(rarely.hits() >= 100, "{}", rarely.hits());
        assert!(peers[1].health().is_healthy(), "1 % never ejects");
        if with_ratio {
            assert!(!peers[0].health().is_healthy(), "30 % ejects");
            assert!(
                (20..=40).contains(&partly.hits()),
                "ejected soon after its 20th request: {}",
                partly.hits()
            );
            let ejections: Vec<_> = events
                .all()
                .into_iter()
                .filter(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
                .collect();
            assert_eq!(
                ejections.len(),
                1,
                "the partly failing peer alone: {ejections:?}"
            );
        } else {
            assert!(peers[0].health().is_healthy(), "never five in a row");
            assert!(partly.hits() >= 100);
        }
    }
}

/// A peer at its limit of requests in flight is passed over while another has room, and when
/// every peer is at its limit a request fails with a 503 without reaching any upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_at_its_limit_spills_to_the_next_and_then_requests_fail_fast() {
    let slow = Duration::from_millis(400);
    let primary = Upstream::start("primary", Mode::Slow(slow)).await;
    let backup = Upstream::start("backup", Mode::Slow(slow)).await;
    let limited = |u: &Upstream, max| {
        Peer::builder(u.peer_addr())
            .with_max_requests(max)
            .build()
            .unwrap()
    };
    let list = OrderedList::new(vec![limited(&primary, 2), limited(&backup, 3)]).unwrap();
    let (proxy, _log) = support::start_failover(list, StandardPolicy::default()).await;
    let http = client();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (http.clone(), proxy.url("/"));
            tokio::spawn(async move {
                let resp = http.get(url).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    let by = |body: &str| answers.iter().filter(|(_, b)| b == body).count();
    assert_eq!((primary.hits(), backup.hits()), (2, 3), "{answers:?}");
    assert_eq!((by("primary"), by("backup")), (2, 3), "{answers:?}");
    let refused = answers.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(refused, 3, "the rest: {answers:?}");
}

/// With a queue, a new request that finds every peer at its limit waits for a place rather than
/// failing at once: one waits and is served when a place frees, one more than the queue holds
/// is turned away at once, and a wait that runs out is answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_waits_for_a_place_and_the_queue_is_bounded() {
    for (wait, served) in [(Duration::from_secs(5), 3), (Duration::from_millis(50), 2)] {
        let only = Upstream::start("only", Mode::Slow(Duration::from_millis(300))).await;
        let list = OrderedList::new(vec![Peer::builder(only.peer_addr())
            .with_max_requests(2)
            .build()
            .unwrap()])
        .unwrap();
        let engine = Failover::builder(list, StandardPolicy::default()).with_queue(1, wait);
        let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
        let statuses = proxy.concurrent_statuses(4).await;
        let mut due = vec![200; served];
        due.resize(4, 503);
        assert_eq!(statuses, due, "waiting up to {wait:?}");
        assert_eq!(only.hits(), served);
    }
}

/// With the primary down and the backup full, a request is shed with a 503, on its first
/// attempt or on its retry: panic mode does not send it to the peer that is out while a healthy
/// peer is only full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backup_sheds_with_503_rather_than_panic_to_a_dead_primary() {
    let backup = Upstream::start("backup", Mode::Slow(Duration::from_millis(400))).await;
    let list = OrderedList::new(vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::builder(backup.peer_addr())
            .with_max_requests(2)
            .build()
            .unwrap(),
    ])
    .unwrap();
    let (proxy, log) = support::start_failover(list, StandardPolicy::default()).await;
    let statuses = proxy.concurrent_statuses(6).await;
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503], "never a 502");
    assert_eq!(backup.hits(), 2);
    let records = log.wait_for(6).await;
    let shed_on_retry = records
        .iter()
        .filter(|r| {
            r.last().is_some_and(|a| {
                a.outcome()
                    == support::stopped(
                        pingora_failover::FailureKind::ConnectRefused,
                        pingora_failover::StopReason::Full,
                    )
            })
        })
        .count();
    // Whether a request met the dead primary first depends on the order they arrive in; any
    // that did was shed on its retry, with the reason recorded.
    let first_shed = records.iter().filter(|r| r.is_empty()).count();
    assert_eq!(shed_on_retry + first_shed + 2, 6, "{records:?}");
}
