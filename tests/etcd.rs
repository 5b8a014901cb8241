//! Peers from a real etcd (feature `etcd`): changes under load, etcd killed and restarted, a
//! compaction past the watch's start, bad values, and 5,000 peers under one prefix.
#![cfg(feature = "etcd")]

mod support;
#[path = "support/etcd.rs"]
mod test_etcd;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora_failover::discovery::etcd::Etcd;
use pingora_failover::{
    ConfigError, PeerSet, RoundRobin, SourceEvent, SourceService, SourceStatus, StandardPolicy,
};
use support::{client, eventually, start_failover, Mode, Upstream};
use test_etcd::TestEtcd;

const PREFIX: &str = "/services/api/";

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// The set's peers, by address.
fn names(set: &PeerSet) -> BTreeSet<String> {
    set.snapshot().iter().map(|p| p.name().to_owned()).collect()
}

type Events = Arc<Mutex<Vec<SourceEvent>>>;

/// The set of the peers under the prefix now, kept in step by the source on a thread, with its
/// events recorded.
async fn followed(source: &Etcd) -> (PeerSet, SourceStatus, Events) {
    let set = source.load_set().await.unwrap();
    let events = Events::default();
    let seen = events.clone();
    let status = SourceService::new("etcd", source.clone(), &set)
        .on_event(move |_, e| seen.lock().unwrap().push(e.clone()))
        .spawn()
        .unwrap();
    (set, status, events)
}

