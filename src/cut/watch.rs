//! The watch over one attempt's wait for its response header: what it saw of the connection at
//! each look, and the cut when the evidence shows its peer stuck
//! ([`evidence`](super::evidence)). The watchdog ([`watchdog`](super::watchdog)) holds the
//! watches and looks at each as it falls due.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::adaptive::CheckFloor;
use super::evidence::{self, Look, Transport, Verdict};
use super::liveness;
use super::sys::{self, Counters};
use super::watchdog::Shared;
use crate::peer::Peer;
use crate::retry::{RetryBudget, Withdrawn};

/// A watch's `last_sent` before its first look.
pub(super) const NOT_LOOKED: u64 = u64::MAX;
/// Data sent this recently (ms) at a watch's first look means its request is still being sent.
pub(super) const STILL_SENDING_MS: u64 = 5;

pub(super) const WAITING: u8 = 0;
const DONE: u8 = 1;
const CUT: u8 = 2;

/// What a watch may do to its attempt when the evidence shows the peer stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MayCut {
    /// Cut it: a retry is safe whatever the peer did with the request.
    Always,
    /// Cut it only when the peer never received the request.
    IfUndelivered,
    /// Cut it only when the transport shows the peer unreachable (retransmitted, nothing
    /// acknowledged), not on a liveness check left unanswered: the request's earlier attempt
    /// was cut on one, and a second peer silent on the same request points at the request.
    IfUnreachable,
    /// Never: the watch only gathers evidence, for suspicion.
    Never,
}

