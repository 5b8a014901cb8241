//! Recovery out of band: an ejected peer is probed in the background and re-admitted by a probe
//! that passes. No request is ever its probe, and a peer still answering 503 stays out.

mod support;

use std::time::Duration;

use pingora_failover::{
    Failover, FailoverProxy, HealthChange, OrderedList, OutlierDetection, Peer, PeerSet,
    RecoveryProbe, StandardPolicy,
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
    let probes = primary.probes();
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
    assert!(primary.probes() > probes, "the probe reached the primary");
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
    let probes = primary.probes();
    // Ten background probes get a 503 each: it stays out.
    support::eventually("ten probes", || primary.probes() >= probes + 10).await;
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

/// A proxy over a set of `primary` then `backup`, probing ejected peers with `GET /healthz`
/// every 20 ms after an ejection of 100 ms. With `log`, a request log keeps every attempt (and
/// the peer handle in it), as a user's access log may; without, nothing outside the proxy holds
/// a handle.
async fn start_over_a_set(
    primary: &Upstream,
    backup: &Upstream,
    log: bool,
) -> (support::ProxyServer, PeerSet, Events) {
    let events = Events::default();
    let set = PeerSet::new(set_peers(primary, backup)).unwrap();
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(100))
        .with_recovery_probe(
            RecoveryProbe::http("/healthz")
                .unwrap()
                .with_interval(Duration::from_millis(20))
                .unwrap(),
        );
    let engine = Failover::builder(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .with_outlier_detection(rules)
    .on_health_change(events.observer());
    let proxy = FailoverProxy::from_builder(engine).unwrap();
    let proxy = if log {
        start_proxy(proxy).await.0
    } else {
        support::ProxyServer::start(proxy.into_app(&support::server_conf()).unwrap()).await
    };
    (proxy, set, events)
}

/// New handles for the same two endpoints, as a reload builds them.
fn set_peers(primary: &Upstream, backup: &Upstream) -> Vec<Peer> {
    [primary, backup]
        .map(|u| Peer::new(&u.peer_addr()).unwrap())
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_same_peers_keeps_probing_an_ejected_peer() {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let (proxy, set, events) = start_over_a_set(&primary, &backup, false).await;
    primary.stop_and_wait().await;
    assert_eq!(get(&proxy, 0).await, (200, "backup".into()), "failed over");
    events
        .wait_until(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .await;
    // A reload right after the ejection (a peers file, SIGHUP, a DNS answer): the same
    // endpoints, new handles. The primary stays in the set, with its health.
    set.replace(set_peers(&primary, &backup)).unwrap();
    let probes = primary.probes();
    primary.restart().await;
    // Its background probe still runs, and re-admits it; no request probes it.
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    assert!(primary.probes() > probes, "{:?}", primary.seen());
    assert_eq!(live_ids(&primary, 0..1), 0, "a request probed the primary");
    assert_eq!(get(&proxy, 1).await, (200, "primary".into()), "back");

    // Again with a weight change while it is being probed.
    primary.set_mode(Mode::Status(503));
    for id in 2..7 {
        get(&proxy, id).await;
    }
    support::eventually("probing again", || {
        let seen = events.all();
        seen.iter()
            .filter(|(_, c)| *c == HealthChange::Probing)
            .count()
            >= 2
    })
    .await;
    let probes = primary.probes();
    support::eventually("probed", || primary.probes() > probes).await;
    set.set_weight(&primary.peer_addr(), 3).unwrap();
    let probes = primary.probes();
    support::eventually("probed after the weight change", || {
        primary.probes() >= probes + 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_from_its_set_is_no_longer_probed() {
    let primary = Upstream::start("primary", Mode::Status(503)).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let (proxy, set, events) = start_over_a_set(&primary, &backup, true).await;
    for id in 0..5 {
        get(&proxy, id).await;
    }
    events
        .wait_until(|(_, c)| *c == HealthChange::Probing)
        .await;
    let probes = primary.probes();
    support::eventually("probed", || primary.probes() > probes).await;
    assert!(set.remove(&primary.peer_addr()));
    let at_removal = primary.probes();
    // Twenty probe intervals: at most the probe already on its way arrives.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        primary.probes() <= at_removal + 1,
        "{} probes after the removal",
        primary.probes() - at_removal
    );
    assert_eq!(get(&proxy, 5).await, (200, "backup".into()));
}

/// A primary that is ejected (its connects refused), then comes back answering in `mode`;
/// probed by `probe` every 20 ms after 100 ms out.
async fn eject_then_answer(
    probe: RecoveryProbe,
    mode: Mode,
) -> (Upstream, Upstream, support::ProxyServer, Events) {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(100))
        .with_recovery_probe(probe.with_interval(Duration::from_millis(20)).unwrap());
    let (proxy, _log, events) = start(&primary, &backup, rules, StandardPolicy::default()).await;
    primary.stop_and_wait().await;
    assert_eq!(get(&proxy, 0).await, (200, "backup".into()));
    primary.set_mode(mode);
    primary.restart().await;
    (primary, backup, proxy, events)
}

fn readmitted(events: &Events) -> bool {
    events
        .all()
        .iter()
        .any(|(_, c)| *c == HealthChange::Readmitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_probe_answered_404_401_or_429_does_not_readmit() {
    let (primary, _backup, proxy, events) =
        eject_then_answer(RecoveryProbe::default(), Mode::Status(404)).await;
    for status in [404, 401, 429] {
        primary.set_mode(Mode::Status(status));
        let probes = primary.probes();
        support::eventually("five probes, or a re-admission", || {
            readmitted(&events) || primary.probes() >= probes + 5
        })
        .await;
        assert!(!readmitted(&events), "a {status} re-admitted the primary");
    }
    assert!(
        primary.seen().iter().all(|s| s.path == "/"),
        "GET / by default"
    );
    primary.set_mode(Mode::Status(204));
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    primary.set_mode(Mode::Ok);
    assert_eq!(get(&proxy, 1).await, (200, "primary".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_sends_its_path_and_host_and_passes_on_the_statuses_given() {
    let probe = RecoveryProbe::http("/healthz")
        .unwrap()
        .with_host("api.example")
        .unwrap()
        .with_passing_statuses([200, 404])
        .unwrap();
    let (primary, _backup, _proxy, events) = eject_then_answer(probe, Mode::Status(204)).await;
    let probes = primary.probes();
    support::eventually("five probes, or a re-admission", || {
        readmitted(&events) || primary.probes() >= probes + 5
    })
    .await;
    assert!(
        !readmitted(&events),
        "a 204 is not among the statuses given"
    );
    primary.set_mode(Mode::Status(404));
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    for probe in primary.seen().iter().filter(|s| s.is_probe()) {
        assert_eq!(
            (probe.path.as_str(), probe.host.as_deref()),
            ("/healthz", Some("api.example"))
        );
    }
}

#[cfg(feature = "dns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_by_name_is_probed_with_its_name_as_host() {
    let dns = support::dns::TestDns::start(60).await;
    dns.set_ips("api.test", &["127.0.0.1".parse().unwrap()]);
    let primary = Upstream::start("primary", Mode::Status(503)).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let name = format!("api.test:{}", primary.addr.port());
    let set = PeerSet::builder(vec![
        Peer::new(&name).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ])
    .with_resolver(pingora_failover::Resolver::with_nameservers([dns.addr]))
    .build_async()
    .await
    .unwrap();
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(100))
        .with_recovery_probe(
            RecoveryProbe::default()
                .with_interval(Duration::from_millis(20))
                .unwrap(),
        );
    let engine = Failover::builder(OrderedList::from_set(set), StandardPolicy::default())
        .with_outlier_detection(rules);
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    for id in 0..5 {
        assert_eq!(get(&proxy, id).await.0, 503);
    }
    support::eventually("probed", || primary.probes() >= 1).await;
    let probe = primary.seen().into_iter().find(|s| s.is_probe()).unwrap();
    assert_eq!(probe.host.as_deref(), Some(name.as_str()));
}
