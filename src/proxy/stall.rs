//! The stall cut: an attempt whose response header is late, on a peer that answers nothing
//! else meanwhile, is cut by shutting its connection down, and the request goes elsewhere.
//!
//! Pingora 0.9 applies one read timeout to the header and to every read of the body, and no
//! hook reaches the upstream connection while a request waits on it. So the cut works from
//! outside: a watch per attempt, armed when the connection is handed to the request
//! (`connected_to_upstream`, which knows its descriptor and its two ends), and one task per
//! engine that shuts down the socket of each watch still waiting at its deadline. The waiting
//! read then ends at once, as it would had the peer closed; the body of an answer that came is
//! never touched, since its header ended the watch.
//!
//! A watch never outlives its attempt's hold on the connection: any response header ends it,
//! so does any failure, and so does the next request the connection is handed to (a pooled
//! connection whose previous request ended by a path that reported neither). And the task
//! checks, before it cuts, that the descriptor is still a socket with the watched connection's
//! two ends: a number closed and reused meanwhile by anything else is left alone.

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::peer::Peer;
use crate::retry::{RetryBudget, Withdrawn};

/// Due watches are gathered at most this often after each round, so that the task wakes a few
/// hundred times a second at most however many requests are watched; a cut is this late at
/// worst.
const TICK: Duration = Duration::from_millis(5);

const WAITING: u8 = 0;
const DONE: u8 = 1;
const CUT: u8 = 2;

/// The watch over one attempt's wait for its response header.
#[derive(Debug)]
pub(crate) struct Watch {
    state: AtomicU8,
    fd: i32,
    /// The connection's local and remote addresses, which name it while it is open.
    ends: (SocketAddr, SocketAddr),
    peer: Peer,
    /// When the attempt began waiting, on the peer's clock (ms).
    since_ms: u64,
    limit: Duration,
    /// The retry the cut took from the budget, for the request to make.
    paid: Mutex<Option<Withdrawn>>,
}

impl Watch {
    /// The attempt's wait ended (its header came, or it failed, or the connection went to
    /// another request): `true` when the watch had cut it first (and every time after).
    pub(crate) fn end(&self) -> bool {
        self.state
            .compare_exchange(WAITING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err_and(|s| s == CUT)
    }

    /// Whether the watch cut the attempt.
    pub(crate) fn fired(&self) -> bool {
        self.state.load(Ordering::Acquire) == CUT
    }

    /// The retry the cut paid for, once.
    pub(crate) fn take_paid(&self) -> Option<Withdrawn> {
        self.paid.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// At `now`: cut when the peer has answered nothing for the limit (counted from the later
    /// of the start of the wait and its last answer), and a retry can be paid for; otherwise
    /// when to look again, if ever. A peer that keeps answering is alive, and a slow request
    /// there is left alone.
    fn check(&self, now: Instant, budget: Option<&Arc<RetryBudget>>) -> Option<Instant> {
        if self.state.load(Ordering::Acquire) != WAITING {
            return None;
        }
        let health = self.peer.health();
        let quiet_since = self.since_ms.max(health.answered_at_ms());
        let quiet = Duration::from_millis(health.now_ms().saturating_sub(quiet_since));
        if quiet < self.limit {
            return Some(now + (self.limit - quiet));
        }
        // No retry to follow (the budget is spent): the attempt keeps its full timeout.
        let paid = Withdrawn::from(budget)?;
        *self.paid.lock().unwrap_or_else(|e| e.into_inner()) = Some(paid);
        if self
            .state
            .compare_exchange(WAITING, CUT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            sys::shut_down(self.fd, self.ends);
        } else {
            // The wait ended meanwhile: the retry goes back.
            self.take_paid();
        }
        None
    }
}

/// One engine's watches, and the task that cuts them.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    watches: Mutex<Watches>,
    wake: Notify,
    /// A task is running; it leaves when no watch is left, and the next watch starts another.
    running: AtomicBool,
    budget: Option<Arc<RetryBudget>>,
}

#[derive(Debug, Default)]
struct Watches {
    due: BinaryHeap<Due>,
    /// The last watch armed on each descriptor.
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
}

impl Watchdog {
    /// A watchdog whose cuts take their retries from `budget`.
    pub(crate) fn new(budget: Option<Arc<RetryBudget>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                watches: Mutex::default(),
                wake: Notify::new(),
                running: AtomicBool::new(false),
                budget,
            }),
        }
    }

    /// Connection `fd` was handed to a request: the wait of the request it last carried is
    /// over, whatever ended it, and this attempt is watched when `armed`. The watch, or `None`
    /// when there is none (or outside a tokio runtime).
    pub(crate) fn handed(&self, fd: i32, armed: Option<Armed<'_>>) -> Option<Arc<Watch>> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let now = Instant::now();
        let watch = match (armed, &runtime) {
            (Some(a), Some(_)) => Some(Arc::new(Watch {
                state: AtomicU8::new(WAITING),
                fd,
                ends: a.ends,
                peer: a.peer.clone(),
                since_ms: a.peer.health().ms_at(now),
                limit: a.limit,
                paid: Mutex::new(None),
            })),
            _ => None,
        };
        let (previous, earliest) = {
            let mut w = self
                .shared
                .watches
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let previous = match &watch {
                Some(watch) => w.by_fd.insert(fd, Arc::downgrade(watch)),
                None => w.by_fd.remove(&fd),
            };
            let earliest = watch.as_ref().map(|watch| {
                let at = now + watch.limit;
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
        if let (Some(earliest), Some(runtime)) = (earliest, runtime) {
            if !self.shared.running.swap(true, Ordering::AcqRel) {
                runtime.spawn(run(self.shared.clone()));
            } else if earliest {
                self.shared.wake.notify_one();
            }
        }
        watch
    }
}

/// Marks the task gone however it leaves (its runtime may shut down under it), so that the next
/// watch starts another.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _w = self.0.watches.lock().unwrap_or_else(|e| e.into_inner());
        self.0.running.store(false, Ordering::Release);
    }
}

