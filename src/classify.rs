//! One place that turns pingora's errors and upstream responses into the crate's kinds.
//!
//! The engine classifies every failed attempt once, here, and feeds the result to the retry
//! policy and to peer health separately (linkerd2-proxy's `classify` keeps the same split).
//!
//! # What each pingora error becomes
//!
//! Pingora 0.9.1 hands the proxy an [`ErrorType`] in three places. "Processed" says whether the
//! upstream may have acted on the request: when it cannot have, any method may go to another peer
//! (the body still has to fit pingora's replay buffer if some of it was sent). "Default" is what
//! [`StandardPolicy::default`](crate::StandardPolicy) does, before the proxy's safety rules.
//!
//! **`fail_to_connect`**: nothing of the request was sent.
//!
//! | pingora `ErrorType` | when | [`FailureKind`] | processed | default |
//! |---|---|---|---|---|
//! | `ConnectRefused` | nothing listens (RST to the SYN) | `ConnectRefused` | no | retry |
//! | `ConnectTimedout` | no SYN-ACK in time (down or blackholed host), or TCP+TLS over `total_connection_timeout` | `ConnectTimeout` | no | retry |
//! | `ConnectNoRoute` | `EHOSTUNREACH`, `ENETUNREACH` | `ConnectNoRoute` | no | retry |
//! | `ConnectError` | any other connect error: `ECONNRESET` from a listener closing mid-handshake, `ECONNABORTED`, socket options | `ConnectOther` | no | retry |
//! | `InternalError` (pingora retypes `SocketError` and `BindError` to it), or any connect error caused by `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `EADDRNOTAVAIL`, `EADDRINUSE`, `EPERM` or `EACCES` | the proxy could not open a connection for reasons of its own: out of file descriptors, memory or local ports, or a socket its host denies | `Local` | no | retry (never counted against the peer) |
//! | `ConnectProxyFailure` | a CONNECT proxy failed | `ConnectOther` | no | retry |
//! | `TLSHandshakeFailure`, `InvalidCert`, `HandshakeError`, `TLSWantX509Lookup` | the TLS handshake failed: an untrusted or wrong certificate (rustls reports it as `TLSHandshakeFailure`, openssl as `InvalidCert`), or a failed h2 preface | `TlsHandshake` | no | retry |
//! | `TLSHandshakeTimedout` | the TLS handshake did not finish in time (pingora 0.9.1 reports it as `ConnectTimedout`) | `TlsHandshakeTimeout` | no | retry |
//! | `H2Error` | a reused h2 connection that received a GOAWAY | `ConnectOther` | no | retry |
//!
//! **`error_while_proxy`**: the request (or part of it) was sent.
//!
//! | pingora `ErrorType` | when | [`FailureKind`] | processed | default |
//! |---|---|---|---|---|
//! | `H2Error` from RST_STREAM `REFUSED_STREAM` | an h2 upstream refused the stream (RFC 9113 §8.7) | `Unprocessed` | no | retry |
//! | `H2Error` from the upstream's GOAWAY | an h2 upstream shutting down, for a stream above its last processed id (h2 fails no other stream with it) | `Unprocessed` | no | retry |
//! | `H2Error` "while sending request" | h2 would not open the stream: the pooled h2 connection closed before the request went out | `Unprocessed` | no | retry |
//! | `H2Downgrade`, `InvalidH2` | an h2 upstream asked for HTTP/1.1 (`HTTP_1_1_REQUIRED`) or sent invalid frames; pingora then prefers h1 for the peer | `Protocol` | yes | retry |
//! | `ReadTimedout` (or h2 `PingTimedout`), before the response header went to the client | a slow or hung upstream | `HeaderTimeout` | yes | retry |
//! | `ReadTimedout` (or `PingTimedout`), after it | a stalled body | `BodyTimeout` | yes | stop (never retried: the client has part of a response) |
//! | `WriteTimedout` | the upstream stopped reading the request | `WriteTimeout` | yes | retry |
//! | `ConnectionClosed`, `ReadError`, `WriteError` on a reused connection, pingora's `ReusedOnly` | a pooled keep-alive connection was closed by the upstream | `ReusedConnectionClosed` | yes | retry |
//! | `ConnectionClosed`, `ReadError`, `WriteError` on a new connection | the upstream died or reset mid-request | `Io` | yes | retry |
//! | any error with source `Downstream` | the client left, or sent a request that could not be read | `Downstream` | — | stop (never retried, never counted against the peer) |
//! | `HTTPStatus(code)` | returned by `upstream_response_filter` for a retriable status | `Status(code)` | yes | as configured |
//! | `InvalidHTTPHeader`, `H1Error` from the upstream | a response that is not HTTP: plain HTTP to a TLS port, another service on the port after a redeploy, a broken header | `Malformed` | yes | retry |
//! | other `H2Error`s, anything else | an h2 stream reset with another code | `Other` | yes | stop, unless pingora marked it retriable ([`Failure::pingora_retriable`](crate::Failure::pingora_retriable)) |
//!
//! **The response filter**: a response is a failure only when the policy says so.
//!
//! | response | [`FailureKind`] | processed | default |
//! |---|---|---|---|
//! | a status the policy names ([`RetryPolicy::is_retriable_status`](crate::RetryPolicy::is_retriable_status)) | `Status(code)` | yes | retry |
//! | a gRPC trailers-only response (`content-type: application/grpc…`, `grpc-status` in the header) with a code the policy names ([`RetryPolicy::is_retriable_grpc_status`](crate::RetryPolicy::is_retriable_grpc_status); 14 `UNAVAILABLE`, as Envoy's `retry_on: unavailable`) | `GrpcStatus(code)` | yes | retry, when configured |
//!
//! "Processed: yes" limits a retry to idempotent requests (and to routes the policy opts in with
//! [`RetryPolicy::replay_non_idempotent`](crate::RetryPolicy::replay_non_idempotent)), and to
//! failures before anything went to the client.
//!
//! # The status a client gets
//!
//! When the last attempt fails, the client gets **504 Gateway Timeout** for a timeout (connect,
//! TLS handshake, response header, request write, h2 ping) and **502 Bad Gateway** for every other
//! upstream failure (refused, reset, no route, TLS, a broken response). A retriable status that
//! could not be retried is passed through as the upstream sent it. This is what nginx and Envoy
//! answer; pingora's default answers 502 for timeouts too.

