//! A peer set that changes while requests flow: replaced whole, peers added and removed, weights
//! changed. No GET fails, no POST arrives twice, no new request reaches a removed peer, and peers
//! that stay keep their health.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_failover::{
    Attempt, AttemptRecord, HealthChange, OrderedList, Peer, PeerSelector, PeerSet, RoundRobin,
    StandardPolicy,
};
use support::{client, refused_addr, start_failover, Events, Mode, Upstream};

fn peers(ups: &[&Upstream]) -> Vec<Peer> {
    ups.iter()
        .map(|u| Peer::new(&u.peer_addr()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_changing_under_load_loses_no_get_and_sends_no_post_twice() {
    let ups = [
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start("c", Mode::Ok).await,
        Upstream::start("d", Mode::Ok).await,
    ];
    let [a, b, c, d] = &ups;
    let set = PeerSet::new(peers(&[a, b])).unwrap();
    let (proxy, _log) =
        start_failover(RoundRobin::from_set(set.clone()), StandardPolicy::default()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for client_no in 0..8 {
        let (http, url, stop) = (client(), proxy.url("/"), stop.clone());
        load.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut n = 0;
            // Bounded in count as well as by the stop flag.
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                n += 1;
                let post = n % 3 == 0;
                let req = if post {
                    http.post(&url)
                        .header("x-request-id", format!("{client_no}-{n}"))
                        .body("order")
                } else {
                    http.get(&url)
                };
                let resp = req.send().await.unwrap();
                results.push((post, resp.status().as_u16()));
            }
            results
        }));
    }

    // Each change waits for traffic to flow on the new set before the next.
    let changes: [&dyn Fn(); 6] = [
        &|| set.replace(peers(&[c, d])).unwrap(),
        &|| set.add(Peer::new(&a.peer_addr()).unwrap()).unwrap(),
        &|| assert!(set.remove(&c.peer_addr())),
        &|| assert!(set.set_weight(&d.peer_addr(), 5).unwrap()),
        &|| set.replace(peers(&[b, c, d])).unwrap(),
        &|| set.replace(peers(&[a, b, c, d])).unwrap(),
    ];
    for change in changes {
        change();
        let before: usize = ups.iter().map(Upstream::hits).sum();
        while ups.iter().map(Upstream::hits).sum::<usize>() < before + 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for task in load {
        results.extend(task.await.unwrap());
    }

    let failed: Vec<_> = results.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        results.len()
    );
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    for u in &ups {
        for (id, n) in u.ids() {
            *arrivals.entry(id).or_default() += n;
        }
    }
    assert!(arrivals.values().all(|n| *n == 1), "a POST arrived twice");
    println!(
        "{} requests through 6 changes; hits {:?}",
        results.len(),
        ups.iter().map(Upstream::hits).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_request_reaches_a_peer_once_its_removal_returned() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let events = Events::default();
    let set = PeerSet::builder(peers(&[&a, &b]))
        .on_change(events.observer())
        .build()
        .unwrap();
    let (proxy, _log) =
        start_failover(RoundRobin::from_set(set.clone()), StandardPolicy::default()).await;
    let http = client();
    for _ in 0..10 {
        proxy.get_text(&http, "/").await;
    }
    assert!(a.hits() > 0);

    assert!(set.remove(&a.peer_addr()));
    let hits = a.hits();
    for _ in 0..20 {
        assert_eq!(proxy.get_text(&http, "/").await, "b");
    }
    assert_eq!(a.hits(), hits);
    assert!(events
        .all()
        .contains(&(a.peer_addr(), HealthChange::Removed)));
    assert!(!set.remove(&a.peer_addr()), "gone already");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stays_keeps_its_health_across_an_update() {
    let dead = refused_addr();
    let backup = Upstream::start("backup", Mode::Ok).await;
    let set = PeerSet::new(vec![
        Peer::new(&dead).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ])
    .unwrap();
    let (proxy, log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    let ejected = set.snapshot()[0].clone();
    assert!(!ejected.health().is_healthy(), "one refused connect ejects");

    // The whole list again, from new handles and with a new weight: the same peers.
    set.replace(vec![
        Peer::builder(&dead).with_weight(2).build().unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ])
    .unwrap();
    let kept = set.snapshot()[0].clone();
    assert!(kept.same(&ejected));
    assert_eq!(kept.weight(), 2);
    assert!(!kept.health().is_healthy(), "still ejected");
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    let records = log.wait_for(2).await;
    assert_eq!(
        records[1].len(),
        1,
        "the ejected peer was skipped, not tried"
    );
}

#[test]
fn a_retry_never_returns_to_a_peer_already_tried_across_an_update() {
    // Never dialled: selection only.
    let addrs: [String; 2] = support::refused_addrs();
    let set = PeerSet::new(addrs.iter().map(|a| Peer::new(a).unwrap()).collect()).unwrap();
    let list = OrderedList::from_set(set.clone());
    let first = list.select(&Attempt::new(&[], None)).unwrap();
    let tried = [AttemptRecord::new(first.clone())];
    // The set is replaced by new handles of the same peers between the attempts.
    set.replace(addrs.iter().map(|a| Peer::new(a).unwrap()).collect())
        .unwrap();
    let retry = list.select(&Attempt::new(&tried, None)).unwrap();
    assert!(!retry.same(&first), "{retry} was tried already");
    assert_eq!(retry.name(), addrs[1]);
}

#[test]
fn bad_updates_are_typed_errors_and_change_nothing() {
    let [one, other] = support::refused_addrs();
    let set = PeerSet::new(vec![Peer::new(&one).unwrap()]).unwrap();
    let version = set.snapshot().version();
    let twice = vec![Peer::new(&other).unwrap(), Peer::new(&other).unwrap()];
    assert!(matches!(
        set.replace(twice),
        Err(pingora_failover::ConfigError::DuplicatePeer { .. })
    ));
    assert!(set.add(Peer::new(&one).unwrap()).is_err());
    assert!(set.set_weight(&one, 0).is_err());
    assert!(!set.remove("not an address"));
    assert_eq!(set.snapshot().version(), version);
}

#[cfg(feature = "metrics")]
#[test]
fn set_changes_are_counted_in_the_metrics() {
    let registry = prometheus::Registry::new();
    let metrics = pingora_failover::Metrics::register(&registry).unwrap();
    let addrs: [String; 3] = support::refused_addrs();
    let set = PeerSet::builder(vec![Peer::new(&addrs[0]).unwrap()])
        .with_metrics(metrics)
        .build()
        .unwrap();
    set.add(Peer::new(&addrs[1]).unwrap()).unwrap();
    set.add(Peer::new(&addrs[2]).unwrap()).unwrap();
    assert!(set.remove(&addrs[0]));
    let text = support::metrics_text(&registry);
    for line in [
        "failover_peers 2",
        "failover_peer_changes_total{change=\"added\"} 3",
        "failover_peer_changes_total{change=\"removed\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    } // A set dropped takes its peers out of the gauge.
    drop(set);
    assert_eq!(metric(&registry, "failover_peers").as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_to_a_removed_peer_finishes_normally() {
    let slow = Upstream::start("slow", Mode::Slow(Duration::from_millis(300))).await;
    let other = Upstream::start("other", Mode::Ok).await;
    let set = PeerSet::new(peers(&[&slow, &other])).unwrap();
    let (proxy, log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    let request = tokio::spawn(client().get(proxy.url("/")).send());
    while slow.hits() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(
        set.remove(&slow.peer_addr()),
        "removed while its request is in flight"
    );
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow");
    let records = log.wait_for(1).await;
    assert_eq!(
        records[0].len(),
        1,
        "answered by the removed peer, not retried"
    );
    assert_eq!(proxy.get_text(&client(), "/").await, "other");
}

/// The value of `series` (`name{labels}`), if the registry has it.
#[cfg(feature = "metrics")]
fn metric(registry: &prometheus::Registry, series: &str) -> Option<String> {
    support::metrics_text(registry)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

/// The peers named in the per-peer series of the registry.
#[cfg(feature = "metrics")]
fn labelled_peers(registry: &prometheus::Registry) -> std::collections::BTreeSet<String> {
    support::metrics_text(registry)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.split("peer=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_owned)
        })
        .collect()
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ejected_gauge_and_per_peer_series_follow_set_membership() {
    use pingora_failover::{Failover, FailoverProxy, Metrics};

    let backup = Upstream::start("backup", Mode::Ok).await;
    let registry = prometheus::Registry::new();
    let set = PeerSet::new(peers(&[&backup])).unwrap();
    // No retry budget: eleven failovers within a second on an idle proxy are more than its
    // floor allows at once (10), and this test is about the metrics.
    let engine = Failover::builder(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .without_budget()
    .with_metrics(Metrics::register(&registry).unwrap());
    let (proxy, log) = support::start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    // Eleven peers come and go (a deploy a day), each refused, ejected, then removed.
    for round in 0..11 {
        let gone = refused_addr();
        set.replace(vec![
            Peer::new(&gone).unwrap(),
            Peer::new(&backup.peer_addr()).unwrap(),
        ])
        .unwrap();
        assert_eq!(proxy.get_text(&http, "/").await, "backup");
        log.wait_for(round + 1).await;
        assert_eq!(
            metric(&registry, "failover_ejected_peers").as_deref(),
            Some("1"),
            "round {round}: {gone} ejected"
        );
        assert!(labelled_peers(&registry).contains(&gone));
        set.replace(peers(&[&backup])).unwrap();
        assert_eq!(
            metric(&registry, "failover_ejected_peers").as_deref(),
            Some("0"),
            "round {round}: the ejected peer left its set"
        );
        assert_eq!(
            labelled_peers(&registry),
            [backup.peer_addr()].into(),
            "round {round}: only the peers of the set have series"
        );
    }
    let ok = format!(
        "failover_attempts_total{{outcome=\"ok\",peer=\"{}\"}}",
        backup.addr
    );
    assert_eq!(metric(&registry, &ok).as_deref(), Some("11"));
}

/// A request still on its way to a peer removed meanwhile fails there: the peer, gone from its
/// set, is not ejected (no event, no gauge, no series), and the request moves on.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_its_peer_left_the_set_ejects_nothing() {
    use pingora_failover::{Failover, FailoverProxy, Metrics, OutlierDetection};

    let hung = Upstream::start("hung", Mode::Hang).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let registry = prometheus::Registry::new();
    let events = Events::default();
    let set = PeerSet::new(vec![
        Peer::builder(hung.peer_addr())
            .with_read_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ])
    .unwrap();
    let engine = Failover::builder(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .with_outlier_detection(OutlierDetection::new().with_consecutive_failures(1))
    .without_adaptive_timeouts()
    .on_health_change(events.observer())
    .with_metrics(Metrics::register(&registry).unwrap());
    let (proxy, log) = support::start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let request = tokio::spawn(client().get(proxy.url("/")).send());
    support::eventually("the request reached the hung peer", || hung.hits() == 1).await;
    assert!(set.remove(&hung.peer_addr()));
    let resp = request.await.unwrap().unwrap();
    assert_eq!(
        resp.text().await.unwrap(),
        "backup",
        "moved on after its header timeout"
    );
    log.wait_for(1).await;
    let ejected: Vec<_> = events
        .all()
        .into_iter()
        .filter(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .collect();
    assert!(ejected.is_empty(), "{ejected:?}");
    assert_eq!(
        metric(&registry, "failover_ejected_peers").as_deref(),
        Some("0")
    );
    assert_eq!(labelled_peers(&registry), [backup.peer_addr()].into());
}
