//! Timeouts learned per peer: a connect far slower than the peer has shown is abandoned and the
//! request goes on at once; the last attempt keeps the configured timeout; a peer that serves
//! legitimately slow requests among fast ones is never held out, and none of them fails.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use pingora_failover::{
    AdaptiveTimeouts, Failover, FailoverProxy, FailureKind, HealthChange, OrderedList, Outcome,
    Peer, PeerSet, StandardPolicy,
};
use support::{client, eventually, start_proxy, Blackhole, Events, Mode, Upstream};

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

/// A peer with nothing learned of its own (a host down when the proxy started, or added later)
/// borrows the connect time the engine's other peers have shown: its hanging connect is
/// abandoned long before the configured timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_no_connect_of_its_own_borrows_the_others_connect_time() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let hole = Blackhole::start().await;
    let backup_peer = peer(&backup.peer_addr(), CONFIGURED);
    let cold = peer(&hole.peer_addr(), CONFIGURED);
    let set = PeerSet::new(vec![backup_peer.clone()]).unwrap();
    let engine = Failover::builder(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .with_adaptive_timeouts(AdaptiveTimeouts::new());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let get = || async {
        client()
            .get(proxy.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Connections to the backup teach what a connect takes.
    assert_eq!(get().await, "backup");
    // A host that never completes a connect joins in front of it.
    set.replace(vec![cold.clone(), backup_peer]).unwrap();
    assert_eq!(get().await, "backup");
    let records = log.wait_for(2).await;
    let hung = records[1]
        .iter()
        .find(|a| {
            a.peer() == &cold
                && matches!(
                    a.outcome(),
                    Outcome::Failed {
                        kind: FailureKind::ConnectTimeout,
                        ..
                    }
                )
        })
        .unwrap_or_else(|| panic!("no connect to the cold peer timed out: {:?}", records[1]));
    assert!(
        cold.health().connect_time().is_some(),
        "it learned from the abandoned connect"
    );
    assert!(
        hung.duration().unwrap() < CONFIGURED,
        "abandoned after {:?}, the configured timeout",
        hung.duration()
    );
}

/// Waits until `peer` has learned its connect time (from the engine's warm-up).
async fn connect_learned(peer: &Peer) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while peer.health().connect_time().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the warm-up connected to the peer");
}

/// A proxy over a peer broken from the start at `cold` and a backup at `backup`, in that
/// order, with the engine's warm-up started as a background service would start it, before
/// the listener takes traffic: the two peers and the proxy.
fn warming_up(
    cold: &str,
    backup: &str,
) -> (Peer, Peer, FailoverProxy<OrderedList, StandardPolicy>) {
    let (cold, backup) = (peer(cold, CONFIGURED), peer(backup, CONFIGURED));
    let list = OrderedList::new(vec![cold.clone(), backup.clone()]).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default())
        .with_adaptive_timeouts(AdaptiveTimeouts::new());
    let proxy = FailoverProxy::from_builder(engine).unwrap();
    let warm = proxy.engine().warm_up();
    tokio::spawn(async move { warm.run().await });
    (cold, backup, proxy)
}

/// A peer down from the proxy's start (a host down at deploy), before any request has taught
/// anything: with the engine's warm-up made before traffic, even the first request borrows the
/// pool's connect time, and leaves that peer long before the configured connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_from_the_start_costs_the_first_request_only_the_connect_cut() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let hole = Blackhole::start().await;
    let (cold, backup_peer, proxy) = warming_up(&hole.peer_addr(), &backup.peer_addr());
    connect_learned(&backup_peer).await;
    assert_eq!(cold.health().connect_time(), None);
    let (proxy, log) = start_proxy(proxy).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    let records = log.wait_for(1).await;
    assert_eq!(records[0][0].peer(), &cold, "{:?}", records[0]);
    assert!(
        matches!(
            records[0][0].outcome(),
            Outcome::Failed {
                kind: FailureKind::ConnectTimeout,
                ..
            }
        ),
        "{:?}",
        records[0]
    );
    let took = records[0][0].duration().unwrap();
    assert!(
        took < CONFIGURED,
        "abandoned after {took:?}, the configured timeout"
    );
}

