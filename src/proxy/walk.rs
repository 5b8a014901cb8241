//! The walk after a failure: health is fed, the safety rules and the policy judge, the budget
//! pays, and the selector names the next peer (or the engine returns to one already tried).
//! Also the same rules asked before an attempt, for the stall cut: would a cut be retried?

use std::time::Duration;

use pingora_error::Error;
use pingora_proxy::Session;

use super::rules::{self, Facts};
use super::Failover;
use crate::classify::FailureKind;
use crate::ctx::{AttemptRecord, FailoverCtx, Next, Outcome, StopReason, Verdict};
use crate::health::{Admission, HealthState};
use crate::peer::Peer;
use crate::retry::{Failure, RetryDecision, RetryPolicy, Withdrawn};
use crate::select::{Attempt, PeerSelector};

/// How many times a selection is made when the half-open peers it returns lose their probe slot
/// to other requests, before the last one is sent as it is.
const CLAIM_ROUNDS: usize = 3;
/// Pingora's request body replay buffer: a longer body cannot be sent again.
const REPLAY_BUFFER: usize = 64 * 1024;

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    pub(super) fn after_failure(
        &self,
        session: &Session,
        ctx: &mut FailoverCtx,
        mut e: Box<Error>,
        kind: FailureKind,
    ) -> Box<Error> {
        if ctx.attempts().is_empty() {
            // Not an attempt this engine started: leave pingora's decision alone.
            return e;
        }
        self.feed.failed(ctx, kind);
        // Read only after `decide_reuse`, which every caller has done.
        let pingora_retriable = e.retry();
        match self.judge(session, ctx, kind, pingora_retriable, Some(&e)) {
            Ok(next) => {
                self.finish(ctx, kind, Verdict::Retried);
                ctx.next = Some(next);
                e.set_retry(true);
                e
            }
            Err(reason) => {
                self.finish(ctx, kind, Verdict::Stopped(reason));
                e.set_retry(false);
                e.more_context(format!(
                    "failover stopped ({reason}) after {} attempt(s): {}",
                    ctx.attempts().len(),
                    ctx.summary()
                ))
            }
        }
    }

    /// The next attempt when a retry is allowed, or why not.
    pub(super) fn judge(
        &self,
        session: &Session,
        ctx: &FailoverCtx,
        kind: FailureKind,
        pingora_retriable: bool,
        error: Option<&Error>,
    ) -> std::result::Result<Next, StopReason> {
        let attempts = ctx.attempts();
        let rec = attempts.last().ok_or(StopReason::NoPeerLeft)?;
        if rules::poisoned(attempts, kind) {
            return Err(StopReason::QueryOfDeath);
        }
        let left = self.time_left(ctx);
        let failure = Failure {
            kind,
            attempt: attempts.len() as u32,
            elapsed: ctx.elapsed(),
            request: session.req_header(),
            peer: rec.peer(),
            sent_upstream: !kind.is_connect(),
            body_replayable: !session.retry_buffer_truncated(),
            pingora_retriable,
            error,
        };
        let facts = Facts {
            kind,
            attempt: failure.attempt,
            max_attempts: self.policy.max_attempts(),
            response_started: session.response_written().is_some(),
            idempotent: failure.is_idempotent(),
            replay_opt_in: !failure.is_idempotent() && self.policy.replay_non_idempotent(&failure),
            body_replayable: failure.body_replayable,
            policy_retries: self.policy.decide(&failure) == RetryDecision::Retry,
            time_left: left,
        };
        if let Some(reason) = rules::stop(&facts) {
            return Err(reason);
        }
        // A stall cut took its retry from the budget when it cut; some retries are free (a peer
        // down at deploy, met by a burst of requests, loses none of them).
        let paid = match rec.cut.take_paid() {
            Some(paid) => Some(paid),
            None if rules::retry_is_free(failure.attempt, kind) => None,
            None => match Withdrawn::from(self.budget.as_ref()) {
                Some(paid) => Some(paid),
                None => {
                    self.feed.signals.budget_refused();
                    return Err(StopReason::Budget);
                }
            },
        };
        // Without a peer, `paid` is dropped here and the retry goes back to the budget.
        let mut next = self.next_peer(ctx, session, failure.attempt, left)?;
        next.paid = paid;
        self.feed.signals.retry();
        Ok(next)
    }

    /// Whether a peer of the selector's pool would take `query` but for its limit of requests
    /// in flight ([`Attempt::full`]); `None` for a selector without a pool.
    pub(super) fn pool_full(&self, query: &Attempt<'_>) -> Option<bool> {
        let pool = self.feed.pool.as_ref()?;
        Some(pool.snapshot().iter().any(|p| query.full(p)))
    }

    /// The peer for the retry after attempt number `attempt`, and how long to wait for it.
    pub(super) fn next_peer(
        &self,
        ctx: &FailoverCtx,
        session: &Session,
        attempt: u32,
        left: Option<Duration>,
    ) -> std::result::Result<Next, StopReason> {
        let attempts = ctx.attempts();
        let query =
            Attempt::new(attempts, Some(session.req_header())).with_client_ip(client_ip(session));
        if let Some((peer, probe)) = self.choose(&query) {
            return Ok(Next::to(peer, probe));
        }
        // A healthy peer that is only full: shed the request, as a first attempt would be.
        if self.pool_full(&query) == Some(true) {
            return Err(StopReason::Full);
        }
        // Every peer has been tried: return to the one that will be healthy first, after a
        // backoff, or after the wait the upstream asked for.
        let peer = revisit(attempts).ok_or(StopReason::NoPeerLeft)?;
        let mut wait = self.policy.backoff(attempt);
        if let Some(left) = left {
            wait = wait.min(left / 2);
        }
        // The wait the upstream asked for holds for a return to that same upstream only.
        let asked = ctx
            .retry_after
            .filter(|_| attempts.last().is_some_and(|r| r.peer().same(&peer)));
        if let Some(asked) = asked {
            if asked > self.max_retry_after || left.is_some_and(|l| asked >= l) {
                return Err(StopReason::RetryAfter);
            }
            wait = wait.max(asked);
        }
        Ok(Next {
            peer,
            probe: false,
            wait,
            paid: None,
        })
    }

    /// Asks the selector for a peer and claims it for the request about to be sent; `true`
    /// with the peer when this request took its probe slot. Selectors only query health, so
    /// the claim is made here. A half-open peer whose slot another request took in between is
    /// asked about again (the selector now sees it refused); a peer health holds out for any
    /// other reason (ejected, failing its check) was the selector's deliberate choice (panic
    /// mode) and is sent as it is.
    pub(super) fn choose(&self, attempt: &Attempt<'_>) -> Option<(Peer, bool)> {
        let mut lost = None;
        for _ in 0..CLAIM_ROUNDS {
            let peer = self.selector.select(attempt)?;
            match peer.health().claim(peer.probe_window()) {
                Admission::Probe => return Some((peer, true)),
                Admission::Refused if peer.health().state() == HealthState::HalfOpen => {
                    lost = Some(peer);
                }
                _ => return Some((peer, false)),
            }
        }
        lost.map(|peer| (peer, false))
    }

    /// Whether a cut of the attempt about to be made, failing as `kind` after `limit` of its
    /// `configured` timeout, would be retried: the safety rules over what is known before the
    /// attempt ([`rules::cut_is_retried`]), with the policy asked through
    /// [`RetryPolicy::would_retry`]. (The caller asks the budget.)
    pub(super) fn cut_is_retried(
        &self,
        session: &Session,
        body_empty: bool,
        ctx: &FailoverCtx,
        kind: FailureKind,
        configured: Duration,
        limit: Duration,
    ) -> bool {
        let request = session.req_header();
        let facts = Facts {
            kind,
            attempt: ctx.attempts().len() as u32 + 1,
            max_attempts: self.policy.max_attempts(),
            response_started: false,
            idempotent: request.method.is_idempotent(),
            replay_opt_in: false,
            body_replayable: body_empty || body_fits_replay(session),
            policy_retries: self.policy.would_retry(kind, request),
            time_left: self.time_left(ctx),
        };
        rules::cut_is_retried(&facts, configured, limit)
    }

    pub(super) fn finish(&self, ctx: &mut FailoverCtx, kind: FailureKind, verdict: Verdict) {
        self.feed.finish(ctx, Outcome::Failed { kind, verdict });
        ctx.end_in_flight();
    }

    pub(super) fn time_left(&self, ctx: &FailoverCtx) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_sub(ctx.elapsed()))
    }
}

/// The peer a retry returns to once every peer was tried: one that health admits now if any,
/// and of those the one tried longest ago, so that repeated retries take turns.
fn revisit(attempts: &[crate::ctx::AttemptRecord]) -> Option<Peer> {
    attempts
        .iter()
        .map(AttemptRecord::peer)
        .min_by_key(|p| {
            let last = attempts.iter().rposition(|r| r.peer().same(p));
            (p.health().wait_ms() > 0, last)
        })
        .cloned()
}

/// Whether the request's body, announced by its `Content-Length`, fits pingora's replay buffer.
pub(super) fn body_fits_replay(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= REPLAY_BUFFER)
}

/// The client's IP address, for selectors that hash by it.
pub(super) fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}