use std::fmt;
use std::time::Duration;

use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;

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
    /// Any other failure to connect, such as a reset while connecting (an upstream closing its
    /// listener mid-handshake as it restarts). Nothing was sent.
    ConnectOther,
    /// The proxy could not open a connection for reasons of its own: it is out of file
    /// descriptors (`EMFILE`, `ENFILE`), memory or buffers, or local ports (`EADDRNOTAVAIL`), or
    /// its host denies the socket (`EPERM`, `EACCES`). Nothing was sent, and the peer is not to
    /// blame: it never counts against the peer's health.
    Local,
    /// The upstream received the request and said it did not process it: an HTTP/2
    /// `REFUSED_STREAM`, or a `GOAWAY` for a stream above the last one it processed
    /// (RFC 9113 §8.7). Safe to send elsewhere, whatever the method.
    Unprocessed,
    /// An HTTP/2 upstream could not speak HTTP/2 for this request: it asked for HTTP/1.1, or
    /// sent invalid frames. Pingora marks these retriable and prefers HTTP/1.1 for the peer after.
    Protocol,
    /// Connected, but the response header did not arrive within the read timeout: a slow or
    /// hung upstream.
    HeaderTimeout,
    /// A read timed out after the response header went to the client.
    BodyTimeout,
    /// A pooled (reused) keep-alive connection was found closed by the upstream.
    ReusedConnectionClosed,
    /// The upstream answered with a status configured as retriable.
    Status(u16),
    /// The upstream answered a gRPC call with a status configured as retriable (for example 14,
    /// `UNAVAILABLE`), in a trailers-only response.
    GrpcStatus(u8),
    /// Writing the request to the upstream timed out.
    WriteTimeout,
    /// Any other I/O error with the upstream after connecting.
    Io,
    /// The upstream's answer was not HTTP: plain HTTP sent to a TLS port, another service on the
    /// port after a redeploy, a broken response header. Counts against the peer.
    Malformed,
    /// The client side failed (it disconnected, or sent a request that could not be read). Not
    /// the upstream's fault: it never counts against the peer's health, and is never retried.
    Downstream,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// The kind of a failure to connect (pingora's `fail_to_connect`).
    pub fn from_connect_error(etype: &ErrorType) -> Self {
        match etype {
            ErrorType::ConnectRefused => Self::ConnectRefused,
            ErrorType::ConnectTimedout => Self::ConnectTimeout,
            ErrorType::ConnectNoRoute => Self::ConnectNoRoute,
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::TLSWantX509Lookup => Self::TlsHandshake,
            ErrorType::TLSHandshakeTimedout => Self::TlsHandshakeTimeout,
            // Pingora retypes a failed socket or bind to `InternalError`.
            ErrorType::InternalError | ErrorType::SocketError | ErrorType::BindError => Self::Local,
            _ => Self::ConnectOther,
        }
    }

    /// The kind of a failure to connect, from the error itself: as
    /// [`from_connect_error`](Self::from_connect_error), and [`Local`](Self::Local) whatever the
    /// type when the operating system's error says the proxy itself was short of something.
    pub fn from_connect(e: &Error) -> Self {
        if local_os_error(e) {
            return Self::Local;
        }
        Self::from_connect_error(e.etype())
    }

    /// Whether the failure is evidence against the peer (everything but [`Downstream`],
    /// [`Local`] and [`Other`]).
    ///
    /// [`Downstream`]: Self::Downstream
    /// [`Local`]: Self::Local
    /// [`Other`]: Self::Other
    pub fn counts_against_peer(&self) -> bool {
        !matches!(self, Self::Downstream | Self::Local | Self::Other)
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
            Self::Local => "local",
            Self::Unprocessed => "unprocessed",
            Self::Protocol => "protocol",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::ReusedConnectionClosed => "reused_connection_closed",
            Self::Status(_) => "status",
            Self::GrpcStatus(_) => "grpc_status",
            Self::WriteTimeout => "write_timeout",
            Self::Io => "io",
            Self::Malformed => "malformed",
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
                | Self::Local
        )
    }

    /// Whether a request's first retry after this failure is free of the retry budget: the
    /// connection failed before anything was sent (TLS handshakes excepted, which cost the
    /// peer work), so the retry is the request's first run anywhere.
    pub(crate) fn first_retry_is_free(&self) -> bool {
        matches!(
            self,
            Self::ConnectRefused
                | Self::ConnectTimeout
                | Self::ConnectNoRoute
                | Self::ConnectOther
                | Self::Local
        )
    }

    /// Whether the upstream may have acted on the request. `false` for connect failures (nothing
    /// was sent) and for [`Unprocessed`](Self::Unprocessed) (the upstream said so): such a request
    /// may go to another peer whatever its method.
    pub fn may_have_processed(&self) -> bool {
        !(self.is_connect() || *self == Self::Unprocessed)
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
            Self::Local => f.write_str("local resource error"),
            Self::Unprocessed => f.write_str("refused unprocessed"),
            Self::Protocol => f.write_str("http/2 protocol"),
            Self::HeaderTimeout => f.write_str("response header timeout"),
            Self::BodyTimeout => f.write_str("response body timeout"),
            Self::ReusedConnectionClosed => f.write_str("reused connection closed"),
            Self::Status(s) => write!(f, "status {s}"),
            Self::GrpcStatus(s) => write!(f, "grpc-status {s}"),
            Self::WriteTimeout => f.write_str("request write timeout"),
            Self::Io => f.write_str("i/o error"),
            Self::Malformed => f.write_str("malformed response"),
            Self::Downstream => f.write_str("client side error"),
            Self::Other => f.write_str("error"),
        }
    }
}

