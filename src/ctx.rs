//! The per-request record of attempts.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::FailureKind;
use crate::peer::Peer;

/// Per-request failover state: every attempt, its peer, its outcome, and why the proxy retried
/// or stopped. Read it in `logging` for access logs and metrics.
#[derive(Debug, Default)]
pub struct FailoverCtx {
    started: Option<Instant>,
    attempts: Vec<AttemptRecord>,
    /// The next attempt, chosen by the hook that decided to retry.
    pub(crate) next: Option<Next>,
    /// The wait the latest response asked for in `Retry-After`.
    pub(crate) retry_after: Option<Duration>,
    /// The current (last) attempt is counted in flight on its peer: until it fails, or the
    /// context is dropped with the request, whichever way it ended.
    in_flight: bool,
    /// The request's kind, for learning what it typically takes.
    pub(crate) route: Option<crate::cut::RouteKey>,
    /// The other peer a hedged request was sent to.
    pub(crate) hedged: Option<Peer>,
    /// The engine's queue, told when this request's attempt gives its place back.
    pub(crate) queue: Option<std::sync::Arc<crate::proxy::queue::Queue>>,
}

impl Drop for FailoverCtx {
    fn drop(&mut self) {
        if let Some(rec) = self.attempts.last() {
            rec.end_wait();
        }
        self.end_in_flight();
    }
}

/// The attempt a retry decision chose: its peer, whether it is that peer's probe, how long to
/// wait before it, and the retry it took from the budget (given back if it is never made,
/// however the request ends: no hook has to remember it).
#[derive(Debug)]
pub(crate) struct Next {
    pub(crate) peer: Peer,
    pub(crate) probe: bool,
    pub(crate) wait: Duration,
    pub(crate) paid: Option<crate::retry::Withdrawn>,
}

impl Next {
    /// An attempt on `peer` at once, with no retry paid for (a request's first).
    pub(crate) fn to(peer: Peer, probe: bool) -> Self {
        Self {
            peer,
            probe,
            wait: Duration::ZERO,
            paid: None,
        }
    }
}

impl FailoverCtx {
    /// An empty context, for a request that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every attempt so far, oldest first.
    pub fn attempts(&self) -> &[AttemptRecord] {
        &self.attempts
    }

    /// The number of retries made (attempts after the first).
    pub fn retries(&self) -> usize {
        self.attempts.len().saturating_sub(1)
    }

    /// The peer of the latest attempt.
    pub fn last_peer(&self) -> Option<&Peer> {
        self.attempts.last().map(AttemptRecord::peer)
    }

    /// Time since the first attempt started; for a hedged request, since the engine took it up
    /// (its first attempt is a subrequest's).
    pub fn elapsed(&self) -> Duration {
        self.started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Why the proxy stopped trying, if it did.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.attempts.last()?.outcome {
            Outcome::Failed {
                verdict: Verdict::Stopped(r),
                ..
            } => Some(r),
            _ => None,
        }
    }

    /// A one-line account of every attempt, for logs and error messages.
    pub fn summary(&self) -> Summary<'_> {
        Summary(&self.attempts)
    }

    /// The other peer a hedged request was also sent to, whose answer was not used (its
    /// attempts are its own; [`attempts`](Self::attempts) are those of the answer's).
    /// [`Hedging`](crate::Hedging).
    pub fn hedged(&self) -> Option<&Peer> {
        self.hedged.as_ref()
    }

    /// Takes the attempts of the hedged request's answer as this request's own (they were
    /// made, and counted, by its subrequest; the request [`begin`](Self::begin)s before, and
    /// makes no attempt of its own).
    pub(crate) fn adopt(&mut self, attempts: Vec<AttemptRecord>) {
        debug_assert!(self.attempts.is_empty() && self.started.is_some());
        self.attempts = attempts;
    }

    /// The request starts now, before any attempt of its own (a hedged request, whose
    /// attempts its subrequests make): [`elapsed`](Self::elapsed) counts from here.
    pub(crate) fn begin(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }

    /// Starts an attempt on `peer`, whose place in flight the caller reserved
    /// ([`PeerHealth::reserve`](crate::PeerHealth)).
    pub(crate) fn start_attempt(&mut self, peer: Peer, probe: bool) {
        let now = Instant::now();
        self.started.get_or_insert(now);
        // A Retry-After belongs to the response that carried it.
        self.retry_after = None;
        let started_ejected = !peer.health().is_healthy();
        self.end_in_flight();
        peer.health().begin_reserved_at(now);
        self.in_flight = true;
        self.attempts.push(AttemptRecord {
            peer,
            started: now,
            duration: None,
            outcome: Outcome::Pending,
            probe,
            started_ejected,
            cut: crate::cut::Cut::default(),
        });
    }

    /// The current attempt no longer loads its peer (nor waits on it for a header, if it still
    /// did: an attempt waits from its start until its outcome is known or it ends without one).
    pub(crate) fn end_in_flight(&mut self) {
        if std::mem::take(&mut self.in_flight) {
            if let Some(rec) = self.attempts.last() {
                let health = rec.peer.health();
                if matches!(rec.outcome, Outcome::Pending) {
                    health.header_done();
                }
                crate::proxy::queue::give_back(health, self.queue.as_deref());
            }
        }
    }

    pub(crate) fn current_mut(&mut self) -> Option<&mut AttemptRecord> {
        self.attempts.last_mut()
    }
}

/// One attempt of a request.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    peer: Peer,
    started: Instant,
    duration: Option<Duration>,
    outcome: Outcome,
    probe: bool,
    /// The peer was held out by health when the attempt started (panic mode, or a retry that
    /// returned to it).
    pub(crate) started_ejected: bool,
    /// Which of its timeouts were lowered below the configured ones ([`AdaptiveTimeouts`]): a
    /// timeout is then the engine's cut, not a measure of the peer.
    ///
    /// [`AdaptiveTimeouts`]: crate::AdaptiveTimeouts
    pub(crate) cut: crate::cut::Cut,
}