/// A peer hung from the proxy's start (it accepts connections and never answers, its checks
/// neither), met by a burst of first requests before any request has taught anything: with
/// the warm-up made before traffic, each borrows what the pool's liveness checks take, and
/// leaves the peer on the stall cut's evidence, long before the read timeout. None is lost to
/// the retry budget (32 first retries at once, past its floor of 20): a request's first retry
/// after a cut, made only on proof that the peer is stuck, is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_hung_from_the_start_costs_a_burst_of_first_requests_only_the_stall_cut() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let hung = Upstream::start("hung", Mode::Hang).await;
    let (cold, backup_peer, proxy) = warming_up(&hung.peer_addr(), &backup.peer_addr());
    tokio::time::timeout(Duration::from_secs(10), async {
        while backup_peer.health().check_time().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the warm-up checked the backup");
    let (proxy, log) = start_proxy(proxy).await;
    let http = client();
    let answers = join_all((0..32).map(|_| proxy.get_text(&http, "/"))).await;
    assert!(answers.iter().all(|a| a == "backup"), "{answers:?}");
    let records = log.wait_for(32).await;
    let mut cut = 0;
    for attempts in &records {
        if attempts[0].peer() != &cold {
            continue;
        }
        assert!(
            matches!(
                attempts[0].outcome(),
                Outcome::Failed {
                    kind: FailureKind::HeaderTimeout,
                    ..
                }
            ),
            "{attempts:?}"
        );
        // About the 1 s its check is given, not the 5 s read timeout.
        let took = attempts[0].duration().unwrap();
        assert!(took < CONFIGURED / 2, "left after {took:?}");
        cut += 1;
    }
    eprintln!("{cut} requests met the hung peer");
    assert!(
        cut > 20,
        "{cut} requests met the hung peer, more than the budget's floor"
    );
}

/// The other side of borrowing the pool's check time: a legitimately slow first request on a
/// live peer that has answered nothing yet. Its wait is looked at early, but the peer answers
/// its liveness check, so the request is left alone and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_request_on_a_live_peer_runs_once() {
    let primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = [
        peer(&primary.peer_addr(), CONFIGURED),
        peer(&backup.peer_addr(), CONFIGURED),
    ];
    let list = OrderedList::new(peers.to_vec()).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default())
        .with_adaptive_timeouts(AdaptiveTimeouts::new());
    let proxy = FailoverProxy::from_builder(engine).unwrap();
    proxy.engine().warm_up().run().await;
    assert!(peers.iter().all(|p| p.health().check_time().is_some()));
    let (proxy, log) = start_proxy(proxy).await;
    // The warm-up's own checks are not the request's.
    let warm_up_checks = primary.probes();
    let resp = client()
        .get(proxy.url("/report"))
        .header("x-delay-ms", "300")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
    assert_eq!((primary.hits(), backup.hits()), (1, 0));
    assert!(
        primary.probes() > warm_up_checks,
        "its wait was looked at: {:?}",
        primary.seen()
    );
    assert_eq!(log.wait_for(1).await[0].len(), 1);
}

/// A proxy over `up` alone, with `adaptive` (`None`: off), and its peer. Not started: its
/// warm-up is run by hand.
fn alone(
    up: &Upstream,
    adaptive: Option<AdaptiveTimeouts>,
) -> (Peer, FailoverProxy<OrderedList, StandardPolicy>) {
    let only = peer(&up.peer_addr(), CONFIGURED);
    let list = OrderedList::new(vec![only.clone()]).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default());
    let engine = match adaptive {
        Some(a) => engine.with_adaptive_timeouts(a),
        None => engine.without_adaptive_timeouts(),
    };
    (only, FailoverProxy::from_builder(engine).unwrap())
}

/// The warm-up keeps the least of three checks: one answered late (in the first requests'
/// burst, which it races) would give every later check of the peer ten times as long to
/// answer, and a stuck peer's cut would wait that much longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_up_learns_the_least_of_three_checks() {
    let up = Upstream::start("only", Mode::Slow(Duration::from_millis(150))).await;
    let (only, proxy) = alone(&up, Some(AdaptiveTimeouts::new()));
    let warm = proxy.engine().warm_up();
    let run = tokio::spawn(async move { warm.run().await });
    // The first check is answered after 150 ms; the ones after it at once.
    eventually("the first check arrived", || up.probes() >= 1).await;
    up.set_mode(Mode::Ok);
    run.await.unwrap();
    assert_eq!(up.probes(), 3, "three checks: {:?}", up.seen());
    let learned = only.health().check_time().expect("a check time");
    assert!(learned < Duration::from_millis(150), "{learned:?}");
    assert_eq!(up.hits(), 0, "no request");
}

