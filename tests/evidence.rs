//! Evidence before a cut: with the defaults, a request that is slow by nature runs once, on one
//! peer, at any concurrency; open WebSocket tunnels never make their peer look silent; a peer
//! that really stopped answering is still left within about 100 ms.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use pingora_failover::{
    Failover, FailoverProxy, FailureKind, OrderedList, Outcome, Peer, RoundRobin, StandardPolicy,
};
use support::{client, start_proxy, upgrading_upstream, Mode, Proto, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ: Duration = Duration::from_secs(3);

fn peer(addr: &str) -> Peer {
    Peer::builder(addr).with_read_timeout(READ).build().unwrap()
}

/// A primary and a backup, both answering at once, and an ordered list of the two.
async fn primary_and_backup() -> (Upstream, Upstream, OrderedList) {
    let primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list =
        OrderedList::new(vec![peer(&primary.peer_addr()), peer(&backup.peer_addr())]).unwrap();
    (primary, backup, list)
}

/// A report through `proxy`: a GET that takes 300 ms by nature, with the id `id`.
async fn report(
    http: &reqwest::Client,
    proxy: &support::ProxyServer,
    id: &str,
) -> reqwest::Response {
    http.get(proxy.url("/report"))
        .header("x-delay-ms", "300")
        .header("x-request-id", id)
        .send()
        .await
        .unwrap()
}

/// `clients` clients, each sending 9 fast GETs and then one report (a GET that takes 300 ms by
/// nature, with an id of its own), `rounds` times, through an ordered list of a primary and an
/// identical backup. How many reports ran on the backup, and how many ids ran more than once.
async fn reports(clients: usize, rounds: usize) -> (usize, usize, Upstream) {
    let (primary, backup, list) = primary_and_backup().await;
    let (proxy, log) =
        start_proxy(FailoverProxy::new(list, StandardPolicy::default()).unwrap()).await;
    let http = client();
    join_all((0..clients).map(|c| {
        let (http, proxy, log) = (http.clone(), &proxy, &log);
        async move {
            for round in 0..rounds {
                for _ in 0..9 {
                    let resp = http.get(proxy.url("/fast")).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                }
                let resp = report(&http, proxy, &format!("report-{c}-{round}")).await;
                assert_eq!(resp.status(), 200);
                let by = resp.text().await.unwrap();
                if by != "primary" {
                    let records = log.wait_for(1).await;
                    let moved: Vec<_> = records.iter().filter(|r| r.len() > 1).collect();
                    panic!("answered by {by}: {moved:#?}");
                }
            }
        }
    }))
    .await;
    let on_backup = backup.ids().len();
    let twice = primary
        .ids()
        .iter()
        .filter(|(id, n)| **n > 1 || backup.ids().contains_key(*id))
        .count();
    assert_eq!(
        primary.ids().len(),
        clients * rounds,
        "every report reached the primary"
    );
    (on_backup, twice, primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimately_slow_get_runs_once_with_one_client() {
    let (on_backup, twice, _primary) = reports(1, 8).await;
    assert_eq!((on_backup, twice), (0, 0), "reports ran on the backup too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimately_slow_get_runs_once_with_four_clients() {
    let (on_backup, twice, _primary) = reports(4, 4).await;
    assert_eq!((on_backup, twice), (0, 0), "reports ran on the backup too");
}

/// Peers that work on one request at a time (a server of one worker, or a pool whose workers
/// are all busy with slow requests) leave their liveness checks waiting behind a report, and
/// look stuck: the first report, of a kind not seen before, is cut on the primary and runs on
/// the backup. It is cut once: the backup, as busy with it and as silent to its check, is left
/// to answer, so no report runs a third time or twice on one peer, and with its time learned
/// the next reports run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_on_peers_of_one_worker_is_cut_once_at_most() {
    let (primary, backup, list) = primary_and_backup().await;
    primary.one_at_a_time();
    backup.one_at_a_time();
    let (proxy, _log) =
        start_proxy(FailoverProxy::new(list, StandardPolicy::default()).unwrap()).await;
    let http = client();
    let ids: Vec<String> = (0..3).map(|round| format!("report-{round}")).collect();
    for id in &ids {
        for _ in 0..9 {
            let resp = http.get(proxy.url("/fast")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(report(&http, &proxy, id).await.status(), 200);
    }
    let (on_primary, on_backup) = (primary.ids(), backup.ids());
    let runs = |id: &String| {
        let (p, b) = (on_primary.get(id), on_backup.get(id));
        (p.copied().unwrap_or(0), b.copied().unwrap_or(0))
    };
    let all: Vec<_> = ids.iter().map(|id| (id, runs(id))).collect();
    assert!(
        all.iter().all(|(_, (p, b))| *p <= 1 && *b <= 1),
        "a report ran twice on one peer (primary, backup): {all:?}"
    );
    assert!(
        all[1..].iter().all(|(_, (p, b))| p + b == 1),
        "a later report ran on both peers (primary, backup): {all:?}"
    );
}

/// A peer slower than its route at everything from the start: nothing learned of its own, so its
/// limit is borrowed from the route's answers on the fast peer, and its liveness check answers in
/// 100 ms like everything it does, later than half that limit (it is given 1 s, having answered
/// nothing yet). It is slow, not stuck: each GET runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_slower_than_its_route_from_the_start_runs_each_get_once() {
    let fast = Upstream::start("fast", Mode::Ok).await;
    let slow = Upstream::start("slow", Mode::Slow(Duration::from_millis(100))).await;
    let peers = vec![peer(&fast.peer_addr()), peer(&slow.peer_addr())];
    let list = RoundRobin::new(peers).unwrap();
    let (proxy, _log) =
        start_proxy(FailoverProxy::new(list, StandardPolicy::default()).unwrap()).await;
    let http = client();
    join_all((0..4).map(|c| {
        let (http, proxy) = (http.clone(), &proxy);
        async move {
            for i in 0..6 {
                let resp = http
                    .get(proxy.url("/"))
                    .header("x-request-id", format!("get-{c}-{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }
    }))
    .await;
    let (on_fast, on_slow) = (fast.ids(), slow.ids());
    let twice: Vec<_> = on_slow
        .iter()
        .filter(|(id, n)| **n > 1 || on_fast.contains_key(*id))
        .collect();
    assert!(twice.is_empty(), "ran on both peers: {twice:?}");
    assert_eq!(on_fast.len() + on_slow.len(), 24);
}

/// Opens a WebSocket tunnel through the proxy at `addr`, and reads its 101.
async fn tunnel(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    s
}

/// Opens tunnels through the proxy at `addr` until each of `peers` holds `each` open. (Pingora
/// 0.9.1 ends some upgraded sessions right after their 101; those are opened again.)
async fn tunnels(addr: std::net::SocketAddr, peers: &[&Peer], each: u32) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..50 {
        if peers.iter().all(|p| p.health().in_flight() >= each) {
            break;
        }
        open.push(tunnel(addr).await);
        // The proxy has finished with the 101 once it reached the client: a session that ends
        // at once has ended by the time the next tunnel is asked for.
        tokio::task::yield_now().await;
    }
    support::eventually("the tunnels open", || {
        peers.iter().all(|p| p.health().in_flight() >= each)
    })
    .await;
    open
}

/// Two quiet tunnels are not two requests waiting for a header: their peer keeps taking GETs,
/// in an ordered list and in a round-robin pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_never_make_their_peer_refuse_requests() {
    let (primary, _) = upgrading_upstream(None).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let p = peer(&primary.to_string());
    let list = OrderedList::new(vec![p.clone(), peer(&backup.peer_addr())]).unwrap();
    let (proxy, _log) =
        start_proxy(FailoverProxy::new(list, StandardPolicy::default()).unwrap()).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(proxy.get_text(&http, "/").await, "ok");
    }
    let _tunnels = tunnels(proxy.addr, &[&p], 2).await;
    // Quiet for several times the cut's floor and suspicion's.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(p.health().in_flight() >= 2, "the tunnels are open");
    assert!(!p.health().is_suspected());
    for _ in 0..10 {
        assert_eq!(
            proxy.get_text(&http, "/").await,
            "ok",
            "the primary answers"
        );
    }
    assert_eq!(backup.hits(), 0);

    // Three round-robin peers with two tunnels each: new GETs still go round.
    let ups = [
        upgrading_upstream(None).await,
        upgrading_upstream(None).await,
        upgrading_upstream(None).await,
    ];
    let peers: Vec<Peer> = ups.iter().map(|(a, _)| peer(&a.to_string())).collect();
    let rr = RoundRobin::new(peers.clone()).unwrap();
    let (proxy, _log) =
        start_proxy(FailoverProxy::new(rr, StandardPolicy::default()).unwrap()).await;
    for _ in 0..30 {
        assert_eq!(proxy.get_text(&http, "/").await, "ok");
    }
    let peer_refs: Vec<&Peer> = peers.iter().collect();
    let _tunnels = tunnels(proxy.addr, &peer_refs, 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(peers.iter().all(|p| !p.health().is_suspected()));
    let before: Vec<usize> = ups.iter().map(|(_, n)| n.load(Ordering::SeqCst)).collect();
    for _ in 0..9 {
        assert_eq!(proxy.get_text(&http, "/").await, "ok");
    }
    let firsts: Vec<usize> = ups
        .iter()
        .zip(before)
        .map(|((_, n), b)| n.load(Ordering::SeqCst) - b)
        .collect();
    assert_eq!(firsts, vec![3, 3, 3], "round-robin goes round");
}

/// A peer that stops answering altogether (its application hangs; its kernel still accepts and
/// acknowledges) is left within about 100 ms: its liveness check goes unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_is_still_left_within_about_100_ms() {
    let (primary, _backup, list) = primary_and_backup().await;
    let engine = Failover::builder(list, StandardPolicy::default());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(proxy.get_text(&http, "/").await, "primary");
    }
    primary.set_mode(Mode::Hang);
    assert_eq!(proxy.get_text(&http, "/").await, "backup");
    let records = log.wait_for(21).await;
    assert_eq!(records[20].len(), 2, "{:?}", records[20]);
    let cut = records[20][0].duration().unwrap();
    // Cut, not timed out: the floor is 50 ms (the onset bench measures it).
    assert!(cut < READ / 2, "cut after {cut:?}");
}

/// A peer whose liveness check answers at once with a status the probe does not pass (a `/`
/// the service does not serve) is alive: its legitimately slow GET runs once, on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_its_check_with_a_failing_status_is_alive() {
    let (_primary, backup, list) = primary_and_backup().await;
    // The upstream answers the probe's `GET /` with 200, which this probe does not pass.
    let probe = pingora_failover::RecoveryProbe::default()
        .with_passing_statuses([204])
        .unwrap();
    let rules = pingora_failover::OutlierDetection::default().with_recovery_probe(probe);
    let engine = Failover::builder(list, StandardPolicy::default()).with_outlier_detection(rules);
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(proxy.get_text(&http, "/fast").await, "primary");
    }
    let resp = report(&http, &proxy, "report").await;
    assert_eq!(resp.text().await.unwrap(), "primary");
    let records = log.wait_for(21).await;
    assert_eq!(records[20].len(), 1, "{:?}", records[20]);
    assert_eq!(backup.ids().get("report"), None, "it ran on the backup too");
}

/// Drops every packet to `port` on loopback while it lives (iptables, as root): a blackholed
/// upstream, whose kernel acknowledges nothing.
struct Blackholed {
    port: u16,
}

impl Blackholed {
    /// `None` where iptables cannot be used (not root, or not installed).
    fn on(port: u16) -> Option<Self> {
        let ok = std::process::Command::new("iptables")
            .arg("-w")
            .args(Self::rule("-I", port))
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { port })
    }

    fn rule(op: &str, port: u16) -> Vec<String> {
        [
            op,
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

impl Drop for Blackholed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .arg("-w")
            .args(Self::rule("-D", self.port))
            .status();
    }
}

/// Whether iptables cannot be used here (not root, or not installed), said on stderr: the test
/// that asks then checks nothing.
fn skipped_without_iptables() -> bool {
    let usable = std::process::Command::new("iptables")
        .args(["-L", "INPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!("skipped: iptables is not usable here (needs root and the iptables package)");
    }
    !usable
}

/// With `with_undelivered_retry`, a POST caught on a blackholed primary (its kernel acknowledges
/// none of it) moves to the backup within about 100 ms, and arrives exactly once, also when the
/// blackhole heals right after the cut: the cut aborted the connection, so the kernel never
/// delivers the old copy. A GET moves the same way. Needs root and iptables (`make test`
/// installs it); elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_never_delivered_moves_once_and_the_healed_peer_never_sees_it() {
    post_never_delivered(Proto::H1).await;
}

/// The same on an HTTP/2 peer that carries one stream per connection (pingora's default): the
/// abort ends this request alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_post_never_delivered_moves_once_and_the_healed_peer_never_sees_it() {
    post_never_delivered(Proto::H2c).await;
}

async fn post_never_delivered(proto: Proto) {
    if skipped_without_iptables() {
        return;
    }
    let primary = Upstream::start_with("primary", Mode::Ok, proto.clone()).await;
    let backup = Upstream::start_with("backup", Mode::Ok, proto).await;
    let peer = |u: &Upstream| u.peer_builder().with_read_timeout(READ).build().unwrap();
    let list = OrderedList::new(vec![peer(&primary), peer(&backup)]).unwrap();
    let adaptive = pingora_failover::AdaptiveTimeouts::new().with_undelivered_retry();
    let engine =
        Failover::builder(list, StandardPolicy::default()).with_adaptive_timeouts(adaptive);
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for i in 0..20 {
        let resp = http
            .post(proxy.url("/order"))
            .header("x-request-id", format!("warm-{i}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    let blackhole = Blackholed::on(primary.addr.port()).expect("iptables rule");
    let started = std::time::Instant::now();
    let resp = http
        .post(proxy.url("/order"))
        .header("x-request-id", "moved")
        .body("x")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = resp.status();
    let get = http
        .get(proxy.url("/"))
        .header("x-request-id", "get")
        .send()
        .await
        .unwrap();
    // Healed at once: anything the kernel still held for the primary would now arrive.
    drop(blackhole);
    assert_eq!(
        (status.as_u16(), resp.text().await.unwrap().as_str()),
        (200, "backup"),
        "after {took:?}: {:?}",
        log.wait_for(21).await[20]
    );
    // Moved, not timed out (the onset bench measures how soon).
    assert!(took < READ / 2, "moved after {took:?}");
    assert_eq!(get.text().await.unwrap(), "backup");
    // Longer than the retransmission the abort stopped would take to arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backup.ids().get("moved"), Some(&1));
    assert_eq!(primary.ids().get("moved"), None, "the primary got it too");
    let records = log.wait_for(21).await;
    assert_eq!(records[20].len(), 2, "{:?}", records[20]);
}

/// Two peers cut off at once (a partition: their kernels acknowledge nothing) still cost a GET
/// two cuts, not a read timeout: after a cut on a liveness check, a request's later attempts
/// are not cut on a check again, but are on the transport's proof that their peer is
/// unreachable (or their connect is abandoned), so the third peer answers it. Needs root and
/// iptables; elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_caught_by_two_peers_cut_off_at_once_reaches_the_third() {
    if skipped_without_iptables() {
        return;
    }
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let c = Upstream::start("c", Mode::Ok).await;
    // Round-robin, so that every peer has a connection open and its times learned.
    let list = RoundRobin::new(vec![
        peer(&a.peer_addr()),
        peer(&b.peer_addr()),
        peer(&c.peer_addr()),
    ])
    .unwrap();
    let (proxy, log) =
        start_proxy(FailoverProxy::new(list, StandardPolicy::default()).unwrap()).await;
    let http = client();
    for _ in 0..21 {
        proxy.get_text(&http, "/").await;
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (7, 7, 7));
    let cut_off = (
        Blackholed::on(a.addr.port()).expect("iptables rule"),
        Blackholed::on(b.addr.port()).expect("iptables rule"),
    );
    let started = std::time::Instant::now();
    let answer = proxy.get_text(&http, "/").await;
    let took = started.elapsed();
    drop(cut_off);
    let records = log.wait_for(22).await;
    let r = &records[21];
    assert_eq!(answer, "c", "after {took:?}: {r:?}");
    // Both cut off peers tried, each cut on its open connection, not timed out.
    assert_eq!(r.len(), 3, "{r:?}");
    for cut in &r[..2] {
        assert!(
            matches!(
                cut.outcome(),
                Outcome::Failed {
                    kind: FailureKind::HeaderTimeout,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    assert!(took < READ / 2, "answered after {took:?}: {r:?}");
}

/// An h2c primary and an identical backup behind an ordered list with the defaults, each
/// allowing `streams` at once per connection, after 20 GETs the primary answered (its
/// connection open, its times learned).
async fn h2c_pair_warmed(
    streams: usize,
) -> (
    Upstream,
    Upstream,
    support::ProxyServer,
    support::RequestLog,
) {
    let primary = Upstream::start_with("primary", Mode::Ok, Proto::H2c).await;
    let backup = Upstream::start_with("backup", Mode::Ok, Proto::H2c).await;
    let h2 = |u: &Upstream| {
        u.peer_builder()
            .with_read_timeout(READ)
            .with_http_peer(move |p| p.options.max_h2_streams = streams)
            .build()
            .unwrap()
    };
    let list = OrderedList::new(vec![h2(&primary), h2(&backup)]).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(proxy.get_text(&http, "/").await, "primary");
    }
    (primary, backup, proxy, log)
}

/// An HTTP/2 peer blackholed (its kernel acknowledges nothing) is left long before the read
/// timeout. With one stream per connection (pingora's default), the request is judged as on
/// HTTP/1: a liveness check that cannot connect shows the peer stuck. Needs root and iptables;
/// elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_peer_blackholed_is_left_long_before_its_read_timeout() {
    if skipped_without_iptables() {
        return;
    }
    let (primary, backup, proxy, log) = h2c_pair_warmed(1).await;
    let http = client();
    let blackhole = Blackholed::on(primary.addr.port()).expect("iptables rule");
    let started = std::time::Instant::now();
    let answer = proxy.get_text(&http, "/").await;
    let took = started.elapsed();
    drop(blackhole);
    assert_eq!(answer, "backup", "after {took:?}");
    assert_eq!(backup.hits(), 1);
    let records = log.wait_for(21).await;
    assert_eq!(records[20].len(), 2, "{:?}", records[20]);
    // Cut, not timed out: a lone segment is first retransmitted after about 200 ms.
    assert!(took < READ / 2, "moved after {took:?}: {:?}", records[20]);
}

/// On an HTTP/2 peer that allows several streams per connection, the cut ends every stream on
/// the connection, so only the transport may show the peer stuck (a retransmission left
/// unanswered). Two GETs waiting on the same connection when the peer is blackholed both move,
/// each once. Needs root and iptables; elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sharing_a_blackholed_h2_connection_all_move_once() {
    if skipped_without_iptables() {
        return;
    }
    let (primary, backup, proxy, log) = h2c_pair_warmed(8).await;
    let http = client();
    let blackhole = Blackholed::on(primary.addr.port()).expect("iptables rule");
    let (a, b) = tokio::join!(proxy.get_text(&http, "/"), proxy.get_text(&http, "/"));
    drop(blackhole);
    assert_eq!((a.as_str(), b.as_str()), ("backup", "backup"));
    assert_eq!(backup.hits(), 2);
    let records = log.wait_for(22).await;
    // One waited on the open connection and was cut; the other was cut with it, or saw its
    // connection closed under it, or (pingora may miss a pooled connection it could have
    // shared) opened a new one, whose connect was abandoned.
    let kinds: Vec<_> = records[20..]
        .iter()
        .map(|r| {
            assert_eq!(r.len(), 2, "{r:?}");
            match r[0].outcome() {
                Outcome::Failed { kind, .. } => kind,
                other => panic!("{other:?}: {r:?}"),
            }
        })
        .collect();
    assert!(kinds.contains(&FailureKind::HeaderTimeout), "{kinds:?}");
    assert!(
        kinds.iter().all(|k| matches!(
            k,
            FailureKind::HeaderTimeout
                | FailureKind::ReusedConnectionClosed
                | FailureKind::ConnectTimeout
        )),
        "{kinds:?}"
    );
}

/// A slow answer on a live HTTP/2 peer is never cut, though its connection is watched, whether
/// the connection carries one stream at a time (the peer answers its liveness check) or
/// several (only an unreachable peer justifies ending a connection that carries others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_on_a_live_h2_peer_runs_once() {
    for streams in [1, 8] {
        let (_primary, backup, proxy, log) = h2c_pair_warmed(streams).await;
        let http = client();
        // A report: far more than what the peer took so far, and than the cut's 50 ms floor,
        // while the peer answers its liveness check at once.
        let resp = report(&http, &proxy, "report").await;
        assert_eq!(resp.text().await.unwrap(), "primary", "{streams} streams");
        let records = log.wait_for(21).await;
        assert_eq!(records[20].len(), 1, "{streams} streams: {:?}", records[20]);
        assert_eq!(backup.hits(), 0, "{streams} streams");
    }
}