/// The context pingora-core gives an HTTP/2 stream it could not open.
const H2_NOT_SENT: &str = "while sending request";

/// The name pingora-core gives an HTTP/2 ping that went unanswered.
const PING_TIMEDOUT: &str = "PingTimedout";

/// The kind of an error after connecting (pingora's `error_while_proxy`). `response_started`:
/// part of the response went to the client; `reused_closed`: pingora marked the error
/// `ReusedOnly` and the connection was a reused one.
pub(crate) fn proxy_error(e: &Error, response_started: bool, reused_closed: bool) -> FailureKind {
    if *e.esource() == ErrorSource::Downstream {
        return FailureKind::Downstream;
    }
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::Custom(PING_TIMEDOUT) if response_started => {
            FailureKind::BodyTimeout
        }
        ErrorType::ReadTimedout | ErrorType::Custom(PING_TIMEDOUT) => FailureKind::HeaderTimeout,
        ErrorType::WriteTimedout => FailureKind::WriteTimeout,
        _ if reused_closed => FailureKind::ReusedConnectionClosed,
        ErrorType::H2Error if h2_unprocessed(e) => FailureKind::Unprocessed,
        ErrorType::H2Downgrade | ErrorType::InvalidH2 => FailureKind::Protocol,
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            FailureKind::Io
        }
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error
            if *e.esource() == ErrorSource::Upstream =>
        {
            FailureKind::Malformed
        }
        _ => FailureKind::Other,
    }
}

