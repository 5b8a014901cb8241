//! Active health checks (feature `active-health`) feed peer health: a dead peer is skipped before
//! any request pays for it, and returns when it passes again.
#![cfg(feature = "active-health")]

mod support;

use std::time::Duration;

use pingora_core::services::background::BackgroundService;
use pingora_failover::{
    ActiveHealthCheck, FailoverProxy, HealthChange, OrderedList, Peer, PeerSet, StandardPolicy,
};
use pingora_load_balancing::health_check::TcpHealthCheck;
use support::{client, refused_addr, start_proxy, Events, Mode, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_marked_before_any_request_and_returns_when_it_recovers() {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = vec![
        Peer::new(&primary.peer_addr()).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ];
    let events = Events::default();
    let check = ActiveHealthCheck::new(&peers, TcpHealthCheck::new(), Duration::from_millis(50))
        .unwrap()
        .on_health_change(events.observer());
    // Run it the way a pingora Server runs a background service.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn(async move { check.start(shutdown).await });

    let list = OrderedList::new(peers.clone()).unwrap();
    let proxy = FailoverProxy::new(list, StandardPolicy::default()).unwrap();
    let (proxy, log) = start_proxy(proxy).await;
    let http = client();

    primary.stop();
    events
        .wait_until(|e| e.0 == primary.peer_addr() && e.1 == HealthChange::CheckFailed)
        .await;
    assert!(!peers[0].health().is_healthy());
    assert_eq!(proxy.get_text(&http, "/").await, "backup");
    assert_eq!(
        log.wait_for(1).await[0].len(),
        1,
        "no request tried the dead primary"
    );

    primary.restart().await;
    events
        .wait_until(|e| e.0 == primary.peer_addr() && e.1 == HealthChange::CheckPassed)
        .await;
    assert_eq!(proxy.get_text(&http, "/").await, "primary");

    stop.send(true).unwrap();
    checker.await.unwrap();
    assert_eq!(
        events.all(),
        [
            (primary.peer_addr(), HealthChange::CheckFailed),
            (primary.peer_addr(), HealthChange::CheckPassed)
        ]
    );
}

#[test]
fn rejects_bad_settings() {
    let peers = [Peer::new("127.0.0.1:1").unwrap()];
    let tcp = TcpHealthCheck::new;
    assert!(ActiveHealthCheck::new(&[], tcp(), Duration::from_secs(1)).is_err());
    assert!(ActiveHealthCheck::new(&peers, tcp(), Duration::ZERO).is_err());
    assert!(ActiveHealthCheck::new(&peers, tcp(), Duration::from_millis(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_over_a_set_follows_the_set() {
    let a = Upstream::start("a", Mode::Ok).await;
    let set = PeerSet::new(vec![Peer::new(&a.peer_addr()).unwrap()]).unwrap();
    let events = Events::default();
    let check = ActiveHealthCheck::from_set(&set, TcpHealthCheck::new(), Duration::from_millis(50))
        .unwrap()
        .on_health_change(events.observer());
    check.run_once().await;
    assert!(events.all().is_empty(), "{:?}", events.all());

    // A peer added after the check was made, that refuses: the next round marks it.
    let dead = refused_addr();
    set.add(Peer::new(&dead).unwrap()).unwrap();
    check.run_once().await;
    assert_eq!(events.all(), [(dead.clone(), HealthChange::CheckFailed)]);
    let snapshot = set.peers();
    let added = snapshot.iter().find(|p| p.to_string() == dead).unwrap();
    assert!(!added.health().is_check_passing());

    // A peer that left is no longer checked: its stop goes unseen.
    assert!(set.remove(&a.peer_addr()));
    a.stop_and_wait().await;
    check.run_once().await;
    assert_eq!(events.all(), [(dead, HealthChange::CheckFailed)]);
}
