//! The standard retry policy: an attempt cap, a set of failures that retry, backoff.

use std::time::Duration;

use pingora_http::RequestHeader;

use crate::error::ConfigError;
use crate::retry::{
    Backoff, Failure, FailureKind, RetryDecision, RetryPolicy, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS,
};

/// Retries the failures it is told to, up to a number of attempts, with backoff in between.
///
/// # Default
///
/// - max attempts: 3 in all ([`DEFAULT_MAX_ATTEMPTS`])
/// - retries on: every connect failure (refused, timed out, no route, reset, TLS, the proxy's own
///   shortage of descriptors or ports), and an HTTP/2 stream the upstream refused unprocessed:
///   nothing was processed, so any request can go elsewhere. Also a response header timeout
///   (slow upstream), a closed reused connection, an I/O error, a response that is not HTTP, a
///   request write timeout and an HTTP/2 protocol failure: these can only happen after the
///   request went upstream, so the proxy's rules limit them to idempotent requests, and to
///   failures before the response reached the client. That is nginx's default
///   `proxy_next_upstream error timeout`, with its `invalid_header`. Any other error that pingora itself marks retriable is
///   retried too ([`Failure::pingora_retriable`]), so the policy never does worse than pingora's
///   own loop.
/// - retriable statuses: none
/// - retriable gRPC statuses: none (14, `UNAVAILABLE`, is the usual choice)
/// - non-idempotent routes replayed after they reached the upstream: none
/// - backoff: [`Backoff::default`] (full jitter, 25 ms base, 250 ms cap)
///
/// # Examples
///
/// ```
/// use pingora_failover::{FailureKind, StandardPolicy};
///
/// let policy = StandardPolicy::builder()
///     .with_max_attempts(2)
///     .with_retry_statuses([502, 503, 504])
///     .with_retry_grpc_statuses([14])
///     // gRPC calls are POSTs: these read-only services may be replayed.
///     .with_replay_paths(["/grpc.health.v1.Health/", "/shop.Catalog/"])
///     .without_retry_on(FailureKind::HeaderTimeout)
///     .build()?;
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct StandardPolicy {
    max_attempts: u32,
    retry_on: Vec<FailureKind>,
    statuses: Vec<u16>,
    grpc_statuses: Vec<u8>,
    replay_paths: Vec<String>,
    backoff: Backoff,
}

impl StandardPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> StandardPolicyBuilder {
        StandardPolicyBuilder {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_on: vec![
                FailureKind::ConnectRefused,
                FailureKind::ConnectTimeout,
                FailureKind::ConnectNoRoute,
                FailureKind::TlsHandshake,
                FailureKind::TlsHandshakeTimeout,
                FailureKind::ConnectOther,
                FailureKind::Local,
                FailureKind::Unprocessed,
                FailureKind::Protocol,
                FailureKind::HeaderTimeout,
                FailureKind::ReusedConnectionClosed,
                FailureKind::Io,
                FailureKind::Malformed,
                FailureKind::WriteTimeout,
            ],
            statuses: Vec::new(),
            grpc_statuses: Vec::new(),
            replay_paths: Vec::new(),
            backoff: None,
        }
    }

    /// Whether `kind` is one this policy retries.
    pub fn retries_on(&self, kind: FailureKind) -> bool {
        match kind {
            FailureKind::Status(s) => self.statuses.contains(&s),
            FailureKind::GrpcStatus(c) => self.grpc_statuses.contains(&c),
            k => self.retry_on.contains(&k),
        }
    }
}

impl Default for StandardPolicy {
    fn default() -> Self {
        Self::builder()
            .build()
            .expect("the default policy is valid")
    }
}

impl RetryPolicy for StandardPolicy {
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        let kind = failure.kind();
        // Pingora's own judgement stands where the crate has no better knowledge.
        if self.retries_on(kind) || (kind == FailureKind::Other && failure.pingora_retriable()) {
            RetryDecision::Retry
        } else {
            RetryDecision::Stop
        }
    }

    fn would_retry(&self, kind: FailureKind, _request: &RequestHeader) -> bool {
        self.retries_on(kind)
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn backoff(&self, retry: u32) -> Duration {
        self.backoff.delay(retry)
    }

    fn is_retriable_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    fn is_retriable_grpc_status(&self, code: u8) -> bool {
        self.grpc_statuses.contains(&code)
    }

    fn replay_non_idempotent(&self, failure: &Failure<'_>) -> bool {
        let path = failure.request().uri.path();
        // A path that climbs out of its prefix (`/ro/../rw`) is not under it, whatever its
        // bytes start with: the upstream resolves the dot segments. Such a path is never
        // replayed.
        !has_dot_segment(path)
            && self
                .replay_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }
}