/// Whether an operating system error under `e` says the proxy itself was short of something
/// (file descriptors, memory, buffers, local ports) or denied the socket: not the peer's doing.
pub(crate) fn local_os_error(e: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io
                .raw_os_error()
                .is_some_and(|code| LOCAL_ERRNOS.contains(&code));
        }
        cause = match c.downcast_ref::<Error>() {
            Some(p) => p.cause.as_deref().map(|c| c as _),
            None => c.source(),
        };
    }
    false
}

/// The operating system's errors that are the proxy's own at connect time.
#[cfg(unix)]
const LOCAL_ERRNOS: [i32; 8] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::EADDRNOTAVAIL,
    libc::EADDRINUSE,
    libc::EPERM,
    libc::EACCES,
];

/// Whether an HTTP/2 error proves the stream was not processed (RFC 9113 §8.7): the upstream
/// reset it with `REFUSED_STREAM`, or sent a `GOAWAY` whose last stream id is below it. h2 fails
/// a stream with the upstream's GOAWAY only in that case, whatever the GOAWAY's code: streams at
/// or below the last id run on, and fail with an I/O error if the connection then closes. A
/// GOAWAY that h2 itself sends (`is_library`) fails every stream, so it proves nothing.
///
/// A stream h2 would not open is not processed either: pingora 0.9.1 fails
/// `write_request_header` with an `H2Error` "while sending request" when the connection it took
/// from the pool closed before the request went out (the upstream went away between two
/// requests), and nothing of the request was written.
fn h2_unprocessed(e: &Error) -> bool {
    if e.context
        .as_ref()
        .is_some_and(|c| c.as_str() == H2_NOT_SENT)
    {
        return true;
    }
    let Some(h2) = e.root_cause().downcast_ref::<h2::Error>() else {
        return false;
    };
    h2.is_remote()
        && (h2.is_go_away() || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// The status a client gets when the last attempt failed with `e`: 504 for an upstream timeout,
/// 502 for any other upstream failure, the code of an `HTTPStatus` error, and pingora's own
/// answers otherwise (400 for a bad request, 0 for a client that is gone, 500 for an internal
/// error).
pub fn error_status(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (
            ErrorType::ConnectTimedout
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::Custom(PING_TIMEDOUT),
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}

/// `grpc-status`, named once rather than parsed on every response.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The gRPC status of a trailers-only response: `grpc-status` in the header of a gRPC response.
pub(crate) fn grpc_status(response: &ResponseHeader) -> Option<u8> {
    let grpc = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return None;
    }
    let code = response.headers.get(&GRPC_STATUS)?;
    std::str::from_utf8(code.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The wait a response asks for in `Retry-After`, in delta-seconds (the HTTP-date form is not
/// read: it depends on the two clocks agreeing).
pub(crate) fn retry_after(response: &ResponseHeader) -> Option<Duration> {
    let v = response.headers.get(http::header::RETRY_AFTER)?;
    let secs: u64 = std::str::from_utf8(v.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        let mut e = Error::new(etype);
        e.esource = source;
        e
    }

    #[test]
    fn every_connect_error_is_a_connect_kind() {
        for t in [
            ErrorType::ConnectRefused,
            ErrorType::ConnectTimedout,
            ErrorType::ConnectNoRoute,
            ErrorType::ConnectError,
            ErrorType::SocketError,
            ErrorType::BindError,
            ErrorType::ConnectProxyFailure,
            ErrorType::TLSHandshakeFailure,
            ErrorType::TLSHandshakeTimedout,
            ErrorType::InvalidCert,
            ErrorType::HandshakeError,
            ErrorType::H2Error,
            ErrorType::InternalError,
        ] {
            let k = FailureKind::from_connect_error(&t);
            assert!(k.is_connect() && !k.may_have_processed(), "{t:?}");
        }
        assert_eq!(
            FailureKind::from_connect_error(&ErrorType::ConnectError),
            FailureKind::ConnectOther
        );
    }

    #[test]
    fn h2_refusals_are_unprocessed_and_other_resets_are_not() {
        let wrap = |h: h2::Error| {
            let mut e = Error::because(ErrorType::H2Error, "while reading h2 header", h);
            e.esource = ErrorSource::Upstream;
            e
        };
        let refused = wrap(h2::Error::from(h2::Reason::REFUSED_STREAM));
        // `From<Reason>` builds a locally initiated reset: not the upstream's word.
        assert_eq!(proxy_error(&refused, false, false), FailureKind::Other);
        // A stream h2 would not open on a pooled connection that had closed: nothing was sent,
        // as pingora's `write_request_header` reports it.
        let closed = h2::Error::from(h2::Reason::CANCEL);
        let mut not_sent = Error::because(ErrorType::H2Error, H2_NOT_SENT, closed);
        not_sent.esource = ErrorSource::Upstream;
        assert_eq!(
            proxy_error(&not_sent, false, false),
            FailureKind::Unprocessed
        );
        assert_eq!(
            proxy_error(
                &err(ErrorType::H2Downgrade, ErrorSource::Upstream),
                false,
                false
            ),
            FailureKind::Protocol
        );
    }

    #[test]
    fn timeouts_split_on_whether_the_response_started() {
        let e = err(ErrorType::ReadTimedout, ErrorSource::Upstream);
        assert_eq!(proxy_error(&e, false, false), FailureKind::HeaderTimeout);
        assert_eq!(proxy_error(&e, true, false), FailureKind::BodyTimeout);
        let ping = err(ErrorType::Custom(PING_TIMEDOUT), ErrorSource::Upstream);
        assert_eq!(proxy_error(&ping, false, false), FailureKind::HeaderTimeout);
        let down = err(ErrorType::ReadTimedout, ErrorSource::Downstream);
        assert_eq!(proxy_error(&down, false, false), FailureKind::Downstream);
        let closed = err(ErrorType::ConnectionClosed, ErrorSource::Upstream);
        assert_eq!(
            proxy_error(&closed, false, true),
            FailureKind::ReusedConnectionClosed
        );
        assert_eq!(proxy_error(&closed, false, false), FailureKind::Io);
    }

    #[test]
    fn a_final_timeout_is_504_and_a_refusal_502() {
        let up = |t| error_status(&err(t, ErrorSource::Upstream));
        assert_eq!(up(ErrorType::ReadTimedout), 504);
        assert_eq!(up(ErrorType::ConnectTimedout), 504);
        assert_eq!(up(ErrorType::WriteTimedout), 504);
        assert_eq!(up(ErrorType::ConnectRefused), 502);
        assert_eq!(up(ErrorType::ConnectError), 502);
        assert_eq!(up(ErrorType::HTTPStatus(503)), 503);
        let down = |t| error_status(&err(t, ErrorSource::Downstream));
        assert_eq!(down(ErrorType::ReadError), 0);
        assert_eq!(down(ErrorType::InvalidHTTPHeader), 400);
    }

    #[test]
    fn reads_grpc_status_and_retry_after() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("grpc-status", "14").unwrap();
        assert_eq!(grpc_status(&r), None, "not a gRPC response");
        r.insert_header("content-type", "application/grpc+proto")
            .unwrap();
        assert_eq!(grpc_status(&r), Some(14));
        let mut r = ResponseHeader::build(503, None).unwrap();
        assert_eq!(retry_after(&r), None);
        r.insert_header("retry-after", " 2 ").unwrap();
        assert_eq!(retry_after(&r), Some(Duration::from_secs(2)));
        r.insert_header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap();
        assert_eq!(retry_after(&r), None);
    }
}
