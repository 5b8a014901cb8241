//! What a finished attempt teaches its peer, in one place: its timings, its failure or success
//! under the outlier rules, the blame for the cuts before it, and what its kind of request
//! takes. Nothing else in the engine writes health.

use std::sync::Arc;

use tokio::time::Instant;

use super::rules;
use super::signals::Signals;
use crate::classify::FailureKind;
use crate::ctx::{AttemptRecord, FailoverCtx, Outcome};
use crate::cut::Routes;
use crate::health::OutlierDetection;
use crate::set::PeerSet;

/// The engine's single writer of health.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) outliers: Option<OutlierDetection>,
    pub(crate) signals: Arc<Signals>,
    pub(crate) routes: Arc<Routes>,
    /// The selector's peers, over which the share of ejected peers is capped.
    pub(crate) pool: Option<PeerSet>,
}

/// Whether the last of `attempts`, failing as `kind`, is its peer's fault: a failure that
/// counts against a peer (not the client's, not the proxy's own), that the stall cut did not
/// make (the retry that follows judges a cut, in [`Feed::blame_cuts`]), and that is not the
/// second of a query of death ([`rules::poisoned`]), which blames no second peer.
fn blamed(attempts: &[AttemptRecord], kind: FailureKind) -> bool {
    attempts.last().is_some_and(|rec| {
        kind.counts_against_peer() && !rec.stall_cut(kind) && !rules::poisoned(attempts, kind)
    })
}

impl Feed {
    /// Ends the current attempt with `outcome`, and reports it.
    pub(crate) fn finish(&self, ctx: &mut FailoverCtx, outcome: Outcome) {
        let route = ctx.route;
        // A `Retry-After` holds a peer's cost up only on a 503: on a 429 it is often one
        // client's limit.
        let hold = ctx.retry_after.filter(|_| {
            matches!(
                outcome,
                Outcome::Responded { status: 503 }
                    | Outcome::Failed {
                        kind: FailureKind::Status(503),
                        ..
                    }
            )
        });
        // What counts towards the peer's failure rate: a failure it is blamed for, or an
        // answer.
        let counted = match outcome {
            Outcome::Failed { kind, .. } => blamed(ctx.attempts(), kind).then_some(true),
            Outcome::Responded { status } => Some(rules::is_failed_answer(status)),
            Outcome::Pending => None,
        };
        let Some(rec) = ctx.current_mut() else {
            return;
        };
        let waited = matches!(rec.outcome(), Outcome::Pending);
        let now = Instant::now();
        rec.finish(outcome, now);
        let took = rec.duration().unwrap_or_default();
        self.signals.attempt(rec.peer(), &outcome);
        if !waited {
            return;
        }
        // The peer learns how long it took to answer; a failure teaches only a wait longer than
        // the estimate, and one on the client's side, or the cut's own, teaches nothing.
        let health = rec.peer().health();
        health.header_done();
        if let Some(failed) = counted {
            health.learn_outcome(failed, now);
        }
        match outcome {
            // A fast failure is not a fast answer.
            Outcome::Responded { status } if rules::is_failed_answer(status) => {
                health.learn_failed_answer(took, hold, now);
            }
            Outcome::Failed {
                kind: FailureKind::Status(_) | FailureKind::GrpcStatus(_),
                ..
            } => health.learn_failed_answer(took, hold, now),
            Outcome::Responded { .. } => {
                health.learn_latency(took, true, now);
                if let Some(route) = route {
                    self.routes.learn(route, took);
                }
            }
            Outcome::Failed {
                kind: FailureKind::Downstream,
                ..
            } => {}
            Outcome::Failed { kind, .. } if rec.stall_cut(kind) => {}
            // An abandoned connect teaches the connect time it was given, and nothing else.
            Outcome::Failed {
                kind: FailureKind::ConnectTimeout,
                ..
            } if rec.cut.connect => health.learn_connect(took),
            _ => health.learn_latency(took, false, now),
        }
    }

    /// The current attempt failed with `kind`: counted against its peer when it is to blame
    /// ([`blamed`]).
    pub(crate) fn failed(&self, ctx: &FailoverCtx, kind: FailureKind) {
        if let Some(rec) = ctx
            .attempts()
            .last()
            .filter(|_| blamed(ctx.attempts(), kind))
        {
            self.count_failure(rec, kind);
        }
    }

    /// The current attempt was answered with `status` (after [`blame_cuts`](Self::blame_cuts)): a
    /// 5xx counts against the peer (health judges responses on its own terms, whether or not the
    /// policy retries them), and any other answer is a success, which re-admits an ejected peer
    /// only when the attempt was sent knowing it was ejected (its probe, or panic mode): a
    /// request already in flight when the peer was ejected proves nothing about it now.
    pub(crate) fn answered(&self, ctx: &mut FailoverCtx, status: u16) {
        let counts = self
            .outliers
            .as_ref()
            .is_some_and(|rules| rules.counts_status(status));
        if counts {
            self.failed(ctx, FailureKind::Status(status));
        }
        self.finish(ctx, Outcome::Responded { status });
        let Some(rec) = ctx.attempts().last() else {
            return;
        };
        let readmit = rec.is_probe() || rec.started_ejected;
        let Some(rules) = self.outliers.as_ref().filter(|_| !counts) else {
            return;
        };
        if rec
            .peer()
            .health()
            .record_success_counted(readmit, &*self.signals, rules.ratio())
        {
            self.signals.readmitted(rec.peer());
        }
    }

    /// Counts the stall cuts of this request against their peers, now that its last attempt
    /// answered: a cut whose limit was longer than that answer took stalled on a peer where
    /// another answered in time. A request slow everywhere blames no one.
    pub(crate) fn blame_cuts(&self, ctx: &FailoverCtx) {
        let Some((last, earlier)) = ctx.attempts().split_last() else {
            return;
        };
        if earlier.is_empty() {
            return;
        }
        let took = last.started().elapsed();
        for rec in earlier {
            if rec.cut.header_cut() && rec.cut.header.is_some_and(|limit| took < limit) {
                self.count_failure(rec, FailureKind::HeaderTimeout);
            }
        }
    }

    /// Counts a failure of `kind` against the peer of `rec` under the outlier rules; an
    /// ejection starts the peer's background probe. An abandoned connect counts as any failure,
    /// not as a connect failure: the peer may only be slower than it was.
    fn count_failure(&self, rec: &AttemptRecord, kind: FailureKind) {
        let Some(rules) = &self.outliers else {
            return;
        };
        let peer = rec.peer();
        let connect =
            kind.is_connect() && !(kind == FailureKind::ConnectTimeout && rec.cut.connect);
        // Asked only when the failure would eject: one pass over the pool.
        let may_eject = || {
            self.pool.as_ref().is_none_or(|pool| {
                let peers = pool.snapshot();
                let ejected = peers.iter().filter(|p| p.health().is_ejected()).count();
                ejected < rules.max_ejected(peers.len())
            })
        };
        if let Some(ejection) = peer.health().record_failure_as(
            connect,
            &rules.thresholds(),
            rules.ratio(),
            &*self.signals,
            &may_eject,
        ) {
            self.signals.ejected(peer, ejection, kind);
            if let Some(probe) = rules.recovery() {
                let give_up = rules.max_ejection();
                crate::health::recovery::start(peer, probe, give_up, &self.signals);
            }
        }
    }
}
