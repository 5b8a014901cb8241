//! The safety rules, once: plain facts about a failure in, the reason not to retry out. Both the
//! decision after a failure and the question before an attempt ("would a cut of it be
//! retried?") apply these, so the two can never disagree.

use std::time::Duration;

use crate::classify::FailureKind;
use crate::ctx::{AttemptRecord, Outcome, StopReason};

/// What the rules need to know of a failure, real or foreseen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// What failed.
    pub(crate) kind: FailureKind,
    /// The number of the attempt that failed (from 1).
    pub(crate) attempt: u32,
    /// The policy's attempt cap.
    pub(crate) max_attempts: u32,
    /// Part of the response already went to the client.
    pub(crate) response_started: bool,
    /// The request's method is idempotent.
    pub(crate) idempotent: bool,
    /// The policy opts in to replaying this non-idempotent request.
    pub(crate) replay_opt_in: bool,
    /// The request body fits pingora's replay buffer.
    pub(crate) body_replayable: bool,
    /// The policy would retry this failure.
    pub(crate) policy_retries: bool,
    /// What is left of the overall deadline, if there is one.
    pub(crate) time_left: Option<Duration>,
}

/// Why a failure with these facts is not retried, or `None` when it may be (the budget and a
/// peer to go to permitting). The rules, in the order they are applied:
/// 1. nobody is left to answer (the client side failed);
/// 2. nothing is retried once anything was written to the client;
/// 3. a non-idempotent request that may have been processed is not replayed, unless the policy
///    opts in;
/// 4. a body that outgrew the replay buffer is not sent again once it was sent;
/// 5. the policy says;
/// 6. the attempt cap;
/// 7. the overall deadline.
pub(crate) fn stop(f: &Facts) -> Option<StopReason> {
    let sent_upstream = !f.kind.is_connect();
    if f.kind == FailureKind::Downstream {
        Some(StopReason::ClientGone)
    } else if f.response_started {
        Some(StopReason::ResponseStarted)
    } else if f.kind.may_have_processed() && !f.idempotent && !f.replay_opt_in {
        Some(StopReason::NotIdempotent)
    } else if sent_upstream && !f.body_replayable {
        Some(StopReason::BodyNotReplayable)
    } else if !f.policy_retries {
        Some(StopReason::Policy)
    } else if f.attempt >= f.max_attempts {
        Some(StopReason::MaxAttempts)
    } else if f.time_left.is_some_and(|left| left.is_zero()) {
        Some(StopReason::Deadline)
    } else {
        None
    }
}

/// Whether a cut of an attempt about to be made, ending its `configured` timeout at `limit`
/// with the failure `f` foresees, would be retried: the rules allow it, and the deadline leaves
/// the retry its full configured timeout after the cut.
pub(crate) fn cut_is_retried(f: &Facts, configured: Duration, limit: Duration) -> bool {
    stop(f).is_none()
        && f.time_left
            .is_none_or(|left| left > configured.saturating_add(limit))
}

/// Whether the stall cut may end the wait for the header of the attempt about to be made on a
/// liveness check left unanswered, after `attempts`: once per request. A second peer silent on
/// the same request, its check unanswered too, points at the request, or at what the peers
/// share, not at that peer, as two peers failing it alike do ([`poisoned`]): a pool of workers
/// all busy with slow requests leaves every peer's liveness check queued behind them, and a
/// third run would only add to that load. Its later attempts are still cut on the transport's
/// proof that their peer is unreachable (retransmitted, nothing acknowledged), which says
/// nothing of the request: two peers cut off at once still cost a request two cuts, not a read
/// timeout.
pub(crate) fn may_cut_on_check(attempts: &[AttemptRecord]) -> bool {
    !attempts.iter().any(AttemptRecord::was_cut_on_check)
}

/// Whether the retry after attempt number `attempt` (from 1), failed as `kind`, is free of the
/// retry budget: a request's first retry after a connect that failed with nothing sent is its
/// first run anywhere. Later retries are paid, so that a pool none of which can be reached
/// still costs a request about one attempt more, not the attempt cap. Both the decision after
/// a failure and the question before an attempt (whether a cut connect would be retried) ask
/// this.
pub(crate) fn retry_is_free(attempt: u32, kind: FailureKind) -> bool {
    attempt == 1 && kind.first_retry_is_free()
}

/// Whether the retry after a stall cut of attempt number `attempt` may be free of the retry
/// budget: a request's first, when its peer broke under it, silent since the attempt began and
/// not known stuck before (the watch decides that at the cut). The cut is made only on proof
/// that the peer is stuck, so the retry is the request's first run on a peer that works. The
/// requests caught on a peer as it breaks (32 at once on a host hung at deploy) all move so;
/// requests sent to a peer already known stuck, or on one that answers now and then (a pool
/// overloaded as a whole), pay, and the budget bounds what they add to the pool.
pub(crate) fn cut_retry_may_be_free(attempt: u32) -> bool {
    attempt == 1
}

