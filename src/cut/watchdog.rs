//! The watchdog: each attempt's wait for its response header is watched on its connection, and
//! cut when the evidence shows its peer stuck ([`evidence`](super::evidence)).
//!
//! Pingora 0.9 applies one read timeout to the header and to every read of the body, and no
//! hook reaches the upstream connection while a request waits on it. So the cut works from
//! outside: a watch per attempt, armed when the connection is handed to the request
//! (`connected_to_upstream`, which knows its descriptor and its two ends; for a peer that may
//! speak HTTP/2 or HTTP/1, `upstream_request_filter`, once the request shows which), and one
//! thread per
//! engine that looks at each watch as it falls due. The thread is the engine's own, started on
//! the first watch (after any fork), so that a proxy runtime that stalls, or whose tasks are
//! never polled, neither delays a cut nor is mistaken for a silent peer; it ends when the engine
//! is dropped. A cut shuts the connection down (or, when the peer acknowledged none of the
//! request, aborts it, so that the kernel sends none of it later): the waiting read ends at once,
//! as it would had the peer closed.
//!
//! A watch never outlives its attempt's hold on the connection: any response header ends it, so
//! does any failure or the end of the request, and on a connection that carries one request at
//! a time (HTTP/1, or HTTP/2 of one stream), so does the next request it is handed to. Before it reads or cuts, the
//! thread takes a descriptor of its own for the connection, and only when the number is still a
//! socket with the watched connection's two ends: a number closed and reused meanwhile by
//! anything else is left alone, and what is read or done reaches the watched connection even if
//! its owner closes it meanwhile.

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::adaptive::CheckFloor;
use super::evidence;
use super::sys;
use super::watch::{MayCut, Watch, NOT_LOOKED, WAITING};
use crate::health::recovery::Checked;
use crate::health::RecoveryProbe;
use crate::peer::Peer;
use crate::retry::RetryBudget;

/// Due watches are gathered at most this often after each round, so that the thread wakes a few
/// hundred times a second at most however many requests are watched; a cut is this late at
/// worst.
const TICK: Duration = Duration::from_millis(5);
/// How often an idle thread looks whether its engine is gone.
const IDLE: Duration = Duration::from_secs(1);

/// One engine's watches, and the thread that looks at them.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    watches: Mutex<Watches>,
    wake: Arc<Notify>,
    /// The thread: the fork generation it was started in, plus one, times two, plus one when
    /// it started (0: not tried yet; an even number: it could not start, and nothing is
    /// watched). A process forked since starts its own.
    thread: AtomicU64,
    starting: Mutex<()>,
    pub(super) budget: Option<Arc<RetryBudget>>,
    /// How a peer's liveness is checked: the recovery probe's request.
    liveness: RecoveryProbe,
}

#[derive(Debug, Default)]
struct Watches {
    due: BinaryHeap<Due>,
    /// The last watch armed on each descriptor of a connection that carries one request at a
    /// time (HTTP/1, or HTTP/2 of one stream).
    by_fd: HashMap<i32, Weak<Watch>>,
}

#[derive(Debug)]
struct Due {
    at: Instant,
    watch: Arc<Watch>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// The earliest first (`BinaryHeap` is a max-heap).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

/// What a watch needs to know of its attempt.
#[derive(Debug)]
pub(crate) struct Armed<'a> {
    /// The connection's local and remote addresses.
    pub(crate) ends: (SocketAddr, SocketAddr),
    pub(crate) peer: &'a Peer,
    pub(crate) limit: Duration,
    pub(crate) may_cut: MayCut,
    /// A cut's retry is free of the budget.
    pub(crate) free: bool,
    /// The least the peer's liveness check is given, to connect and to answer.
    pub(crate) check_floor: CheckFloor,
    /// The connection speaks HTTP/2: its driver reads answers out of the socket into its own
    /// buffers, so an answer the proxy has not taken shows as bytes received, not unread.
    pub(crate) h2: bool,
    /// The connection carries other requests at the same time (HTTP/2 with more than one
    /// stream allowed).
    pub(crate) shared: bool,
}

