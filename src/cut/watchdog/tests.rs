//! The watchdog's tests: real sockets on loopback, watches armed on them, and peers whose
//! liveness checks fail at once.

use std::os::fd::AsRawFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::cut::watch::STILL_SENDING_MS;

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

fn ends(s: &TcpStream) -> (SocketAddr, SocketAddr) {
    (s.local_addr().unwrap(), s.peer_addr().unwrap())
}

fn arm(dog: &Watchdog, s: &TcpStream, peer: &Peer, ms: u64, may_cut: MayCut) -> Arc<Watch> {
    arm_paid(dog, s, peer, ms, may_cut, false)
}

/// A watch whose cut's retry is `free` of the budget, or paid for.
fn arm_paid(
    dog: &Watchdog,
    s: &TcpStream,
    peer: &Peer,
    ms: u64,
    may_cut: MayCut,
    free: bool,
) -> Arc<Watch> {
    let armed = Armed {
        ends: ends(s),
        peer,
        limit: Duration::from_millis(ms),
        may_cut,
        free,
        check_floor: CheckFloor::default(),
        h2: false,
        shared: false,
    };
    dog.handed(s.as_raw_fd(), Some(armed)).unwrap()
}

/// A peer whose liveness checks fail at once (nothing listens on its port).
fn dead_peer() -> Peer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Peer::builder(format!("127.0.0.1:{port}")).build().unwrap()
}

/// A dead peer with a request waiting on it (as the engine counts one).
fn dead_peer_waited_on() -> Peer {
    let peer = dead_peer();
    peer.health().begin_request();
    peer
}

fn dog(budget: Option<Arc<RetryBudget>>) -> Watchdog {
    Watchdog::new(budget, RecoveryProbe::connect())
}

/// Waits until `f` holds, for at most 5 s.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_request_sent_after_arming_is_not_taken_for_one_still_being_sent() {
    let (mut client, _server) = pair().await;
    let dog = dog(None);
    let peer = dead_peer();
    let fd = client.as_raw_fd();
    let base = sys::counters(fd);
    let since_ms = peer.health().now_ms();
    // A watch the thread never looks at, armed before its request went.
    let watch = Watch {
        state: AtomicU8::new(WAITING),
        fd,
        ends: ends(&client),
        peer: peer.clone(),
        since_ms,
        limit: Duration::from_millis(40),
        may_cut: MayCut::Never,
        free: false,
        check_floor: CheckFloor::default(),
        shared: false,
        from_start: base.is_some(),
        from: Mutex::new(base),
        last_sent: AtomicU64::new(NOT_LOOKED),
        undelivered: AtomicBool::new(false),
        on_check: AtomicBool::new(false),
        paid: Mutex::new(None),
    };
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    until(
        "the request went a while ago, and the wait is past its first look",
        || {
            sys::counters(fd).is_some_and(|c| u64::from(c.last_send_ms) >= STILL_SENDING_MS)
                && peer.health().now_ms() >= since_ms + 10
        },
    )
    .await;
    let now = Instant::now();
    assert_eq!(
        watch.check(now, &dog.shared),
        Some(now + evidence::CHECK_POLL),
        "the first look asks for a liveness check, not for the limit again"
    );
    // Nothing more was sent since: the second look does not take it for a sending either.
    assert_eq!(
        watch.check(now, &dog.shared),
        Some(now + evidence::CHECK_POLL)
    );
}

#[tokio::test]
async fn a_wait_on_a_peer_that_fails_its_check_is_cut_and_the_read_ends() {
    let (mut client, _server) = pair().await;
    let dog = dog(None);
    let peer = dead_peer();
    // Armed before the request goes, as the engine does.
    let watch = arm(&dog, &client, &peer, 30, MayCut::Always);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 8];
    let started = Instant::now();
    let n = client.read(&mut buf).await.unwrap();
    assert_eq!(n, 0, "the read ends as if the peer had closed");
    assert!(started.elapsed() >= Duration::from_millis(10));
    assert!(watch.fired());
    assert!(!watch.undelivered(), "the peer's kernel acknowledged it");
    assert!(watch.end(), "the attempt learns it was cut");
    assert!(watch.take_paid().is_some(), "with the retry it paid for");
}

#[tokio::test]
async fn a_wait_on_a_peer_alive_on_another_path_is_left_alone() {
    let (mut client, mut server) = pair().await;
    // The peer answers its liveness check: a listener that accepts.
    let alive = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = Peer::builder(alive.local_addr().unwrap().to_string())
        .build()
        .unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = alive.accept().await {
            drop(s);
        }
    });
    let dog = dog(None);
    let watch = arm(&dog, &client, &peer, 20, MayCut::Always);
    client
        .write_all(b"GET /report HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    until("checked", || {
        peer.health().suspicion().live_since(0, 0) == crate::cell::suspicion::Live::Passed
    })
    .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(
        !watch.fired(),
        "a slow request on a live peer keeps its timeout"
    );
    server.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    assert!(!watch.end());
}

