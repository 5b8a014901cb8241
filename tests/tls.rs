//! HTTPS upstreams through rustls, with certificates from a private CA the test makes, set up
//! through `PeerBuilder` alone: a trusted CA from PEM, HTTP/2 by ALPN, a client certificate,
//! hostname verification. A TLS failure happens before anything is sent, so any request fails
//! over.
#![cfg(feature = "rustls")]

mod support;

use pingora_failover::{
    ConfigError, FailureKind, HttpVersion, OrderedList, Peer, StandardPolicy, Verdict,
};
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
    let untrusting = pingora_failover::Peer::builder(primary.peer_addr())
        .with_tls("localhost")
        .with_ca_pem(other_ca.pem());
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

/// A proxy with `peer` as its only upstream: what it answers to a GET.
async fn only(peer: Peer) -> (u16, String) {
    let (proxy, _log) = start_failover(
        OrderedList::new(vec![peer]).unwrap(),
        StandardPolicy::default(),
    )
    .await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_is_negotiated_by_alpn_with_a_private_ca() {
    let ca = TestCa::new();
    let up = Upstream::start_with("h2-tls", Mode::Ok, Proto::H2Tls(ca.clone())).await;
    let peer = |version| {
        Peer::builder(up.peer_addr())
            .with_tls("localhost")
            .with_ca_pem(ca.pem())
            .with_http_version(version)
            .build()
            .unwrap()
    };
    // The upstream offers only h2: HTTP/1.1 alone fails the handshake, h2 (alone or preferred)
    // is served.
    assert_eq!(only(peer(HttpVersion::Http1)).await.0, 502);
    assert_eq!(only(peer(HttpVersion::Http2)).await, (200, "h2-tls".into()));
    assert_eq!(
        only(peer(HttpVersion::Http2OrHttp1)).await,
        (200, "h2-tls".into())
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let ca = TestCa::new();
    let up = Upstream::start_with("mtls", Mode::Ok, Proto::MutualTls(ca.clone())).await;
    let without = up.peer_builder().build().unwrap();
    let (cert, key) = ca.client_cert();
    let with = up
        .peer_builder()
        .with_client_cert_pem(cert, key)
        .build()
        .unwrap();
    assert_eq!(only(without).await.0, 502);
    assert_eq!(only(with).await, (200, "mtls".into()));
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_verification_can_be_turned_off_but_not_trust() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    let up = Upstream::start_with("tls", Mode::Ok, Proto::Tls(ca.clone())).await;
    let peer = |ca: &TestCa, sni: &str| {
        Peer::builder(up.peer_addr())
            .with_tls(sni)
            .with_ca_pem(ca.pem())
    };
    // The certificate names localhost and 127.0.0.1, not other.test.
    let wrong_name = peer(&ca, "other.test").build().unwrap();
    assert_eq!(only(wrong_name).await.0, 502);
    let unchecked_name = peer(&ca, "other.test")
        .without_hostname_verification()
        .build()
        .unwrap();
    assert_eq!(only(unchecked_name).await.0, 200);
    // The chain is still checked: a CA not trusted fails.
    let untrusted = peer(&other_ca, "other.test")
        .without_hostname_verification()
        .build()
        .unwrap();
    assert_eq!(only(untrusted).await.0, 502);
    let anything = peer(&other_ca, "other.test")
        .without_certificate_verification()
        .build()
        .unwrap();
    assert_eq!(only(anything).await.0, 200);
    assert_eq!(up.hits(), 2);
}

#[test]
fn bad_tls_settings_are_typed_errors() {
    let b = || Peer::builder("127.0.0.1:443");
    let invalid = |r: Result<Peer, ConfigError>, what: &str| match r {
        Err(ConfigError::InvalidPem { what: w, .. }) => assert_eq!(w, what),
        other => panic!("{other:?}"),
    };
    invalid(
        b().with_tls("x").with_ca_pem("not pem").build(),
        "trusted CA",
    );
    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    invalid(b().with_tls("x").with_ca_pem(garbage).build(), "trusted CA");
    let ca = TestCa::new();
    let (cert, _) = ca.client_cert();
    invalid(
        b().with_tls("x")
            .with_client_cert_pem(cert, "no key")
            .build(),
        "client certificate",
    );
    for (setting, builder) in [
        ("a trusted CA", b().with_ca_pem(ca.pem())),
        (
            "turning verification off",
            b().without_hostname_verification(),
        ),
        (
            "choosing between HTTP/2 and HTTP/1.1",
            b().with_http_version(HttpVersion::Http2OrHttp1),
        ),
    ] {
        assert_eq!(
            builder.build().unwrap_err(),
            ConfigError::TlsRequired {
                peer: "127.0.0.1:443".into(),
                setting
            }
        );
    }
    // A key block whose content is not a key: pingora would unwrap it when connecting.
    let not_a_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    invalid(
        b().with_tls("x")
            .with_client_cert_pem(cert, not_a_key)
            .build(),
        "client certificate",
    );
    // An empty server name would turn every check off in pingora.
    assert_eq!(
        b().with_tls("").build().unwrap_err(),
        ConfigError::EmptySni {
            peer: "127.0.0.1:443".into()
        }
    );
    assert!(b()
        .with_tls("")
        .without_certificate_verification()
        .build()
        .is_ok());
    // h2c by prior knowledge needs no TLS.
    assert!(b().with_http_version(HttpVersion::Http2).build().is_ok());
}

/// The stall cut works under TLS: a GET whose header stalls on an HTTPS primary that answers
/// nothing else is cut and answered by the backup, well before the 5 s read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_header_over_tls_is_cut_and_retried() {
    stalled_header_is_cut(None).await;
}

/// So it does for a peer that would speak HTTP/2 or HTTP/1 (`Http2OrHttp1`) and negotiated
/// HTTP/1 (the upstream offers no ALPN): its connection is watched as an HTTP/1 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_header_is_cut_on_an_http2_or_http1_peer_that_negotiated_http1() {
    stalled_header_is_cut(Some(HttpVersion::Http2OrHttp1)).await;
}

