//! Deciding, after a failure, whether a request tries again.
//!
//! A [`RetryPolicy`] sees each [`Failure`], already classified into a [`FailureKind`], and answers
//! with a [`RetryDecision`]. The proxy then applies its safety rules whatever the policy said (see
//! [`StopReason`](crate::StopReason)): no retry once the response started downstream, no replay
//! of a non-idempotent request that reached the upstream, no replay of a body larger than
//! pingora's replay buffer, and never past the attempt cap, the deadline or the
//! [`RetryBudget`].

mod backoff;
mod budget;
mod floor;
mod standard;
mod window;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub(crate) use budget::Withdrawn;
pub use standard::{StandardPolicy, StandardPolicyBuilder};

use std::sync::Arc;
use std::time::Duration;

use pingora_error::Error;
use pingora_http::RequestHeader;

pub use crate::classify::FailureKind;
use crate::peer::Peer;

/// Attempts allowed in all (the first try included) when nothing else is configured.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The largest attempt cap accepted.
pub const MAX_ATTEMPTS: u32 = 100;

/// Decides, after a failure, whether this request tries again.
///
/// Shared across threads, so it takes `&self`. Only [`decide`](Self::decide) is required.
pub trait RetryPolicy: Send + Sync + 'static {
    /// Whether to try again after `failure`.
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision;

    /// Whether a failure of `kind` of `request` would be retried: asked before an attempt is
    /// made, where the engine may end a slow attempt early ([`AdaptiveTimeouts`]) with a failure
    /// of that kind, and only does so when the retry would follow. A cut where no retry follows
    /// turns a slow answer into an error.
    ///
    /// A question about the policy's rules, not a decision: it is asked of requests that then
    /// succeed, so it must not count anything, and must answer as [`decide`](Self::decide)
    /// would for that kind at any time and attempt. [`decide`](Self::decide) itself sees real
    /// failures only. `false` by default: a policy that does not say gets no early cuts, and its
    /// requests keep their full timeouts.
    ///
    /// [`AdaptiveTimeouts`]: crate::AdaptiveTimeouts
    fn would_retry(&self, kind: FailureKind, request: &RequestHeader) -> bool {
        let _ = (kind, request);
        false
    }

    /// The most attempts (first try included) a request may make. The proxy stops at this cap
    /// whatever [`decide`](Self::decide) says, and checks it against pingora's
    /// `ServerConf::max_retries`.
    fn max_attempts(&self) -> u32 {
        DEFAULT_MAX_ATTEMPTS
    }

    /// How long to wait before retry number `retry` (1 for the first retry).
    fn backoff(&self, retry: u32) -> Duration {
        let _ = retry;
        Duration::ZERO
    }

    /// Whether a response with `status` is a failure worth failing over (for example 503 during
    /// a rolling restart). The proxy then asks [`decide`](Self::decide) with
    /// [`FailureKind::Status`]. None by default.
    fn is_retriable_status(&self, status: u16) -> bool {
        let _ = status;
        false
    }

    /// Whether a gRPC response whose `grpc-status` is `code` is a failure worth failing over
    /// (14, `UNAVAILABLE`, is the usual one: Envoy's `retry_on: unavailable`). Only trailers-only
    /// responses are seen, where the status is in the header: once a gRPC response has sent its
    /// header, it is the client's. The proxy then asks [`decide`](Self::decide) with
    /// [`FailureKind::GrpcStatus`]. None by default.
    fn is_retriable_grpc_status(&self, code: u8) -> bool {
        let _ = code;
        false
    }

    /// The explicit opt-in to replaying a non-idempotent request (POST, PATCH, ...) that was
    /// already sent upstream. Off by default: such a request may have taken effect, and sending
    /// it again could duplicate that effect. Turn it on only for routes whose handlers are
    /// idempotent in fact (for example, with an idempotency key).
    fn replay_non_idempotent(&self, failure: &Failure<'_>) -> bool {
        let _ = failure;
        false
    }
}

impl<T: RetryPolicy + ?Sized> RetryPolicy for Box<T> {
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        (**self).decide(failure)
    }
    fn would_retry(&self, kind: FailureKind, request: &RequestHeader) -> bool {
        (**self).would_retry(kind, request)
    }
    fn max_attempts(&self) -> u32 {
        (**self).max_attempts()
    }
    fn backoff(&self, retry: u32) -> Duration {
        (**self).backoff(retry)
    }
    fn is_retriable_status(&self, status: u16) -> bool {
        (**self).is_retriable_status(status)
    }
    fn is_retriable_grpc_status(&self, code: u8) -> bool {
        (**self).is_retriable_grpc_status(code)
    }
    fn replay_non_idempotent(&self, failure: &Failure<'_>) -> bool {
        (**self).replay_non_idempotent(failure)
    }
}

