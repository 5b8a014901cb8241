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
//! a time (HTTP/1, or HTTP/2 of one stream), so does the next request it is handed to. Before
//! it reads or cuts, the thread takes a descriptor of its own for the connection, and only when
//! the number is still a socket with the watched connection's two ends: a number closed and
//! reused meanwhile by anything else is left alone, and what is read or done reaches the
//! watched connection even if its owner closes it meanwhile. When the evidence asks whether
//! the peer still answers, the check runs on a connection of its own
//! ([`liveness`](super::liveness)).

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::adaptive::CheckFloor;
use super::evidence;
use super::sys;
use super::watch::{MayCut, Watch, NOT_LOOKED, WAITING};
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
    pub(super) liveness: RecoveryProbe,
}

#[derive(Debug, Default)]
struct Watches {
    due: BinaryHeap<Due>,
    /// The last watch armed on each descriptor of a connection that carries one request at a
    /// time (HTTP/1, or HTTP/2 of one stream), by descriptor: descriptors are small numbers,
    /// the lowest free one first.
    by_fd: Vec<Weak<Watch>>,
}

impl Watches {
    /// Descriptor `fd` now carries `watch`, or none; the watch it carried. (A negative
    /// descriptor, which no connection has, is not recorded.)
    fn hand(&mut self, fd: i32, watch: Option<&Arc<Watch>>) -> Option<Weak<Watch>> {
        let fd = usize::try_from(fd).ok()?;
        if fd >= self.by_fd.len() {
            watch?;
            self.by_fd.resize_with(fd + 1, Weak::new);
        }
        let watch = watch.map_or_else(Weak::new, Arc::downgrade);
        Some(std::mem::replace(&mut self.by_fd[fd], watch))
    }
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
                on_check: AtomicBool::new(false),
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
                Some(watch) => w.hand(fd, Some(watch)),
                None => w.hand(fd, None),
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
mod tests;