/// Whether `path` has a `.` or `..` segment, percent-encoded or not.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// Builds a [`StandardPolicy`]; see its `# Default` section.
#[derive(Debug)]
#[must_use]
pub struct StandardPolicyBuilder {
    max_attempts: u32,
    retry_on: Vec<FailureKind>,
    statuses: Vec<u16>,
    grpc_statuses: Vec<u8>,
    replay_paths: Vec<String>,
    backoff: Option<Backoff>,
}

impl StandardPolicyBuilder {
    /// Attempts in all, the first try included: 1 means no retry.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Also retry on `kind`.
    pub fn with_retry_on(mut self, kind: FailureKind) -> Self {
        if !self.retry_on.contains(&kind) {
            self.retry_on.push(kind);
        }
        self
    }

    /// Do not retry on `kind`.
    pub fn without_retry_on(mut self, kind: FailureKind) -> Self {
        self.retry_on.retain(|k| *k != kind);
        self
    }

    /// Response statuses that fail over (typically 502, 503, 504), replacing any given before.
    /// Only idempotent requests fail over on a status, and only before anything went to the
    /// client; on the last attempt the upstream's own response is passed through.
    pub fn with_retry_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// gRPC statuses that fail over when a trailers-only response carries them (typically 14,
    /// `UNAVAILABLE`), replacing any given before. A gRPC call is a POST: it fails over only on
    /// the routes named by [`with_replay_paths`](Self::with_replay_paths), or when an earlier
    /// failure proved it unprocessed.
    pub fn with_retry_grpc_statuses(mut self, codes: impl IntoIterator<Item = u8>) -> Self {
        self.grpc_statuses = codes.into_iter().collect();
        self
    }