/// Cuts the watches as they fall due, until none is left.
async fn run(shared: Arc<Shared>) {
    let _running = Running(&shared);
    let mut checked = Vec::new();
    loop {
        let now = Instant::now();
        let next = {
            let mut w = shared.watches.lock().unwrap_or_else(|e| e.into_inner());
            while w.due.peek().is_some_and(|d| d.at <= now) {
                checked.extend(w.due.pop());
            }
            if w.due.is_empty() && checked.is_empty() {
                // `Running` clears the flag under this lock.
                return;
            }
            w.due.peek().map(|d| d.at)
        };
        let mut later = Vec::new();
        for d in checked.drain(..) {
            if let Some(at) = d.watch.check(now, shared.budget.as_ref()) {
                later.push(Due { at, watch: d.watch });
            }
        }
        let next = if later.is_empty() {
            next
        } else {
            let mut w = shared.watches.lock().unwrap_or_else(|e| e.into_inner());
            w.due.extend(later);
            w.due.peek().map(|d| d.at)
        };
        if let Some(at) = next {
            tokio::select! {
                () = tokio::time::sleep_until(at.max(now + TICK)) => {}
                () = shared.wake.notified() => {}
            }
        }
    }
}

#[cfg(unix)]
#[allow(unsafe_code)]
mod sys {
    use std::mem::ManuallyDrop;
    use std::net::{Shutdown, SocketAddr, TcpStream};
    use std::os::fd::FromRawFd;

    /// Shuts down the socket behind `fd` if it is still the connection between `ends`: a
    /// waiting read on it ends at once.
    pub(super) fn shut_down(fd: i32, ends: (SocketAddr, SocketAddr)) {
        // SAFETY: the stream is never dropped, so the descriptor is never closed here; it is
        // only asked for its two ends (an error if it is no socket, or not a TCP one), and shut
        // down only when they are the watched connection's, which no other open socket shares.
        let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        if stream.local_addr().ok() == Some(ends.0) && stream.peer_addr().ok() == Some(ends.1) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(not(unix))]
mod sys {
    pub(super) fn shut_down(_fd: i32, _ends: (std::net::SocketAddr, std::net::SocketAddr)) {}
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

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

    fn arm(dog: &Watchdog, s: &TcpStream, peer: &Peer, ms: u64) -> Arc<Watch> {
        let armed = Armed {
            ends: ends(s),
            peer,
            limit: Duration::from_millis(ms),
        };
        dog.handed(s.as_raw_fd(), Some(armed)).unwrap()
    }

    fn peer() -> Peer {
        Peer::builder("127.0.0.1:1").build().unwrap()
    }

    #[tokio::test]
    async fn a_wait_with_no_answer_is_cut_at_its_limit_and_the_read_ends() {
        let (mut client, _server) = pair().await;
        let dog = Watchdog::new(None);
        let watch = arm(&dog, &client, &peer(), 30);
        let mut buf = [0u8; 8];
        let started = std::time::Instant::now();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "the read ends as if the peer had closed");
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(watch.fired());
        assert!(watch.end(), "the attempt learns it was cut");
        assert!(watch.take_paid().is_some(), "with the retry it paid for");
    }

    #[tokio::test]
    async fn an_ended_wait_is_never_cut() {
        let (mut client, mut server) = pair().await;
        let dog = Watchdog::new(None);
        let watch = arm(&dog, &client, &peer(), 10);
        assert!(!watch.end());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!watch.fired());
        server.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok", "the connection was left alone");
    }

    #[tokio::test]
    async fn a_connection_handed_to_the_next_request_ends_the_last_ones_wait() {
        let (client, _server) = pair().await;
        let dog = Watchdog::new(None);
        let first = arm(&dog, &client, &peer(), 10);
        // The next request (a POST, not watched) takes the connection.
        assert!(dog.handed(client.as_raw_fd(), None).is_none());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!first.fired());
        assert!(!first.end());
    }

    #[tokio::test]
    async fn no_cut_without_a_retry_to_pay_for() {
        let (client, _server) = pair().await;
        let budget = Arc::new(RetryBudget::new(0.0, 0, Duration::from_secs(1)).unwrap());
        let dog = Watchdog::new(Some(budget));
        let watch = arm(&dog, &client, &peer(), 10);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!watch.fired(), "the attempt keeps its full timeout");
    }

    #[test]
    fn a_descriptor_that_is_no_longer_the_connection_is_not_shut_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_a_server, _) = listener.accept().unwrap();
        let b = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut b_server, _) = listener.accept().unwrap();
        // The watch names `a`, but its number now holds `b`: `b` is left alone.
        sys::shut_down(
            b.as_raw_fd(),
            (a.local_addr().unwrap(), a.peer_addr().unwrap()),
        );
        std::io::Write::write_all(&mut b_server, b"ok").unwrap();
        let mut buf = [0u8; 2];
        std::io::Read::read_exact(&mut &b, &mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        // Nor is a descriptor that is no socket.
        let file = std::fs::File::open("/dev/null").unwrap();
        sys::shut_down(
            file.as_raw_fd(),
            (a.local_addr().unwrap(), a.peer_addr().unwrap()),
        );
    }
}