impl<T: RetryPolicy + ?Sized> RetryPolicy for Arc<T> {
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        (**self).decide(failure)
    }
    fn would_retry(&self, kind: FailureKind, request: &RequestHeader) -> bool {
        (**self).would_retry(kind, request)
    }
    fn max_attempts(&self) -> u32 {
        (**self).max_attempts()
    }
    fn backoff(&self, retry: u32) -> Duration {
        (**self).backoff(retry)
    }
    fn is_retriable_status(&self, status: u16) -> bool {
        (**self).is_retriable_status(status)
    }
    fn is_retriable_grpc_status(&self, code: u8) -> bool {
        (**self).is_retriable_grpc_status(code)
    }
    fn replay_non_idempotent(&self, failure: &Failure<'_>) -> bool {
        (**self).replay_non_idempotent(failure)
    }
}

/// A policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Try another attempt, if the proxy's safety rules allow it.
    Retry,
    /// Give up: the error (or the upstream's response) goes to the client.
    Stop,
}

/// A failed attempt, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub(crate) kind: FailureKind,
    pub(crate) attempt: u32,
    pub(crate) elapsed: Duration,
    pub(crate) request: &'a RequestHeader,
    pub(crate) peer: &'a Peer,
    pub(crate) sent_upstream: bool,
    pub(crate) body_replayable: bool,
    pub(crate) pingora_retriable: bool,
    pub(crate) error: Option<&'a Error>,
}

impl<'a> Failure<'a> {
    /// A failure of `kind` on attempt number `attempt` (from 1) of `request` to `peer`, for
    /// driving a policy outside a proxy (tests, simulations). Assumes nothing was sent upstream
    /// for connect failures and something was for the others, and a replayable body.
    pub fn new(
        kind: FailureKind,
        attempt: u32,
        request: &'a RequestHeader,
        peer: &'a Peer,
    ) -> Self {
        Self {
            kind,
            attempt,
            elapsed: Duration::ZERO,
            request,
            peer,
            sent_upstream: !kind.is_connect(),
            body_replayable: true,
            pingora_retriable: false,
            error: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The attempt that failed, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Time since the request's first attempt started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The request being proxied.
    pub fn request(&self) -> &'a RequestHeader {
        self.request
    }

    /// Whether the request method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
    pub fn is_idempotent(&self) -> bool {
        self.request.method.is_idempotent()
    }

    /// The peer that failed.
    pub fn peer(&self) -> &'a Peer {
        self.peer
    }

    /// Whether any of the request may have reached the upstream. Always `false` for connect
    /// failures.
    pub fn sent_upstream(&self) -> bool {
        self.sent_upstream
    }

    /// Whether the upstream may have acted on the request: `false` for connect failures and for
    /// [`FailureKind::Unprocessed`]. The proxy replays a non-idempotent request only when this is
    /// `false` (or the policy opts in with [`RetryPolicy::replay_non_idempotent`]).
    pub fn may_have_processed(&self) -> bool {
        self.kind.may_have_processed()
    }

    /// Whether pingora itself marked the error retriable (after resolving `ReusedOnly`): for
    /// example an HTTP/2 GOAWAY, or a downgrade to HTTP/1.1. [`StandardPolicy`] retries these
    /// whatever their kind, so that the crate never does worse than pingora's own loop.
    pub fn pingora_retriable(&self) -> bool {
        self.pingora_retriable
    }

    /// Whether the request body can be sent again in full (it fit pingora's replay buffer).
    pub fn body_replayable(&self) -> bool {
        self.body_replayable
    }

    /// The pingora error, when the failure came from one.
    pub fn error(&self) -> Option<&'a Error> {
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy that retries every failure.
    struct Always;

    impl RetryPolicy for Always {
        fn decide(&self, _failure: &Failure<'_>) -> RetryDecision {
            RetryDecision::Retry
        }
        fn would_retry(&self, _kind: FailureKind, _request: &RequestHeader) -> bool {
            true
        }
    }

    #[test]
    fn policy_is_object_safe_and_forwards_through_box_and_arc() {
        let boxed: Box<dyn RetryPolicy> = Box::new(Always);
        let shared: Arc<dyn RetryPolicy> = Arc::new(Always);
        let request = RequestHeader::build("GET", b"/", None).unwrap();
        for policy in [&boxed as &dyn RetryPolicy, &shared] {
            assert!(policy.would_retry(FailureKind::HeaderTimeout, &request));
            assert_eq!(policy.max_attempts(), DEFAULT_MAX_ATTEMPTS);
        }
        // A policy that does not say gets no cut.
        struct Silent;
        impl RetryPolicy for Silent {
            fn decide(&self, _failure: &Failure<'_>) -> RetryDecision {
                RetryDecision::Retry
            }
        }
        assert!(!Silent.would_retry(FailureKind::HeaderTimeout, &request));
    }
}