impl Shared {
    /// Starts a liveness check of `peer` on another connection, unless one is running: given
    /// `half` (half the limit of the wait that asks), or more where `floor` says so; it fails
    /// when not connected or unanswered in that time. An answer within `half` teaches the peer
    /// what its checks take.
    pub(super) fn check_liveness(&self, peer: &Peer, half: Duration, floor: CheckFloor) {
        let (connect, answer) = (half.max(floor.connect), half.max(floor.answer));
        if !peer.health().suspicion().start_check() {
            return;
        }
        let slot = Slot(peer.clone());
        let probe = self.liveness.clone();
        let from_ms = peer.health().now_ms();
        tokio::spawn(async move {
            let started = Instant::now();
            let (checked, took) = probe.check(&slot.0, connect, answer).await;
            // When its own timeouts had it fail: a check ended long after that was held up
            // itself.
            let due = probe.due(connect, answer);
            let health = slot.0.health();
            // Any answer in time shows the peer alive, whatever its status (a `/` the peer
            // does not serve answers 404 at once).
            let passed = matches!(checked, Checked::Passed | Checked::Answered);
            // What checks take is learned from answers within half the limit only: a check
            // given longer (the floors) answered late teaches nothing, lest each late answer
            // lengthen the next check.
            if let Some(took) = took.filter(|t| passed && *t <= half) {
                health.learn_check(took);
            }
            let failed = matches!(checked, Checked::Unreachable | Checked::Failed);
            // A check the proxy could not make (out of descriptors) shows nothing about the peer,
            // and neither does one that failed long after its own timeouts were due: it was held
            // up itself (the machine, or this thread, was starved).
            if passed || (failed && started.elapsed() <= due * 2) {
                health
                    .suspicion()
                    .finish_check(from_ms, health.now_ms(), passed);
            }
        });
    }
}

/// A peer's check slot, held by the task that runs the check and given back when it is
/// dropped, however the task ends (its runtime may drop it unpolled).
struct Slot(Peer);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.health().suspicion().release_check();
    }
}

impl Watchdog {
    /// A watchdog whose cuts take their retries from `budget`, and that checks a peer's
    /// liveness with `liveness`.
    pub(crate) fn new(budget: Option<Arc<RetryBudget>>, liveness: RecoveryProbe) -> Self {
        // Counted from now on: a fork after this starts the thread again in the child.
        crate::fork::generation();
        Self {
            shared: Arc::new(Shared {
                watches: Mutex::default(),
                wake: Arc::new(Notify::new()),
                thread: AtomicU64::new(0),
                starting: Mutex::new(()),
                budget,
                liveness,
            }),
        }
    }

    /// How a peer's liveness is checked (and its connections made off the request path).
    pub(crate) fn liveness(&self) -> &RecoveryProbe {
        &self.shared.liveness
    }

    /// Connection `fd` was handed to a request: the wait of the request it last carried is
    /// over, whatever ended it, and this attempt is watched when `armed`. The watch, or `None`
    /// when there is none (or the watchdog's thread could not start).
    pub(crate) fn handed(&self, fd: i32, armed: Option<Armed<'_>>) -> Option<Arc<Watch>> {
        let running = armed.is_some() && self.running();
        let now = Instant::now();
        let watch = armed.filter(|_| running).map(|a| {
            // Only the proof that the peer never received a request needs the counters from
            // before it was sent; on HTTP/2, the proof that the answer came (bytes received
            // since, which its driver may have read out of the socket already); and on a
            // shared connection, the proof that the peer is unreachable: each request there
            // begins after others, whose bytes were acknowledged. Reading them is the one
            // system call on the request's path.
            // (A shared connection is an HTTP/2 one.)
            let from_start = a.may_cut == MayCut::IfUndelivered || a.h2;
            let from = from_start.then(|| sys::counters(fd)).flatten();
            Arc::new(Watch {
                state: AtomicU8::new(WAITING),
                fd,
                ends: a.ends,
                peer: a.peer.clone(),
                since_ms: a.peer.health().now_ms(),
                limit: a.limit,
                may_cut: a.may_cut,
                free: a.free,
                check_floor: a.check_floor,
                shared: a.shared,
                from_start: from.is_some(),
                from: Mutex::new(from),
                last_sent: AtomicU64::new(NOT_LOOKED),
                undelivered: AtomicBool::new(false),
                paid: Mutex::new(None),
            })
        });
        let (previous, earliest) = {
            let mut w = self
                .shared
                .watches
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // A connection that carries one request at a time was handed on: the last request
            // it carried no longer waits on it. One that carries many is not (its requests'
            // records end their waits).
            let previous = match &watch {
                Some(watch) if watch.shared => None,
                Some(watch) => w.by_fd.insert(fd, Arc::downgrade(watch)),
                None => w.by_fd.remove(&fd),
            };
            let earliest = watch.as_ref().is_some_and(|watch| {
                // First looked at when a quarter of its limit has passed (`evidence::judge`).
                let at = now + watch.limit / evidence::FIRST_LOOK;
                let earliest = w.due.peek().is_none_or(|d| at < d.at);
                w.due.push(Due {
                    at,
                    watch: watch.clone(),
                });
                earliest
            });
            (previous, earliest)
        };
        if let Some(previous) = previous.and_then(|p| p.upgrade()) {
            previous.end();
        }
        if earliest {
            self.shared.wake.notify_one();
        }
        watch
    }

