//! The stall cut: an attempt whose response header is late, on a peer that answers nothing
//! else meanwhile, is cut by shutting its connection down, and the request goes elsewhere.
//!
//! Pingora 0.9 applies one read timeout to the header and to every read of the body, and no
//! hook reaches the upstream connection while a request waits on it. So the cut works from
//! outside: a watch per attempt, armed when the connection is handed to the request
//! (`connected_to_upstream`, which knows its descriptor), and one task per engine that shuts
//! down the socket of each watch still waiting at its deadline. The waiting read then ends at
//! once, as it would had the peer closed; the body of an answer that came is never touched.
//!
//! A descriptor may be closed and its number reused by the time a watch falls due, so the task
//! works on a duplicate of it, taken first, and cuts only when the duplicate is the socket the
//! watch was armed on (the same inode): whatever happens to the number, no other connection is
//! ever shut down.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::peer::Peer;

/// Due watches are gathered at most this often: the cut is this late at worst, and the task
/// wakes at most 200 times a second however many requests are watched.
const TICK: Duration = Duration::from_millis(5);

const WAITING: u8 = 0;
const DONE: u8 = 1;
const CUT: u8 = 2;

/// The watch over one attempt's wait for its response header.
#[derive(Debug)]
pub(crate) struct Watch {
    state: AtomicU8,
    fd: i32,
    inode: u64,
    peer: Peer,
    /// When the attempt began waiting, on the peer's clock (ms).
    since_ms: u64,
    limit: Duration,
}

impl Watch {
    /// The attempt's wait ended (its header came, or it failed): `true` when the watch had cut
    /// it first (and every time after).
    pub(crate) fn end(&self) -> bool {
        self.state
            .compare_exchange(WAITING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err_and(|s| s == CUT)
    }

    /// Whether the watch cut the attempt.
    pub(crate) fn fired(&self) -> bool {
        self.state.load(Ordering::Acquire) == CUT
    }

    /// At `now`: cut when the peer has answered nothing for the limit (counted from the later
    /// of the start of the wait and its last answer); otherwise when to look again. A peer that
    /// keeps answering is alive, and a slow request there is left alone.
    fn check(&self, now: Instant) -> Option<Instant> {
        if self.state.load(Ordering::Acquire) != WAITING {
            return None;
        }
        let health = self.peer.health();
        let quiet_since = self.since_ms.max(health.answered_at_ms());
        let quiet = Duration::from_millis(health.now_ms().saturating_sub(quiet_since));
        if quiet < self.limit {
            return Some(now + (self.limit - quiet));
        }
        if self
            .state
            .compare_exchange(WAITING, CUT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            sys::shut_down(self.fd, self.inode);
        }
        None
    }
}

/// One engine's watches, and the task that cuts them.
#[derive(Debug, Default)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    due: Mutex<BinaryHeap<Due>>,
    wake: Notify,
    /// A task is running; it leaves when no watch is left, and the next watch starts another.
    running: AtomicBool,
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

impl Watchdog {
    /// Watches the attempt to `peer` now waiting on connection `fd`, to cut it after `limit`
    /// without an answer from the peer. `None` when the descriptor cannot be identified, or
    /// outside a tokio runtime: the attempt is then not watched.
    pub(crate) fn arm(&self, fd: i32, peer: &Peer, limit: Duration) -> Option<Arc<Watch>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let inode = sys::inode(fd)?;
        let watch = Arc::new(Watch {
            state: AtomicU8::new(WAITING),
            fd,
            inode,
            peer: peer.clone(),
            since_ms: peer.health().now_ms(),
            limit,
        });
        let at = Instant::now() + limit;
        let earliest = {
            let mut due = self.shared.due.lock().unwrap_or_else(|e| e.into_inner());
            let earliest = due.peek().is_none_or(|d| at < d.at);
            due.push(Due {
                at,
                watch: watch.clone(),
            });
            earliest
        };
        if !self.shared.running.swap(true, Ordering::AcqRel) {
            runtime.spawn(run(self.shared.clone()));
        } else if earliest {
            self.shared.wake.notify_one();
        }
        Some(watch)
    }
}