/// Without being asked, the engine makes its warm-up on its first request: a peer no request
/// has gone to yet learns its connect time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_warms_up_every_peer() {
    let (_primary, _backup, peers, proxy, _log) = primary_and_backup(AdaptiveTimeouts::new()).await;
    assert_eq!(peers[1].health().connect_time(), None);
    assert_eq!(proxy.get_text(&client(), "/").await, "primary");
    connect_learned(&peers[1]).await;
}

/// Without `AdaptiveTimeouts`, nothing borrows a learned time: the warm-up makes no connect and
/// no check. With the stall cut alone, it still checks each peer (the stall cut's prior).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_up_runs_when_a_timeout_is_learned() {
    let up = Upstream::start("only", Mode::Ok).await;
    for (adaptive, warmed) in [
        (None, false),
        (Some(AdaptiveTimeouts::new().without_connect()), true),
    ] {
        let (only, proxy) = alone(&up, adaptive);
        let probes = up.probes();
        // Returns once every connect and check it makes has ended.
        proxy.engine().warm_up().run().await;
        assert_eq!(only.health().check_time().is_some(), warmed);
        assert_eq!(up.probes() > probes, warmed);
        assert_eq!(up.hits(), 0, "no request");
    }
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
    // (Tokio's timers keep whole milliseconds: the timeout may fire a fraction of one early.)
    assert!(
        took >= CUT_FREE - Duration::from_millis(2),
        "cut after {took:?} on the only attempt"
    );
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
        took >= CUT_FREE - Duration::from_millis(2),
        "cut after {took:?} with no retry to follow"
    );
}

/// 10 clients, 40 requests each, over a peer where 5 % of requests take 2 s (a report, an
/// export) and the rest answer at once; the read timeout is 5 s. With `busy`, an eleventh client
/// keeps sending fast requests throughout, so that the peer is seen answering while the slow
/// ones wait; without it, every client waits on a slow request at the same time. What each request got (slow, status, who answered), and whether
/// the peer was ever seen suspected or ejected.
async fn mixed_load(
    busy: bool,
    adaptive: AdaptiveTimeouts,
) -> (Vec<(bool, u16, String)>, bool, Vec<String>, usize) {
    let mixed = Upstream::start("mixed", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let read = Duration::from_secs(5);
    let peers = vec![
        peer(&mixed.peer_addr(), read),
        peer(&backup.peer_addr(), read),
    ];
    let list = OrderedList::new(peers.clone()).unwrap();
    let events = Events::default();
    let engine = Failover::builder(list, StandardPolicy::default())
        .with_adaptive_timeouts(adaptive)
        .on_health_change(events.observer());
    let (proxy, _log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peer, done) = (peers[0].clone(), done.clone());
        tokio::spawn(async move {
            let mut suspected = false;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                suspected |= peer.health().is_suspected();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            suspected
        })
    };
    let http = client();
    let background = busy.then(|| {
        let (http, url, done) = (http.clone(), proxy.url("/"), done.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = http.get(&url).send().await.unwrap();
                answers.push((false, resp.status().as_u16(), resp.text().await.unwrap()));
            }
            answers
        })
    });
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
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let suspected = watcher.await.unwrap();
    let mut all: Vec<_> = results.into_iter().flatten().collect();
    assert_eq!(all.iter().filter(|r| r.0).count(), 20, "5 % slow");
    if let Some(background) = background {
        all.extend(background.await.unwrap());
    }
    let ejections = events
        .all()
        .iter()
        .filter(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .map(|(p, _)| p.clone())
        .collect();
    (all, suspected, ejections, backup.hits())
}

/// While other requests are answered, the peer is alive: its slow requests keep their full
/// timeout there, it is never suspected or ejected, and none of its requests fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_some_legitimately_slow_requests_is_never_held_out() {
    // The cut waits 500 ms of silence rather than 50: one busy client on a loaded test machine
    // can leave the peer without an answer for 50 ms. The slow requests take 2 s, so without
    // the rule that a peer answering others is alive they would still be cut.
    let adaptive = AdaptiveTimeouts::new()
        .with_stall_cut(10.0, Duration::from_millis(500))
        .unwrap();
    let (all, suspected, ejections, backup_hits) = mixed_load(true, adaptive).await;
    for (slow, status, by) in &all {
        assert_eq!((*status, by.as_str()), (200, "mixed"), "slow: {slow}");
    }
    assert_eq!(backup_hits, 0);
    assert!(!suspected, "suspected");
    assert!(ejections.is_empty(), "{ejections:?}");
}