#[tokio::test]
async fn an_answer_waiting_unread_is_never_cut() {
    let (mut client, mut server) = pair().await;
    let peer = dead_peer();
    let dog = dog(None);
    let watch = arm(&dog, &client, &peer, 20, MayCut::Always);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // The answer comes, and the proxy (stalled) does not read it.
    server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!watch.fired(), "the stall is the proxy's own");
    assert!(!peer.health().is_suspected());
}

#[tokio::test]
async fn a_connection_handed_to_the_next_request_ends_the_last_ones_wait() {
    let (client, _server) = pair().await;
    let dog = dog(None);
    let first = arm(&dog, &client, &dead_peer(), 10, MayCut::Always);
    // The next request (not watched) takes the connection.
    assert!(dog.handed(client.as_raw_fd(), None).is_none());
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(!first.fired());
    assert!(!first.end());
}

/// A budget with nothing to spend.
fn spent() -> Option<Arc<RetryBudget>> {
    Some(Arc::new(
        RetryBudget::new(0.0, 0, Duration::from_secs(1)).unwrap(),
    ))
}

/// `request` sent on a new connection that `dog` watches for `peer` (a 10 ms limit), its
/// cut's retry `free` or paid for: the watch, and the connection's two ends, kept open.
async fn send(
    dog: &Watchdog,
    peer: &Peer,
    request: &[u8],
    may_cut: MayCut,
    free: bool,
) -> (Arc<Watch>, TcpStream, TcpStream) {
    let (mut client, server) = pair().await;
    let watch = arm_paid(dog, &client, peer, 10, may_cut, free);
    client.write_all(request).await.unwrap();
    (watch, client, server)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

#[tokio::test]
async fn no_cut_without_a_retry_to_pay_for_or_when_the_request_may_not_move() {
    let dog = dog(spent());
    let peer = dead_peer_waited_on();
    let (watch, _client, _server) = send(&dog, &peer, GET, MayCut::Always, false).await;
    until("suspected", || {
        peer.health().is_suspected() || watch.fired()
    })
    .await;
    assert!(!watch.fired(), "the attempt keeps its full timeout");

    let dog = self::dog(None);
    let peer = dead_peer_waited_on();
    let post = b"POST / HTTP/1.1\r\n\r\n";
    let (watch, _client, _server) = send(&dog, &peer, post, MayCut::IfUndelivered, false).await;
    until("suspected", || {
        peer.health().is_suspected() || watch.fired()
    })
    .await;
    assert!(!watch.fired(), "a POST its peer received is never cut");
}

#[tokio::test]
async fn a_first_attempt_on_a_peer_that_broke_under_it_is_cut_free_and_later_ones_pay() {
    let dog = dog(spent());
    let peer = dead_peer_waited_on();
    let (watch, _client, _server) = send(&dog, &peer, GET, MayCut::Always, true).await;
    until("cut", || watch.fired()).await;
    assert!(watch.take_paid().is_some(), "with its free retry");
    // The next requests to that peer, known stuck by then, pay: the first takes the one
    // retry in the budget and is cut; the second, with nothing left to pay with, keeps its
    // full timeout.
    let stuck_ms = peer.health().now_ms();
    until("a later millisecond", || peer.health().now_ms() > stuck_ms).await;
    let one = Arc::new(
        // One retry a second, one at a time: one now, the next a second later.
        RetryBudget::new(0.0, 1, Duration::from_secs(1))
            .unwrap()
            .with_floor_burst(1),
    );
    assert_eq!(one.remaining(), 1);
    let dog = self::dog(Some(one.clone()));
    let (paid, _client, _server) = send(&dog, &peer, GET, MayCut::Always, true).await;
    until("cut", || paid.fired()).await;
    assert_eq!(
        one.remaining(),
        0,
        "a request sent to a peer known stuck pays"
    );
    let (unpaid, _client, _server) = send(&dog, &peer, GET, MayCut::Always, true).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!unpaid.fired(), "nothing left to pay with");
}

/// A first attempt on a peer that answered something while it waited pays (a pool
/// overloaded as a whole answers now and then): with nothing to pay with, no cut.
#[tokio::test]
async fn a_first_attempt_on_a_peer_that_answered_meanwhile_pays() {
    let dog = dog(spent());
    let peer = dead_peer_waited_on();
    let since_ms = peer.health().now_ms();
    let (mut client, _server) = pair().await;
    let watch = arm_paid(&dog, &client, &peer, 10, MayCut::Always, true);
    until("a later millisecond", || peer.health().now_ms() > since_ms).await;
    peer.health().suspicion().answered(peer.health().now_ms());
    client.write_all(GET).await.unwrap();
    until("stuck after its answer", || peer.health().is_suspected()).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !watch.fired(),
        "it answered while the request waited: the retry pays"
    );
}

#[tokio::test]
async fn the_thread_ends_with_its_engine() {
    let (client, _server) = pair().await;
    let dog = dog(None);
    let weak = Arc::downgrade(&dog.shared);
    let _watch = arm(&dog, &client, &dead_peer(), 1000, MayCut::Never);
    drop(dog);
    assert!(
        weak.upgrade().is_none(),
        "nothing but the engine holds the watchdog"
    );
}