/// Cuts the watches as they fall due, until none is left.
async fn run(shared: Arc<Shared>) {
    let mut checked = Vec::new();
    loop {
        let now = Instant::now();
        let next = {
            let mut due = shared.due.lock().unwrap_or_else(|e| e.into_inner());
            while due.peek().is_some_and(|d| d.at <= now) {
                checked.extend(due.pop());
            }
            if due.is_empty() && checked.is_empty() {
                shared.running.store(false, Ordering::Release);
                return;
            }
            due.peek().map(|d| d.at)
        };
        let mut later = Vec::new();
        for d in checked.drain(..) {
            if let Some(at) = d.watch.check(now) {
                later.push(Due { at, watch: d.watch });
            }
        }
        let next = if later.is_empty() {
            next
        } else {
            let mut due = shared.due.lock().unwrap_or_else(|e| e.into_inner());
            due.extend(later);
            due.peek().map(|d| d.at)
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
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// The inode of the socket behind `fd`, which names it for as long as it is open.
    pub(super) fn inode(fd: i32) -> Option<u64> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a `stat` on success, and reads nothing else; a bad descriptor
        // is an error.
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: fstat succeeded, so it filled `stat`.
        #[allow(clippy::unnecessary_cast)] // `st_ino` is not a u64 on every unix
        Some(unsafe { stat.assume_init() }.st_ino as u64)
    }

    /// Shuts down the socket behind `fd` if it is still the one with `inode`: a waiting read
    /// on it ends at once.
    pub(super) fn shut_down(fd: i32, inode: u64) {
        // SAFETY: duplicating a descriptor touches no memory; a closed one is an error.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return;
        }
        // SAFETY: `dup` is a new descriptor that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if self::inode(dup.as_raw_fd()) == Some(inode) {
            // SAFETY: shutdown on a descriptor this function owns.
            unsafe { libc::shutdown(dup.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

#[cfg(not(unix))]
mod sys {
    pub(super) fn inode(_fd: i32) -> Option<u64> {
        None
    }

    pub(super) fn shut_down(_fd: i32, _inode: u64) {}
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::fd::AsRawFd;

    use tokio::io::AsyncReadExt;
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

    fn peer() -> Peer {
        Peer::builder("127.0.0.1:1").build().unwrap()
    }

    #[tokio::test]
    async fn a_wait_with_no_answer_is_cut_at_its_limit_and_the_read_ends() {
        let (mut client, _server) = pair().await;
        let dog = Watchdog::default();
        let watch = dog
            .arm(client.as_raw_fd(), &peer(), Duration::from_millis(30))
            .unwrap();
        let mut buf = [0u8; 8];
        let started = std::time::Instant::now();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "the read ends as if the peer had closed");
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(watch.fired());
        assert!(watch.end(), "the attempt learns it was cut");
    }

    #[tokio::test]
    async fn an_ended_wait_is_never_cut() {
        let (mut client, mut server) = pair().await;
        let dog = Watchdog::default();
        let watch = dog
            .arm(client.as_raw_fd(), &peer(), Duration::from_millis(10))
            .unwrap();
        assert!(!watch.end());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!watch.fired());
        tokio::io::AsyncWriteExt::write_all(&mut server, b"ok")
            .await
            .unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok", "the connection was left alone");
    }

    #[test]
    fn a_reused_descriptor_number_is_not_the_watched_socket() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = a.as_raw_fd();
        let inode = sys::inode(fd).unwrap();
        drop(a);
        // The number now names another socket (or nothing): it is not shut down.
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        if b.as_raw_fd() == fd {
            assert_ne!(sys::inode(fd), Some(inode));
        }
        sys::shut_down(fd, inode);
        b.set_nonblocking(true).unwrap();
        let addr = b.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert!(b.accept().is_ok(), "the other socket still works");
    }
}
