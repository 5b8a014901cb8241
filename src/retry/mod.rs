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
mod standard;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use standard::{StandardPolicy, StandardPolicyBuilder};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;

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
    fn max_attempts(&self) -> u32 {
        (**self).max_attempts()
    }
    fn backoff(&self, retry: u32) -> Duration {
        (**self).backoff(retry)
    }
    fn is_retriable_status(&self, status: u16) -> bool {
        (**self).is_retriable_status(status)
    }
    fn replay_non_idempotent(&self, failure: &Failure<'_>) -> bool {
        (**self).replay_non_idempotent(failure)
    }
}

impl<T: RetryPolicy + ?Sized> RetryPolicy for Arc<T> {
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        (**self).decide(failure)
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

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The upstream refused the connection (nothing listens on the port).
    ConnectRefused,
    /// The TCP (or TCP and TLS) connect did not finish in time: a down or blackholed host.
    ConnectTimeout,
    /// No route to the upstream's host.
    ConnectNoRoute,
    /// The TLS handshake failed (including a rejected certificate).
    TlsHandshake,
    /// The TLS handshake did not finish in time.
    TlsHandshakeTimeout,
    /// Any other failure to connect.
    ConnectOther,
    /// Connected, but the response header did not arrive within the read timeout: a slow or
    /// hung upstream.
    HeaderTimeout,
    /// A read timed out after the response header went to the client.
    BodyTimeout,
    /// A pooled (reused) keep-alive connection was found closed by the upstream.
    ReusedConnectionClosed,
    /// The upstream answered with a status configured as retriable.
    Status(u16),
    /// Writing the request to the upstream timed out.
    WriteTimeout,
    /// Any other I/O error with the upstream after connecting.
    Io,
    /// The client side failed (it disconnected, or sent a request that could not be read). Not
    /// the upstream's fault: it never counts against the peer's health, and is never retried.
    Downstream,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The kind of a failure to connect.
    pub fn from_connect_error(etype: &ErrorType) -> Self {
        match etype {
            ErrorType::ConnectRefused => Self::ConnectRefused,
            ErrorType::ConnectTimedout => Self::ConnectTimeout,
            ErrorType::ConnectNoRoute => Self::ConnectNoRoute,
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
                Self::TlsHandshake
            }
            ErrorType::TLSHandshakeTimedout => Self::TlsHandshakeTimeout,
            _ => Self::ConnectOther,
        }
    }

    /// Whether the failure is evidence against the peer (everything but [`Downstream`] and
    /// [`Other`]).
    ///
    /// [`Downstream`]: Self::Downstream
    /// [`Other`]: Self::Other
    pub fn counts_against_peer(&self) -> bool {
        !matches!(self, Self::Downstream | Self::Other)
    }

    /// A short, fixed name for the kind (`connect_refused`, `header_timeout`, `status`, ...), for
    /// metric labels; the status code itself is left out to keep the label set small.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectNoRoute => "connect_no_route",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
            Self::ConnectOther => "connect_other",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::ReusedConnectionClosed => "reused_connection_closed",
            Self::Status(_) => "status",
            Self::WriteTimeout => "write_timeout",
            Self::Io => "io",
            Self::Downstream => "downstream",
            Self::Other => "other",
        }
    }

    /// Whether the failure happened before anything was sent upstream.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::ConnectRefused
                | Self::ConnectTimeout
                | Self::ConnectNoRoute
                | Self::TlsHandshake
                | Self::TlsHandshakeTimeout
                | Self::ConnectOther
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectRefused => f.write_str("connection refused"),
            Self::ConnectTimeout => f.write_str("connect timeout"),
            Self::ConnectNoRoute => f.write_str("no route"),
            Self::TlsHandshake => f.write_str("tls handshake failed"),
            Self::TlsHandshakeTimeout => f.write_str("tls handshake timeout"),
            Self::ConnectOther => f.write_str("connect error"),
            Self::HeaderTimeout => f.write_str("response header timeout"),
            Self::BodyTimeout => f.write_str("response body timeout"),
            Self::ReusedConnectionClosed => f.write_str("reused connection closed"),
            Self::Status(s) => write!(f, "status {s}"),
            Self::WriteTimeout => f.write_str("request write timeout"),
            Self::Io => f.write_str("i/o error"),
            Self::Downstream => f.write_str("client side error"),
            Self::Other => f.write_str("error"),
        }
    }
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

    /// Whether the request body can be sent again in full (it fit pingora's replay buffer).
    pub fn body_replayable(&self) -> bool {
        self.body_replayable
    }

    /// The pingora error, when the failure came from one.
    pub fn error(&self) -> Option<&'a Error> {
        self.error
    }
}