    /// Path prefixes whose requests may be replayed after they reached an upstream, whatever
    /// their method: routes whose handlers are idempotent in fact (a read-only gRPC service, a
    /// POST with an idempotency key). Replaces any given before. A path with a `.` or `..`
    /// segment (`/ro/../rw`, encoded or not) is never replayed: it may leave its prefix once
    /// the upstream resolves it. See [`RetryPolicy::replay_non_idempotent`].
    pub fn with_replay_paths<P: Into<String>>(
        mut self,
        prefixes: impl IntoIterator<Item = P>,
    ) -> Self {
        self.replay_paths = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// The backoff between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Checks the settings and builds the policy.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroAttempts`], [`ConfigError::TooManyAttempts`], or
    /// [`ConfigError::OutOfRange`] for a retriable status outside 400..=599, a gRPC status
    /// outside 1..=16, or a replay path that does not start with `/`.
    pub fn build(self) -> Result<StandardPolicy, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::ZeroAttempts);
        }
        if self.max_attempts > MAX_ATTEMPTS {
            return Err(ConfigError::TooManyAttempts {
                value: self.max_attempts,
                max: MAX_ATTEMPTS,
            });
        }
        if let Some(s) = self.statuses.iter().find(|s| !(400..=599).contains(*s)) {
            return Err(ConfigError::OutOfRange {
                what: "retriable status",
                value: s.to_string(),
                range: "400..=599",
            });
        }
        if let Some(c) = self.grpc_statuses.iter().find(|c| !(1..=16).contains(*c)) {
            return Err(ConfigError::OutOfRange {
                what: "retriable grpc status",
                value: c.to_string(),
                range: "1..=16",
            });
        }
        if let Some(p) = self.replay_paths.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::OutOfRange {
                what: "replay path",
                value: p.clone(),
                range: "a path starting with /",
            });
        }
        Ok(StandardPolicy {
            max_attempts: self.max_attempts,
            retry_on: self.retry_on,
            statuses: self.statuses,
            grpc_statuses: self.grpc_statuses,
            replay_paths: self.replay_paths,
            backoff: self.backoff.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Peer;
    use pingora_http::RequestHeader;

    #[test]
    fn a_replay_path_matches_only_paths_that_stay_under_it() {
        let p = StandardPolicy::builder()
            .with_replay_paths(["/ro/"])
            .build()
            .unwrap();
        let peer = Peer::new("127.0.0.1:1").unwrap();
        let replays = |path: &str| {
            let req = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
            let f = Failure::new(FailureKind::HeaderTimeout, 1, &req, &peer);
            p.replay_non_idempotent(&f)
        };
        assert!(replays("/ro/items"));
        assert!(replays("/ro/a.b/..c"), "dots inside a segment are a name");
        for path in [
            "/ro/../rw",
            "/ro/%2e%2e/rw",
            "/ro/%2E./rw",
            "/ro/./x",
            "/rw",
        ] {
            assert!(!replays(path), "{path}");
        }
    }

    #[test]
    fn defaults_retry_what_nginx_retries() {
        let p = StandardPolicy::default();
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let peer = Peer::new("127.0.0.1:1").unwrap();
        let decide = |k| p.decide(&Failure::new(k, 1, &req, &peer));
        for k in [
            FailureKind::ConnectRefused,
            FailureKind::ConnectTimeout,
            FailureKind::ConnectNoRoute,
            FailureKind::TlsHandshake,
            FailureKind::TlsHandshakeTimeout,
            FailureKind::ConnectOther,
            FailureKind::Local,
            FailureKind::Unprocessed,
            FailureKind::Protocol,
            FailureKind::HeaderTimeout,
            FailureKind::ReusedConnectionClosed,
            FailureKind::Io,
            FailureKind::Malformed,
            FailureKind::WriteTimeout,
        ] {
            assert_eq!(decide(k), RetryDecision::Retry, "{k}");
        }
        for k in [
            FailureKind::BodyTimeout,
            FailureKind::Status(503),
            FailureKind::GrpcStatus(14),
            FailureKind::Downstream,
            FailureKind::Other,
        ] {
            assert_eq!(decide(k), RetryDecision::Stop, "{k}");
        }
        assert_eq!(p.max_attempts(), 3);

        // Pingora's retry flag counts where the kind says nothing better.
        let mut other = Failure::new(FailureKind::Other, 1, &req, &peer);
        other.pingora_retriable = true;
        assert_eq!(p.decide(&other), RetryDecision::Retry);
        let mut body = Failure::new(FailureKind::BodyTimeout, 1, &req, &peer);
        body.pingora_retriable = true;
        assert_eq!(p.decide(&body), RetryDecision::Stop);
    }

    #[test]
    fn grpc_statuses_and_replay_paths_are_opt_in() {
        let p = StandardPolicy::builder()
            .with_retry_grpc_statuses([14])
            .with_replay_paths(["/pkg.Reader/"])
            .build()
            .unwrap();
        assert!(p.is_retriable_grpc_status(14) && !p.is_retriable_grpc_status(13));
        let peer = Peer::new("127.0.0.1:1").unwrap();
        let read = RequestHeader::build("POST", b"/pkg.Reader/Get", None).unwrap();
        let write = RequestHeader::build("POST", b"/pkg.Writer/Put", None).unwrap();
        let f = |r| Failure::new(FailureKind::GrpcStatus(14), 1, r, &peer);
        assert!(p.replay_non_idempotent(&f(&read)));
        assert!(!p.replay_non_idempotent(&f(&write)));
    }

    #[test]
    fn rejects_bad_settings() {
        let b = StandardPolicy::builder;
        assert_eq!(
            b().with_max_attempts(0).build().unwrap_err(),
            ConfigError::ZeroAttempts
        );
        assert!(matches!(
            b().with_max_attempts(1000).build(),
            Err(ConfigError::TooManyAttempts { .. })
        ));
        assert!(matches!(
            b().with_retry_statuses([200]).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            b().with_retry_grpc_statuses([0]).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
        assert!(matches!(
            b().with_replay_paths(["api"]).build(),
            Err(ConfigError::OutOfRange { .. })
        ));
    }
}
