//! Recovery out of band: an ejected peer is probed in the background and re-admitted by a probe
//! that passes. No request is ever its probe, and a peer still answering 503 stays out.

mod support;

use std::time::Duration;

use pingora_failover::{
    Failover, FailoverProxy, HealthChange, OutlierDetection, RecoveryProbe, StandardPolicy,
};
use support::{client, ordered, start_proxy, Events, Mode, Upstream};

/// Live requests carry an id; the background probe does not.
async fn get(proxy: &support::ProxyServer, id: usize) -> (u16, String) {
    let resp = client()
        .get(proxy.url("/live"))
        .header("x-request-id", format!("live-{id}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A proxy over `primary` then `backup` under `rules` and `policy`, reporting to the events.
async fn start(
    primary: &Upstream,
    backup: &Upstream,
    rules: OutlierDetection,
    policy: StandardPolicy,
) -> (support::ProxyServer, support::RequestLog, Events) {
    let events = Events::default();
    let list = ordered(
        &[primary.peer_addr(), backup.peer_addr()],
        Duration::from_secs(2),
    );
    let engine = Failover::builder(list, policy)
        .with_outlier_detection(rules)
        .on_health_change(events.observer());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    (proxy, log, events)
}

fn live_ids(up: &Upstream, range: std::ops::Range<usize>) -> usize {
    let ids = up.ids();
    range
        .filter(|i| ids.contains_key(&format!("live-{i}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_comes_back_by_a_background_probe_and_no_request_probes_it() {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(200))
        .with_recovery_probe(
            RecoveryProbe::http("/healthz")
                .unwrap()
                .with_interval(Duration::from_millis(50))
                .unwrap(),
        );
    let (proxy, log, events) = start(&primary, &backup, rules, StandardPolicy::default()).await;
    assert_eq!(get(&proxy, 0).await, (200, "primary".into()));

    primary.stop_and_wait().await;
    assert_eq!(get(&proxy, 1).await, (200, "backup".into()), "failed over");
    events
        .wait_until(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .await;
    // Well past the ejection time, while background probes are refused: requests keep going
    // to the backup, none of them probes the primary.
    events
        .wait_until(|(_, c)| *c == HealthChange::Probing)
        .await;
    for id in 2..40 {
        assert_eq!(get(&proxy, id).await, (200, "backup".into()));
    }
    primary.restart().await;
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    // Each request sent while the primary was out went to the backup at once: a request that
    // probed the primary would show two attempts.
    let requests = log.wait_for(40).await;
    for (i, attempts) in requests.iter().enumerate().skip(2) {
        let peers: Vec<String> = attempts.iter().map(|a| a.peer().to_string()).collect();
        assert_eq!(peers, [backup.peer_addr()], "request {i}");
    }
    assert_eq!(
        live_ids(&primary, 1..40),
        0,
        "a request reached the primary"
    );
    assert_eq!(live_ids(&backup, 1..40), 39);
    assert!(primary.hits() >= 2, "the probe reached the primary");
    assert_eq!(get(&proxy, 40).await, (200, "primary".into()), "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_answering_503_stays_out_until_its_probe_passes() {
    let primary = Upstream::start("primary", Mode::Status(503)).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(100))
        .with_recovery_probe(
            RecoveryProbe::default()
                .with_interval(Duration::from_millis(20))
                .unwrap(),
        );
    let policy = StandardPolicy::builder()
        .with_retry_statuses([503])
        .build()
        .unwrap();
    let (proxy, _log, events) = start(&primary, &backup, rules, policy).await;
    // Five 503s in a row eject it; every GET is answered by the backup.
    for id in 0..5 {
        assert_eq!(get(&proxy, id).await, (200, "backup".into()));
    }
    events
        .wait_until(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .await;
    let hits = primary.hits();
    // Ten background probes get a 503 each: it stays out.
    support::eventually("ten probes", || primary.hits() >= hits + 10).await;
    for id in 5..20 {
        assert_eq!(get(&proxy, id).await, (200, "backup".into()));
    }
    assert!(!events
        .all()
        .iter()
        .any(|(_, c)| *c == HealthChange::Readmitted));
    assert_eq!(live_ids(&primary, 5..20), 0, "a request probed the primary");
    primary.set_mode(Mode::Ok);
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    assert_eq!(get(&proxy, 20).await, (200, "primary".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_background_probe_a_request_probes_after_the_ejection_time() {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(100))
        .without_recovery_probe();
    let (proxy, _log, events) = start(&primary, &backup, rules, StandardPolicy::default()).await;
    primary.stop_and_wait().await;
    assert_eq!(get(&proxy, 0).await, (200, "backup".into()));
    primary.restart().await;
    // A request takes the probe, and its success re-admits the primary.
    proxy.until_answered_by("primary").await;
    let seen = events.all();
    assert!(seen.iter().any(|(_, c)| *c == HealthChange::Probing));
    assert!(seen.iter().any(|(_, c)| *c == HealthChange::Readmitted));
    assert_eq!(
        primary.hits(),
        1,
        "the one request that probed it, and no background probe"
    );
}