    /// Whether the thread runs in this process, starting it if not tried yet.
    fn running(&self) -> bool {
        let generation = (crate::fork::current() + 1) * 2;
        let thread = self.shared.thread.load(Ordering::Acquire);
        if thread & !1 == generation {
            return thread & 1 == 1;
        }
        let _starting = self
            .shared
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let thread = self.shared.thread.load(Ordering::Acquire);
        if thread & !1 == generation {
            return thread & 1 == 1;
        }
        let started = self.start();
        self.shared
            .thread
            .store(generation | u64::from(started), Ordering::Release);
        started
    }

    /// Starts the thread; whether it started.
    fn start(&self) -> bool {
        let (shared, wake) = (Arc::downgrade(&self.shared), self.shared.wake.clone());
        let liveness = self.shared.liveness.clone();
        std::thread::Builder::new()
            .name("failover-watchdog".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                // The first check must not pay for building its connector.
                liveness.warm();
                runtime.block_on(run(shared, wake));
            })
            .is_ok()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // The thread sees the engine gone at once.
        self.shared.wake.notify_one();
    }
}

/// Looks at the watches as they fall due, until the engine is gone.
async fn run(shared: Weak<Shared>, wake: Arc<Notify>) {
    let mut checked = Vec::new();
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        {
            let mut w = s.watches.lock().unwrap_or_else(|e| e.into_inner());
            while w.due.peek().is_some_and(|d| d.at <= now) {
                checked.extend(w.due.pop());
            }
        }
        let mut later = Vec::new();
        for d in checked.drain(..) {
            if let Some(at) = d.watch.check(now, &s) {
                later.push(Due { at, watch: d.watch });
            }
        }
        let next = {
            let mut w = s.watches.lock().unwrap_or_else(|e| e.into_inner());
            w.due.extend(later);
            w.due.peek().map(|d| d.at)
        };
        drop(s);
        let at = next.map_or(now + IDLE, |at| at.max(now + TICK));
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
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

    #[tokio::test]
    async fn no_cut_without_a_retry_free_or_paid_for_or_when_the_request_may_not_move() {
        let (mut client, _server) = pair().await;
        let budget = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(1)).unwrap());
        let dog = dog(Some(budget));
        let peer = dead_peer();
        peer.health().begin_request();
        let watch = arm(&dog, &client, &peer, 10, MayCut::Always);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        until("suspected", || {
            peer.health().is_suspected() || watch.fired()
        })
        .await;
        assert!(!watch.fired(), "the attempt keeps its full timeout");

        // A request's first attempt: its retry is free, and the cut is made all the same.
        let (mut client, _server) = pair().await;
        let budget = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(1)).unwrap());
        let dog = self::dog(Some(budget));
        let peer = dead_peer();
        peer.health().begin_request();
        let watch = arm_paid(&dog, &client, &peer, 10, MayCut::Always, true);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
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
        let (mut client, _server) = pair().await;
        let paid = arm_paid(&dog, &client, &peer, 10, MayCut::Always, true);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        until("cut", || paid.fired()).await;
        assert_eq!(
            one.remaining(),
            0,
            "a request sent to a peer known stuck pays"
        );
        let (mut client, _server) = pair().await;
        let unpaid = arm_paid(&dog, &client, &peer, 10, MayCut::Always, true);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!unpaid.fired(), "nothing left to pay with");

        // A first attempt on a peer that answered something while it waited pays too (a pool
        // overloaded as a whole answers now and then): with nothing to pay with, no cut.
        let (mut client, _server) = pair().await;
        let budget = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(1)).unwrap());
        let dog = self::dog(Some(budget));
        let peer = dead_peer();
        peer.health().begin_request();
        let since_ms = peer.health().now_ms();
        let watch = arm_paid(&dog, &client, &peer, 10, MayCut::Always, true);
        until("a later millisecond", || peer.health().now_ms() > since_ms).await;
        peer.health().suspicion().answered(peer.health().now_ms());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        until("stuck after its answer", || peer.health().is_suspected()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !watch.fired(),
            "it answered while the request waited: the retry pays"
        );

        let (mut client, _server) = pair().await;
        let dog = self::dog(None);
        let peer = dead_peer();
        peer.health().begin_request();
        let watch = arm(&dog, &client, &peer, 10, MayCut::IfUndelivered);
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        until("suspected", || {
            peer.health().is_suspected() || watch.fired()
        })
        .await;
        assert!(!watch.fired(), "a POST its peer received is never cut");
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
}