/// Whether the current attempt, failing as `kind`, failed the same way as the attempt before it
/// on another peer: a 500 on both, or a connection that broke after the request was sent on
/// both (an I/O error, not a stale pooled connection). Two peers failing one request so point at
/// the request (a query of death): no third peer is tried, and no peer blamed for the second.
/// A 502, 503 or 504 is not: it speaks of the peer's state or its own upstream (draining in a
/// rolling deploy, overloaded), and a third peer may well serve the request.
pub(crate) fn poisoned(attempts: &[AttemptRecord], kind: FailureKind) -> bool {
    let [.., before, current] = attempts else {
        return false;
    };
    let alike = match (before.outcome(), kind) {
        (
            Outcome::Failed {
                kind: FailureKind::Status(a),
                ..
            },
            FailureKind::Status(b),
        ) => a == 500 && b == 500,
        (
            Outcome::Failed {
                kind: FailureKind::Io,
                ..
            },
            FailureKind::Io,
        ) => true,
        _ => false,
    };
    alike && !before.peer().same(current.peer())
}

/// Whether an answer with `status` is a failure of its peer for balancing: a 5xx. A fast one is
/// not a fast answer: it teaches latency-aware balancing a failure, not a time. A 429 is not
/// one: it is often one client's rate limit, and would let one tenant steer everyone's traffic.
pub(crate) fn is_failed_answer(status: u16) -> bool {
    (500..=599).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET whose header timed out on its first of three attempts: retried.
    fn retried() -> Facts {
        Facts {
            kind: FailureKind::HeaderTimeout,
            attempt: 1,
            max_attempts: 3,
            response_started: false,
            idempotent: true,
            replay_opt_in: false,
            body_replayable: true,
            policy_retries: true,
            time_left: None,
        }
    }

    #[test]
    fn a_retriable_failure_is_retried() {
        assert_eq!(stop(&retried()), None);
    }

    #[test]
    fn client_gone() {
        let f = Facts {
            kind: FailureKind::Downstream,
            ..retried()
        };
        assert_eq!(stop(&f), Some(StopReason::ClientGone));
    }

    #[test]
    fn response_started() {
        let f = Facts {
            response_started: true,
            ..retried()
        };
        assert_eq!(stop(&f), Some(StopReason::ResponseStarted));
    }

    #[test]
    fn not_idempotent_unless_unprocessed_or_opted_in() {
        let post = Facts {
            idempotent: false,
            ..retried()
        };
        assert_eq!(stop(&post), Some(StopReason::NotIdempotent));
        for kind in [FailureKind::ConnectRefused, FailureKind::Unprocessed] {
            assert_eq!(stop(&Facts { kind, ..post }), None, "{kind}");
        }
        let opted = Facts {
            replay_opt_in: true,
            ..post
        };
        assert_eq!(stop(&opted), None);
    }

    #[test]
    fn body_not_replayable_once_sent() {
        let f = Facts {
            body_replayable: false,
            ..retried()
        };
        assert_eq!(stop(&f), Some(StopReason::BodyNotReplayable));
        let connect = Facts {
            kind: FailureKind::ConnectRefused,
            ..f
        };
        assert_eq!(stop(&connect), None, "nothing was sent");
    }

    #[test]
    fn policy() {
        let f = Facts {
            policy_retries: false,
            ..retried()
        };
        assert_eq!(stop(&f), Some(StopReason::Policy));
    }

    #[test]
    fn max_attempts() {
        let f = Facts {
            attempt: 3,
            ..retried()
        };
        assert_eq!(stop(&f), Some(StopReason::MaxAttempts));
    }

    #[test]
    fn deadline() {
        let f = Facts {
            time_left: Some(Duration::ZERO),
            ..retried()
        };
        assert_eq!(stop(&f), Some(StopReason::Deadline));
    }

    #[test]
    fn a_cut_is_retried_only_with_the_retrys_full_timeout_left() {
        let ms = Duration::from_millis;
        let f = Facts {
            time_left: Some(ms(400)),
            ..retried()
        };
        assert!(cut_is_retried(&f, ms(300), ms(50)));
        assert!(!cut_is_retried(&f, ms(300), ms(100)));
        assert!(!cut_is_retried(
            &Facts {
                attempt: 3,
                ..retried()
            },
            ms(300),
            ms(50)
        ));
        assert!(cut_is_retried(&retried(), ms(300), ms(50)));
    }
}