impl AttemptRecord {
    /// A record of an attempt to `peer` starting now, for driving selectors outside a proxy.
    pub fn new(peer: Peer) -> Self {
        Self {
            peer,
            started: Instant::now(),
            duration: None,
            outcome: Outcome::Pending,
            probe: false,
            started_ejected: false,
            cut: crate::cut::Cut::default(),
        }
    }

    /// Whether this attempt was the probe of an ejected peer.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The peer tried.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// When the attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How long the attempt took until its outcome was known (`None` while pending).
    pub fn duration(&self) -> Option<Duration> {
        self.duration
    }

    /// How the attempt ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Ends the attempt with `outcome` at `now` (what its peer learns from it is the engine's
    /// feed).
    pub(crate) fn finish(&mut self, outcome: Outcome, now: Instant) {
        self.end_wait();
        self.duration = Some(now.saturating_duration_since(self.started));
        self.outcome = outcome;
    }

    /// Ends the stall cut's watch over the wait for the header: whether it had cut the attempt.
    pub(crate) fn end_wait(&self) -> bool {
        self.cut.end_wait()
    }

    /// Whether a failure of `kind` was the stall cut's (the engine's, not a measure of the peer).
    pub(crate) fn stall_cut(&self, kind: FailureKind) -> bool {
        matches!(kind, FailureKind::HeaderTimeout | FailureKind::Unprocessed)
            && self.cut.header_cut()
    }

    /// Whether the attempt ended in a stall cut made on a liveness check left unanswered.
    pub(crate) fn was_cut_on_check(&self) -> bool {
        self.cut.header_cut_on_check()
    }

    /// Changes the verdict of a failed attempt, keeping its duration.
    pub(crate) fn set_verdict(&mut self, verdict: Verdict) {
        if let Outcome::Failed { verdict: v, .. } = &mut self.outcome {
            *v = verdict;
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Still running, or ended without the proxy learning how (for example, the client left).
    Pending,
    /// The upstream sent a response header with this status, and it went to the client.
    Responded {
        /// The response status.
        status: u16,
    },
    /// The attempt failed.
    Failed {
        /// What went wrong.
        kind: FailureKind,
        /// What the proxy did about it.
        verdict: Verdict,
    },
}

/// What the proxy did after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// It tried again.
    Retried,
    /// It stopped, for this reason.
    Stopped(StopReason),
}

/// Why the proxy stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The retry policy said stop for this failure.
    Policy,
    /// The policy's attempt cap was reached.
    MaxAttempts,
    /// The selector had no peer left to try.
    NoPeerLeft,
    /// Part of the response had already gone to the client.
    ResponseStarted,
    /// A non-idempotent request had already been sent upstream.
    NotIdempotent,
    /// The request body outgrew pingora's replay buffer, so it cannot be sent again in full.
    BodyNotReplayable,
    /// The overall deadline would be passed.
    Deadline,
    /// The retry budget was spent.
    Budget,
    /// Pingora's `ServerConf::max_retries` ended the loop before the policy did.
    PingoraRetryCap,
    /// The client side failed (it disconnected, or its request could not be read): nobody is
    /// left to answer, and the upstream is not to blame.
    ClientGone,
    /// Every peer was tried, and the upstream's `Retry-After` asked for a longer wait than the
    /// engine's maximum or the deadline allows: its answer goes to the client.
    RetryAfter,
    /// The request failed the same way on two peers in a row (a 500 on both, or a connection
    /// that broke after the request was sent): the request, not the peers, is the likely
    /// cause (a query of death). It is not sent to a third, and the second failure counts
    /// against no peer.
    QueryOfDeath,
    /// The peers that could take the retry are at their limit of requests in flight
    /// ([`PeerBuilder::with_max_requests`](crate::PeerBuilder::with_max_requests)): the request
    /// is shed, and the client gets a 503.
    Full,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Policy => "the retry policy does not retry this failure",
            Self::MaxAttempts => "attempt cap reached",
            Self::NoPeerLeft => "no untried peer left",
            Self::ResponseStarted => "the response had already started",
            Self::NotIdempotent => "non-idempotent request already sent",
            Self::BodyNotReplayable => "request body too large to replay",
            Self::Deadline => "overall deadline reached",
            Self::Budget => "retry budget spent",
            Self::PingoraRetryCap => "pingora's max_retries reached",
            Self::ClientGone => "the client side failed",
            Self::RetryAfter => "retry-after longer than allowed",
            Self::QueryOfDeath => {
                "failed the same way on two peers: the request is the likely cause"
            }
            Self::Full => "every peer with room was tried; the others are at their request limit",
        })
    }
}

/// Displays every attempt of a request on one line; see [`FailoverCtx::summary`].
#[derive(Debug)]
pub struct Summary<'a>(&'a [AttemptRecord]);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "#{} {}{}: ",
                i + 1,
                a.peer,
                if a.probe { " (probe)" } else { "" }
            )?;
            match a.outcome {
                Outcome::Pending => f.write_str("pending")?,
                Outcome::Responded { status } => write!(f, "status {status}")?,
                Outcome::Failed { kind, verdict } => {
                    write!(f, "{kind}")?;
                    match verdict {
                        Verdict::Retried => f.write_str(", retried")?,
                        Verdict::Stopped(r) => write!(f, ", stopped: {r}")?,
                    }
                }
            }
            if let Some(d) = a.duration {
                write!(f, " after {}ms", d.as_millis())?;
            }
        }
        Ok(())
    }
}
