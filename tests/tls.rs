//! HTTPS upstreams through rustls, with certificates from a private CA the test makes: a TLS
//! failure happens before anything is sent, so any request fails over.
#![cfg(feature = "rustls")]

mod support;

use pingora_failover::{FailureKind, OrderedList, StandardPolicy, Verdict};
use support::{client, failed, start_failover, Mode, Proto, TestCa, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_with_a_private_ca_serves_through_the_proxy() {
    let ca = TestCa::new();
    let up = Upstream::start_with("tls", Mode::Ok, Proto::Tls(ca)).await;
    let peer = up.peer_builder().build().unwrap();
    assert!(peer.is_tls());
    let (proxy, _log) = start_failover(
        OrderedList::new(vec![peer]).unwrap(),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "tls");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_over_for_a_post_which_arrives_once() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    let primary = Upstream::start_with("primary", Mode::Ok, Proto::Tls(ca.clone())).await;
    let backup = Upstream::start_with("backup", Mode::Ok, Proto::Tls(ca)).await;
    // The primary's certificate is signed by a CA this peer does not trust.
    let untrusting = other_ca
        .trusting(pingora_failover::Peer::builder(primary.peer_addr()).with_tls("localhost"));
    let peers = vec![
        untrusting.build().unwrap(),
        backup.peer_builder().build().unwrap(),
    ];
    let (proxy, log) =
        start_failover(OrderedList::new(peers).unwrap(), StandardPolicy::default()).await;

    let resp = proxy.post_order("/orders", "order-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert_eq!(primary.hits(), 0, "nothing was sent to the primary");
    assert_eq!(backup.ids().get("order-1"), Some(&1));
    let attempts = log.wait_for(1).await.remove(0);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::TlsHandshake, Verdict::Retried)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tls_primary_fails_over_and_comes_back() {
    let ca = TestCa::new();
    let mut primary = Upstream::start_with("primary", Mode::Ok, Proto::Tls(ca.clone())).await;
    let backup = Upstream::start_with("backup", Mode::Ok, Proto::Tls(ca)).await;
    let peers = vec![
        primary.peer_builder().build().unwrap(),
        backup.peer_builder().build().unwrap(),
    ];
    let (proxy, log) =
        start_failover(OrderedList::new(peers).unwrap(), StandardPolicy::default()).await;
    let http = client();

    assert_eq!(proxy.get_text(&http, "/").await, "primary");
    primary.stop_and_wait().await;
    assert_eq!(proxy.get_text(&http, "/").await, "backup");
    primary.restart().await;
    let records = log.wait_for(2).await;
    let kind = match records[1][0].outcome() {
        pingora_failover::Outcome::Failed { kind, .. } => kind,
        o => panic!("{o:?}"),
    };
    // A pooled TLS connection closed by the kill, or a refused new one.
    assert!(
        matches!(
            kind,
            FailureKind::ReusedConnectionClosed | FailureKind::ConnectRefused
        ),
        "{kind:?}"
    );
}
