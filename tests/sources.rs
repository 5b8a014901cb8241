//! Peers on Unix domain sockets, and a peers file followed as it changes (and on SIGHUP).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_failover::{
    Feed, OrderedList, Peer, PeerSet, PeersFile, Source, SourceEvent, SourceService, StandardPolicy,
};
use support::{client, eventually, start_failover, Mode, TempPath, Upstream};

fn serve_unix(path: &TempPath, name: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(&path.0).unwrap();
    let app = axum::Router::new().fallback(move || async move { name });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_peer_serves_and_a_missing_one_fails_over() {
    let live = TempPath::new("live.sock");
    let missing = TempPath::new("missing.sock");
    let _server = serve_unix(&live, "unix");
    let peers = vec![
        Peer::new(&format!("unix:{}", missing.0.display())).unwrap(),
        Peer::new(&format!("unix:{}", live.0.display())).unwrap(),
    ];
    let (proxy, log) =
        start_failover(OrderedList::new(peers).unwrap(), StandardPolicy::default()).await;
    let resp = client()
        .post(proxy.url("/"))
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        "unix",
        "a POST: nothing was sent to the missing one"
    );
    let records = log.wait_for(1).await;
    assert!(matches!(
        records[0][0].outcome(),
        pingora_failover::Outcome::Failed { kind, .. } if kind.is_connect()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_file_is_followed_and_a_bad_one_keeps_the_old_set() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let path = TempPath::new("peers");
    std::fs::write(&path.0, format!("# pool\n{} weight=2\n", a.peer_addr())).unwrap();
    let reloads = Arc::new(Mutex::new(Vec::new()));
    let file = {
        let reloads = reloads.clone();
        PeersFile::new(&path.0)
            .with_interval(Duration::from_millis(20))
            .on_reload(move |r| reloads.lock().unwrap().push(r.clone()))
    };
    let set = PeerSet::new(file.load().unwrap()).unwrap();
    assert_eq!(set.snapshot()[0].weight(), 2);
    file.watch(&set).unwrap();
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "a");

    std::fs::write(&path.0, format!("{}\n{}\n", b.peer_addr(), a.peer_addr())).unwrap();
    proxy.until_answered_by("b").await;

    // A broken file: the set stays, and the reason is reported.
    std::fs::write(&path.0, "this is not a peer list, it is a longer line\n").unwrap();
    support::eventually("never reloaded", || {
        reloads.lock().unwrap().iter().any(|r| r.is_err())
    })
    .await;
    let error = reloads
        .lock()
        .unwrap()
        .iter()
        .find_map(|r| r.clone().err())
        .unwrap();
    assert!(error.to_string().contains("line 1"), "{error}");
    assert_eq!(set.snapshot().len(), 2);
    assert_eq!(proxy.get_text(&client(), "/").await, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_peers_file() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let path = TempPath::new("peers-hup");
    std::fs::write(&path.0, format!("{}\n", a.peer_addr())).unwrap();
    // Checked for changes only once an hour: the reload below is the signal's.
    let file = PeersFile::new(&path.0)
        .with_interval(Duration::from_secs(3600))
        .reload_on_sighup();
    let set = PeerSet::new(file.load().unwrap()).unwrap();
    file.watch(&set).unwrap();
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "a");

    std::fs::write(&path.0, format!("{}\n", b.peer_addr())).unwrap();
    // `watch` returned, so the handler is in place: the signal cannot end this process.
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    proxy.until_answered_by("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_that_panic_stop_neither_the_peers_file_nor_the_set() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let path = TempPath::new("peers-panic");
    std::fs::write(&path.0, format!("{}\n", a.peer_addr())).unwrap();
    let calls = Arc::new(Mutex::new(0));
    let file = {
        let calls = calls.clone();
        PeersFile::new(&path.0)
            .with_interval(Duration::from_millis(20))
            .on_reload(move |_| {
                *calls.lock().unwrap() += 1;
                panic!("a reload observer with a bug")
            })
    };
    let set = PeerSet::builder(file.load().unwrap())
        .on_change(|_| panic!("a change observer with a bug"))
        .build()
        .unwrap();
    file.watch(&set).unwrap();
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "a");

    // Each change panics both observers; the file is still followed after the first.
    std::fs::write(&path.0, format!("{}\n", b.peer_addr())).unwrap();
    proxy.until_answered_by("b").await;
    std::fs::write(&path.0, format!("{}\n{}\n", a.peer_addr(), b.peer_addr())).unwrap();
    proxy.until_answered_by("a").await;
    assert_eq!(set.snapshot().len(), 2);
    assert!(*calls.lock().unwrap() >= 2);
}

/// An h2c server on a Unix socket answering `status` (shared, to change it), counting the
/// background probes it receives.
fn serve_h2_unix(
    path: &TempPath,
    status: Arc<std::sync::atomic::AtomicU16>,
    probes: Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::UnixListener::bind(&path.0).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (status, probes) = (status.clone(), probes.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let ua = req.headers().get("user-agent");
                    if ua.is_some_and(|v| v.to_str().unwrap_or("").contains("recovery probe")) {
                        probes.fetch_add(1, Ordering::SeqCst);
                    }
                    let resp = axum::http::Response::builder()
                        .status(status.load(Ordering::SeqCst))
                        .body(())
                        .unwrap();
                    let _ = respond.send_response(resp, true);
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_peer_on_a_unix_socket_passes_its_probe() {
    use pingora_failover::{
        Failover, FailoverProxy, HealthChange, HttpVersion, OutlierDetection, RecoveryProbe,
    };
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

    let path = TempPath::new("h2.sock");
    let (status, probes) = (Arc::new(AtomicU16::new(503)), Arc::new(AtomicUsize::new(0)));
    let _server = serve_h2_unix(&path, status.clone(), probes.clone());
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = vec![
        Peer::builder(format!("unix:{}", path.0.display()))
            .with_http_version(HttpVersion::Http2)
            .build()
            .unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ];
    let events = support::Events::default();
    let rules = OutlierDetection::new()
        .with_base_ejection(Duration::from_millis(100))
        .with_recovery_probe(
            RecoveryProbe::default()
                .with_interval(Duration::from_millis(20))
                .unwrap(),
        );
    let engine = Failover::builder(OrderedList::new(peers).unwrap(), StandardPolicy::default())
        .with_outlier_detection(rules)
        .on_health_change(events.observer());
    let (proxy, _log) = support::start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    // Five 503s over h2 on the socket eject it.
    for _ in 0..5 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
    }
    events
        .wait_until(|(_, c)| matches!(c, HealthChange::Ejected { .. }))
        .await;
    status.store(200, Ordering::SeqCst);
    events
        .wait_until(|(_, c)| *c == HealthChange::Readmitted)
        .await;
    assert!(probes.load(Ordering::SeqCst) >= 1);
}

/// A source of the test's own: its first run takes `a` and panics; its second offers an empty
/// list (refused: the set keeps `a`), then takes `b`, and waits for the stop.
struct Scripted {
    runs: std::sync::atomic::AtomicUsize,
    a: String,
    b: String,
}

#[pingora_failover::pingora::async_trait]
impl Source for Scripted {
    async fn run(&self, feed: &Feed) {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if run == 0 {
            feed.replace(vec![Peer::new(&self.a).unwrap()], Some(1))
                .unwrap();
            panic!("a source with a bug");
        }
        assert!(feed.replace(Vec::new(), Some(2)).is_err());
        // The set kept what the first run gave it (a failed check here panics: a third failure).
        let kept = feed.set().unwrap().snapshot()[0].name().to_owned();
        assert_eq!(kept, self.a);
        feed.replace(vec![Peer::new(&self.b).unwrap()], Some(3))
            .unwrap();
        feed.stopped().await;
    }
}

/// The contract, run as pingora runs a background service: a panicking source is run again, a
/// refused list keeps the last good set, a panicking observer is caught, every update and
/// failure is in the source's state and events, and the service ends at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_panics_or_sends_no_peers_keeps_the_last_good_set() {
    use pingora_core::services::background::BackgroundService;
    let (a, b) = (
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
    );
    let set = PeerSet::new(vec![Peer::new(&b.peer_addr()).unwrap()]).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let source = Scripted {
        runs: Default::default(),
        a: a.peer_addr(),
        b: b.peer_addr(),
    };
    let service = SourceService::new("scripted", source, &set).on_event(move |name, e| {
        seen.lock().unwrap().push((name.to_owned(), e.clone()));
        panic!("an observer with a bug");
    });
    #[cfg(feature = "metrics")]
    let registry = prometheus::Registry::new();
    #[cfg(feature = "metrics")]
    let service = service.with_metrics(&pingora_failover::Metrics::register(&registry).unwrap());
    let status = service.state();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { service.start(shutdown).await });
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;

    eventually("the second run", || status.get().revision == Some(3)).await;
    proxy.until_answered_by("b").await;
    let state = status.get();
    assert_eq!((state.updates, state.failures), (2, 2), "{state:?}");
    let events = events.lock().unwrap().clone();
    let failures: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| match e {
            SourceEvent::Failed { error } => Some(error.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        failures[0].contains("panicked: a source with a bug"),
        "{failures:?}"
    );
    assert!(failures[1].contains("no peers"), "{failures:?}");
    assert!(events.iter().all(|(name, _)| name == "scripted"));
    #[cfg(feature = "metrics")]
    {
        let text = support::metrics_text(&registry);
        for line in [
            "failover_source_updates_total{source=\"scripted\"} 2",
            "failover_source_failures_total{source=\"scripted\"} 2",
            "failover_source_revision{source=\"scripted\"} 3",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the service did not stop")
        .unwrap();
}