async fn until_peers(set: &PeerSet, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(&format!("the set never became {want:?}"), || {
        names(set) == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_deletes_and_weights_under_load_lose_no_request() {
    let etcd = TestEtcd::start().await;
    let ups = [
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start("c", Mode::Ok).await,
        Upstream::start("d", Mode::Ok).await,
    ];
    let addr = |i: usize| ups[i].peer_addr();
    etcd.put(&key("a"), &addr(0)).await;
    etcd.put(&key("b"), &addr(1)).await;
    let source = Etcd::new(&etcd.url(), PREFIX).unwrap();
    let (set, status, _) = followed(&source).await;
    assert_eq!(names(&set), BTreeSet::from([addr(0), addr(1)]));
    let (proxy, _log) =
        start_failover(RoundRobin::from_set(set.clone()), StandardPolicy::default()).await;

    // Eight clients, GETs and POSTs with ids, while the prefix changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(HashMap::<(bool, u16), usize>::new()));
    let mut load = Vec::new();
    for c in 0..8 {
        let (http, url, stop, statuses) =
            (client(), proxy.url("/"), stop.clone(), statuses.clone());
        load.push(tokio::spawn(async move {
            for n in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let post = n % 2 == 1;
                let req = if post {
                    http.post(&url)
                        .header("x-request-id", format!("{c}-{n}"))
                        .body("order")
                } else {
                    http.get(&url)
                };
                let status = req.send().await.unwrap().status().as_u16();
                *statuses.lock().unwrap().entry((post, status)).or_default() += 1;
            }
        }));
    }
    // Sixty changes, one every 20 ms: peers join, leave, and change weight; a and b never
    // leave together.
    let weighted = |i: usize, w: u32| format!(r#"{{"addr": "{}", "weight": {w}}}"#, addr(i));
    for round in 0..10u32 {
        etcd.put(&key("c"), &addr(2)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        etcd.put(&key("b"), &weighted(1, 1 + round % 3)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        etcd.delete(&key("a")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        etcd.put(&key("d"), &weighted(3, 2)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        etcd.put(&key("a"), &addr(0)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        etcd.delete(&key("c")).await;
        etcd.delete(&key("d")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = etcd.put(&key("d"), &weighted(3, 5)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let statuses = statuses.lock().unwrap().clone();
    let total: usize = statuses.values().sum();
    println!("{total} requests by (post, status): {statuses:?}");
    assert!(total > 200, "too little load to show anything: {total}");
    assert!(
        statuses.keys().all(|(_, s)| *s == 200),
        "a request failed: {statuses:?}"
    );
    let mut arrivals: HashMap<String, usize> = HashMap::new();
    for u in &ups {
        for (id, n) in u.ids() {
            *arrivals.entry(id).or_default() += n;
        }
    }
    assert!(arrivals.values().all(|n| *n == 1), "a POST arrived twice");
    for (i, u) in ups.iter().enumerate() {
        assert!(u.hits() > 0, "upstream {i} never served");
    }
    // The set ends as etcd does, at its last revision, with d's last weight.
    until_peers(&set, &[&addr(0), &addr(1), &addr(3)]).await;
    eventually("the source's revision", || {
        status.get().revision == Some(last)
    })
    .await;
    let d = set.snapshot().iter().find(|p| p.name() == addr(3)).cloned();
    assert_eq!(d.map(|p| p.weight()), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_set_and_a_restart_resumes() {
    let mut etcd = TestEtcd::start().await;
    let (a, b) = (
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
    );
    etcd.put(&key("a"), &a.peer_addr()).await;
    let source = Etcd::new(&etcd.url(), PREFIX).unwrap();
    let (set, status, events) = followed(&source).await;
    let (proxy, _log) =
        start_failover(RoundRobin::from_set(set.clone()), StandardPolicy::default()).await;

    etcd.kill();
    eventually("the source saw etcd go", || status.get().failures > 0).await;
    // The set holds: every request is served by the peer etcd last gave.
    let http = client();
    for _ in 0..20 {
        let r = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "a");
    }
    assert_eq!(names(&set), BTreeSet::from([a.peer_addr()]));
    assert!(status.get().last_error.is_some());

    // etcd back: the source reads again, and follows the next change.
    etcd.run().await;
    etcd.put(&key("b"), &b.peer_addr()).await;
    until_peers(&set, &[&a.peer_addr(), &b.peer_addr()]).await;
    let mut served = BTreeSet::new();
    for _ in 0..10 {
        served.insert(proxy.get_text(&http, "/").await);
    }
    assert_eq!(served, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    let failed = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, SourceEvent::Failed { .. }))
        .count();
    assert!(failed > 0, "no failure was reported");
}

/// A relay in front of etcd that holds every watch request until it is opened: the test can
/// compact etcd between the source's read and its watch.
struct WatchGate {
    addr: std::net::SocketAddr,
    open: Arc<tokio::sync::Notify>,
    opened: Arc<AtomicBool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl WatchGate {
    async fn start(to: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(tokio::sync::Notify::new());
        let opened = Arc::new(AtomicBool::new(false));
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, oo, h) = (open.clone(), opened.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let (o, oo, h) = (o.clone(), oo.clone(), h.clone());
                tokio::spawn(async move {
                    let mut first = vec![0u8; 65536];
                    let Ok(n) = down.read(&mut first).await else {
                        return;
                    };
                    first.truncate(n);
                    if first.starts_with(b"POST /v3/watch") && !oo.load(Ordering::SeqCst) {
                        h.fetch_add(1, Ordering::SeqCst);
                        let notified = o.notified();
                        if !oo.load(Ordering::SeqCst) {
                            notified.await;
                        }
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    if up.write_all(&first).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        Self {
            addr,
            open,
            opened,
            held,
        }
    }

    fn open(&self) {
        self.opened.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_past_the_watch_start_reads_everything_again() {
    let etcd = TestEtcd::start().await;
    let (a, b, c) = (
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start("c", Mode::Ok).await,
    );
    etcd.put(&key("a"), &a.peer_addr()).await;
    let gate = WatchGate::start(etcd.client_port).await;
    let source = Etcd::new(&format!("http://{}", gate.addr), PREFIX).unwrap();
    let (set, status, events) = followed(&source).await;
    // The source has read revision R and asked for a watch from R + 1, which the gate holds.
    eventually("the watch request", || gate.held.load(Ordering::SeqCst) > 0).await;
    etcd.put(&key("b"), &b.peer_addr()).await;
    let revision = etcd.put(&key("c"), &c.peer_addr()).await;
    etcd.compact(revision).await;
    gate.open();

    // The watch from R + 1 is refused as compacted; the source reads everything again.
    until_peers(&set, &[&a.peer_addr(), &b.peer_addr(), &c.peer_addr()]).await;
    let compacted = events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, SourceEvent::Failed { error } if error.contains("compaction")));
    assert!(compacted, "{:?}", events.lock().unwrap());
    eventually("the source's revision", || {
        status.get().revision >= Some(revision)
    })
    .await;
    // And it watches on from there.
    etcd.delete(&key("b")).await;
    until_peers(&set, &[&a.peer_addr(), &c.peer_addr()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_value_is_skipped_reported_and_taken_once_fixed() {
    let etcd = TestEtcd::start().await;
    let (a, b) = (
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
    );
    etcd.put(&key("a"), &a.peer_addr()).await;
    etcd.put(&key("broken"), "{\"addr\": ").await;
    etcd.put(
        &key("zero"),
        &format!(r#"{{"addr": "{}", "weight": 0}}"#, b.peer_addr()),
    )
    .await;
    let source = Etcd::new(&etcd.url(), PREFIX).unwrap();
    // The first read leaves the bad keys out, whatever reads it.
    let (set, _status, events) = followed(&source).await;
    assert_eq!(names(&set), BTreeSet::from([a.peer_addr()]));
    eventually("both bad keys reported", || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, SourceEvent::Skipped { .. }))
            .count()
            >= 2
    })
    .await;
    let skipped: Vec<(String, ConfigError)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Skipped { entry, error } => Some((entry.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert!(skipped
        .iter()
        .any(|(k, e)| *k == key("broken") && matches!(e, ConfigError::InvalidEntry { .. })));
    assert!(skipped
        .iter()
        .any(|(k, e)| *k == key("zero") && matches!(e, ConfigError::ZeroWeight { .. })));

    // A bad value put while watching is skipped too; fixed, the peer joins.
    etcd.put(&key("zero"), "not an address").await;
    etcd.put(&key("a"), &a.peer_addr()).await;
    eventually("the watched bad value reported", || {
        events.lock().unwrap().iter().any(|e| {
            matches!(
                e,
                SourceEvent::Skipped {
                    error: ConfigError::InvalidAddress { .. },
                    ..
                }
            )
        })
    })
    .await;
    assert_eq!(names(&set), BTreeSet::from([a.peer_addr()]));
    etcd.put(&key("zero"), &b.peer_addr()).await;
    until_peers(&set, &[&a.peer_addr(), &b.peer_addr()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_peers_under_one_prefix() {
    let etcd = TestEtcd::start().await;
    // 5,000 addresses on loopback: 127.1.X.Y:80. Nothing is sent to them.
    let addr = |i: u32| format!("127.1.{}.{}:80", i / 250, 1 + i % 250);
    let pairs: Vec<(String, String)> = (0..5_000)
        .map(|i| (key(&format!("{i:05}")), addr(i)))
        .collect();
    for chunk in pairs.chunks(128) {
        etcd.put_all(chunk).await;
    }
    let source = Etcd::new(&etcd.url(), PREFIX).unwrap();
    let started = Instant::now();
    let (set, status, _) = followed(&source).await;
    println!("5,000 peers read in {:?}", started.elapsed());
    assert_eq!(set.snapshot().len(), 5_000);
    // In key order.
    assert_eq!(set.snapshot()[4_999].name(), addr(4_999));
    let revision = etcd.put(&key("05000"), "127.2.0.1:80").await;
    eventually("the 5,001st peer", || set.snapshot().len() == 5_001).await;
    eventually("the source's revision", || {
        status.get().revision == Some(revision)
    })
    .await;
}