/// The watch over one attempt's wait for its response header.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(super) state: AtomicU8,
    pub(super) fd: i32,
    /// The connection's local and remote addresses, which name it while it is open.
    pub(super) ends: (SocketAddr, SocketAddr),
    pub(super) peer: Peer,
    /// When the attempt began waiting, on the peer's clock (ms).
    pub(super) since_ms: u64,
    pub(super) limit: Duration,
    pub(super) may_cut: MayCut,
    /// The cut's retry may be free of the budget (the request's first attempt): free when the
    /// peer has shown nothing alive since the attempt began, and was not known stuck then.
    pub(super) free: bool,
    /// The least the peer's liveness check is given, to connect and to answer.
    pub(super) check_floor: CheckFloor,
    /// The connection carries other requests at the same time (HTTP/2 with more than one
    /// stream allowed): only the transport may show its peer stuck, and the cut ends them all.
    pub(super) shared: bool,
    /// The connection's counters that what moved is counted from: those of when the attempt
    /// took it, before its request was sent (`from_start`), or else those of the first look.
    pub(super) from: Mutex<Option<Counters>>,
    /// `from` was read when the attempt took the connection: only for a request that may move
    /// when undelivered, and on a shared connection (it costs a system call on the request's
    /// path).
    pub(super) from_start: bool,
    /// Bytes sent as of the last look ([`NOT_LOOKED`] before the first): more since means the
    /// request is still being sent.
    pub(super) last_sent: AtomicU64,
    /// The cut found that the peer had received none of the request.
    pub(super) undelivered: AtomicBool,
    /// The cut was made on a liveness check left unanswered, not on the transport.
    pub(super) on_check: AtomicBool,
    /// The retry the cut took from the budget, for the request to make.
    pub(super) paid: Mutex<Option<Withdrawn>>,
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

    /// Whether the watch cut the attempt on a liveness check left unanswered (not on the
    /// transport's proof that the peer is unreachable).
    pub(crate) fn fired_on_check(&self) -> bool {
        self.fired() && self.on_check.load(Ordering::Acquire)
    }

    /// Whether the cut found that the peer never received the request (and aborted the
    /// connection, so that it never will).
    pub(crate) fn undelivered(&self) -> bool {
        self.fired() && self.undelivered.load(Ordering::Acquire)
    }

    /// The retry the cut paid for, once.
    pub(crate) fn take_paid(&self) -> Option<Withdrawn> {
        self.paid.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Looks at the wait: when to look again, if ever.
    pub(super) fn check(&self, now: Instant, shared: &Shared) -> Option<Instant> {
        if self.state.load(Ordering::Acquire) != WAITING {
            return None;
        }
        let health = self.peer.health();
        let now_ms = health.now_ms();
        let suspicion = health.suspicion();
        let quiet_since = self.since_ms.max(health.answered_at_ms());
        // The descriptor no longer names the connection: the wait is over. Otherwise the
        // connection is held open by a descriptor of the watch's own until the look (and any
        // cut) is done, so that what is read and done reaches it and no other.
        let conn = sys::Connection::of(self.fd, self.ends)?;
        let transport = conn.counters().map(|counters| {
            // First transmissions only: a retransmission is no sign of a request still going.
            let from = *self
                .from
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(counters);
            let first_sent = counters.sent.saturating_sub(counters.retransmitted);
            let sending = match self.last_sent.swap(first_sent, Ordering::AcqRel) {
                // The request went after the watch was armed: at the first look, only data
                // sent a moment ago (and not retransmitted since) says that it is still going.
                NOT_LOOKED => {
                    u64::from(counters.last_send_ms) < STILL_SENDING_MS
                        && counters.retransmitted == from.retransmitted
                }
                last => first_sent > last,
            };
            Transport {
                moved: since(counters, from),
                from_start: self.from_start,
                sending,
            }
        });
        // The transport's own proof, which `evidence::judge` cuts on before it asks the
        // liveness check.
        let unreachable = transport.as_ref().is_some_and(Transport::unreachable);
        let look = Look {
            quiet: Duration::from_millis(now_ms.saturating_sub(quiet_since)),
            limit: self.limit,
            transport,
            liveness: suspicion.live_since(self.since_ms, self.limit.as_millis() as u64),
            shared: self.shared,
        };
        match evidence::judge(&look) {
            Verdict::Later(after) => Some(now + after),
            Verdict::Check(after) => {
                let half = self.limit / evidence::CHECK_SHARE;
                liveness::check(&shared.liveness, &self.peer, half, self.check_floor);
                Some(now + after)
            }
            Verdict::Leave => None,
            Verdict::Stuck { undelivered } => {
                // Only a request caught on its peer as it broke moves free: the peer has shown
                // nothing alive since the request began, and was not known stuck then. One
                // sent to a peer already known stuck pays, and so does one on a peer that
                // answers now and then (a pool overloaded as a whole).
                let free = self.free && suspicion.broke_under(self.since_ms);
                suspicion.stuck(now_ms);
                let budget = shared.budget.as_ref().filter(|_| !free);
                self.on_check.store(!unreachable, Ordering::Release);
                let cut = match self.may_cut {
                    MayCut::Always => self.cut(&conn, undelivered, budget),
                    MayCut::IfUndelivered if undelivered => self.cut(&conn, true, budget),
                    MayCut::IfUnreachable if unreachable => self.cut(&conn, undelivered, budget),
                    // The transport may yet show that the peer never received it, or that it
                    // is unreachable.
                    MayCut::IfUndelivered | MayCut::IfUnreachable => {
                        return Some(now + self.limit / 2)
                    }
                    MayCut::Never => false,
                };
                if cut {
                    suspicion.cut(now_ms);
                }
                None
            }
        }
    }

    /// Cuts the attempt on `conn`, when its retry can be paid for from `budget` (none: it is
    /// free), otherwise it keeps its full timeout. An undelivered request is aborted, so that
    /// the kernel sends none of it later; should the abort fail, the request is only shut down
    /// and no longer counts as undelivered, so that it does not move. Whether it cut.
    fn cut(
        &self,
        conn: &sys::Connection,
        undelivered: bool,
        budget: Option<&Arc<RetryBudget>>,
    ) -> bool {
        let Some(paid) = Withdrawn::from(budget) else {
            return false;
        };
        *self.paid.lock().unwrap_or_else(|e| e.into_inner()) = Some(paid);
        self.undelivered.store(undelivered, Ordering::Release);
        if self
            .state
            .compare_exchange(WAITING, CUT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if !undelivered {
                conn.shut_down();
            } else if !conn.abort() {
                self.undelivered.store(false, Ordering::Release);
            }
            true
        } else {
            // The wait ended meanwhile: the retry goes back.
            self.take_paid();
            false
        }
    }
}

/// What moved on a connection since `base`.
fn since(now: Counters, base: Counters) -> Counters {
    Counters {
        sent: now.sent.saturating_sub(base.sent),
        acked: now.acked.saturating_sub(base.acked),
        received: now.received.saturating_sub(base.received),
        retransmitted: now.retransmitted.saturating_sub(base.retransmitted),
        ..now
    }
}