/// When every waiting request is slow at once, the peer answers nothing for 2 s, as a broken
/// one would: the slow requests are cut and retried on the backup, where they are slow too. So
/// the cuts are not held against the peer: it is never ejected, its fast requests stay on it,
/// and every request gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_slow_everywhere_are_answered_and_their_cuts_blame_no_peer() {
    let (all, _suspected, ejections, _backup_hits) =
        mixed_load(false, AdaptiveTimeouts::new()).await;
    for (slow, status, by) in &all {
        assert_eq!(*status, 200, "slow: {slow}");
        if !slow {
            assert_eq!(by, "mixed");
        }
    }
    assert!(ejections.is_empty(), "{ejections:?}");
}

/// By default, a GET whose header stalls on a peer that answers nothing else is cut after 10
/// times what the peer typically takes (at least 50 ms) and answered by the backup; a POST or a
/// DELETE is never cut. Each cut whose retry answered at once counts against the stalled peer, which is
/// ejected after the usual 5 in a row (its answers to the POST and the DELETE, though slow, reset
/// the count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_header_is_cut_and_retried_a_post_is_not_and_the_stalled_peer_is_ejected() {
    let (primary, backup) = (
        Upstream::start("primary", Mode::Ok).await,
        Upstream::start("backup", Mode::Ok).await,
    );
    let first_peer = peer(&primary.peer_addr(), CONFIGURED);
    let list = OrderedList::new(vec![
        first_peer.clone(),
        peer(&backup.peer_addr(), CONFIGURED),
    ])
    .unwrap();
    let events = Events::default();
    let engine =
        Failover::builder(list, StandardPolicy::default()).on_health_change(events.observer());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..20 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    primary.set_mode(Mode::Slow(Duration::from_secs(1)));
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
        first.duration().unwrap() < Duration::from_millis(500),
        "{:?}",
        first.duration()
    );
    // The cut keeps the primary suspected for a second once nothing waits on it: a request
    // sent meanwhile goes to the backup.
    assert!(
        first_peer.health().is_suspected(),
        "{:#?}\n{:#?}",
        first_peer.health(),
        records[20]
    );
    eventually("the primary no longer suspected", || {
        !first_peer.health().is_suspected()
    })
    .await;
    // A POST is never cut: it waits for the primary's answer. Nor is a DELETE, idempotent but
    // not safe: the cut attempt could still be running upstream beside its retry.
    let resp = http.post(proxy.url("/")).body("x").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
    let resp = http.delete(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
    // Those answers reset the primary's count (and, 1 s each, teach it a typical time near
    // 100 ms: a limit near the 1 s it now takes). It hangs: five requests caught on it, cut
    // together, each followed by an answer from the backup, eject it. (One at a time, each
    // cut would keep the primary suspected for a second, and the next request would go to
    // the backup without a cut to count.)
    primary.set_mode(Mode::Hang);
    let gets = (0..5).map(|_| async {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        resp.text().await.unwrap()
    });
    assert_eq!(join_all(gets).await, vec!["backup"; 5]);
    let ejected: Vec<_> = events
        .all()
        .into_iter()
        .filter(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(ejected, vec![primary.peer_addr()]);
    let before = primary.hits();
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert_eq!(primary.hits(), before, "an ejected peer gets no request");
}

/// Only the wait for the header is cut: a body that pauses for 10 times the cut after its
/// header (a stream, a long poll answering in parts) comes whole from the first peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_pauses_after_its_header_is_never_cut() {
    let (primary, backup, _peers, proxy, log) = primary_and_backup(AdaptiveTimeouts::new()).await;
    let http = client();
    for _ in 0..20 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    let resp = http
        .get(proxy.url("/"))
        .header("x-pause-body-ms", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "primary first rest");
    let records = log.wait_for(21).await;
    assert_eq!(records[20].len(), 1, "{:?}", records[20]);
    assert_eq!(backup.hits(), 0);
    assert_eq!(primary.hits(), 21);
}