async fn stalled_header_is_cut(version: Option<HttpVersion>) {
    let ca = TestCa::new();
    let primary = Upstream::start_with("primary", Mode::Ok, Proto::Tls(ca.clone())).await;
    let backup = Upstream::start_with("backup", Mode::Ok, Proto::Tls(ca)).await;
    let read = std::time::Duration::from_secs(5);
    let peer = |u: &Upstream| {
        let b = u.peer_builder().with_read_timeout(read);
        match version {
            Some(v) => b.with_http_version(v),
            None => b,
        }
        .build()
        .unwrap()
    };
    let peers = vec![peer(&primary), peer(&backup)];
    let (proxy, log) =
        start_failover(OrderedList::new(peers).unwrap(), StandardPolicy::default()).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(proxy.get_text(&http, "/").await, "primary");
    }
    primary.set_mode(Mode::Hang);
    assert_eq!(proxy.get_text(&http, "/").await, "backup");
    let attempts = log.wait_for(21).await.remove(20);
    assert_eq!(
        attempts[0].outcome(),
        failed(FailureKind::HeaderTimeout, Verdict::Retried)
    );
    assert!(attempts[0].duration().unwrap() < read / 5, "{attempts:?}");
}

/// A peer trusted through the server's `ca_file` (not its own CA) is probed the way requests
/// connect: with the server's configuration, so its probes pass and re-admit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_trusted_through_the_servers_ca_file_passes_its_probes() {
    use pingora_failover::{
        Failover, FailoverProxy, HealthChange, OutlierDetection, RecoveryProbe,
    };

    let ca = TestCa::new();
    let ca_file = support::TempPath::with_text("ca.pem", ca.pem());
    let primary = Upstream::start_with("primary", Mode::Status(503), Proto::Tls(ca)).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = vec![
        Peer::builder(primary.peer_addr())
            .with_tls("localhost")
            .build()
            .unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ];
    let rules = OutlierDetection::new()
        .with_base_ejection(std::time::Duration::from_millis(100))
        .with_recovery_probe(
            RecoveryProbe::default()
                .with_interval(std::time::Duration::from_millis(20))
                .unwrap(),
        );
    let events = support::Events::default();
    let engine = Failover::builder(OrderedList::new(peers).unwrap(), StandardPolicy::default())
        .with_outlier_detection(rules)
        .on_health_change(events.observer());
    let conf = pingora_core::server::configuration::ServerConf {
        ca_file: Some(ca_file.as_str().to_owned()),
        ..Default::default()
    };
    let app = FailoverProxy::from_builder(engine)
        .unwrap()
        .into_app(&std::sync::Arc::new(conf))
        .unwrap();
    let proxy = support::ProxyServer::start(app).await;
    let http = client();
    // Requests reach it through TLS, trusted by the server's CA file; five 503s eject it.
    for _ in 0..5 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.text().await.unwrap(), "primary 503");
    }
    events
        .wait_until(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .await;
    primary.set_mode(Mode::Ok);
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    assert!(primary.probes() >= 1);
    assert_eq!(proxy.get_text(&http, "/").await, "primary");
}
