//! The standard retry policy: an attempt cap, a set of failures that retry, backoff.

use std::time::Duration;

use crate::error::ConfigError;
use crate::retry::{
    Backoff, Failure, FailureKind, RetryDecision, RetryPolicy, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS,
};

/// Retries the failures it is told to, up to a number of attempts, with backoff in between.
///
/// # Default
///
/// - max attempts: 3 in all ([`DEFAULT_MAX_ATTEMPTS`])
/// - retries on: connection refused, connect timeout, no route, TLS handshake failure and TLS
///   handshake timeout (nothing was sent, so any request can go elsewhere); a response header
///   timeout (slow upstream), a closed reused connection, an I/O error and a request write
///   timeout. These last four can only happen after the request went upstream, so the proxy's
///   rules limit them to idempotent requests, and to failures before the response reached the
///   client. That is nginx's default `proxy_next_upstream error timeout`.
/// - retriable statuses: none
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
///     .without_retry_on(FailureKind::HeaderTimeout)
///     .build()?;
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct StandardPolicy {
    max_attempts: u32,
    retry_on: Vec<FailureKind>,
    statuses: Vec<u16>,
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
                FailureKind::HeaderTimeout,
                FailureKind::ReusedConnectionClosed,
                FailureKind::Io,
                FailureKind::WriteTimeout,
            ],
            statuses: Vec::new(),
            backoff: None,
        }
    }

    /// Whether `kind` is one this policy retries.
    pub fn retries_on(&self, kind: FailureKind) -> bool {
        match kind {
            FailureKind::Status(s) => self.statuses.contains(&s),
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
        if self.retries_on(failure.kind()) {
            RetryDecision::Retry
        } else {
            RetryDecision::Stop
        }
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
}

/// Builds a [`StandardPolicy`]; see its `# Default` section.
#[derive(Debug)]
#[must_use]
pub struct StandardPolicyBuilder {
    max_attempts: u32,
    retry_on: Vec<FailureKind>,
    statuses: Vec<u16>,
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
    /// [`ConfigError::OutOfRange`] for a retriable status outside 400..=599.
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
        Ok(StandardPolicy {
            max_attempts: self.max_attempts,
            retry_on: self.retry_on,
            statuses: self.statuses,
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
            FailureKind::HeaderTimeout,
            FailureKind::ReusedConnectionClosed,
            FailureKind::Io,
            FailureKind::WriteTimeout,
        ] {
            assert_eq!(decide(k), RetryDecision::Retry, "{k}");
        }
        for k in [
            FailureKind::ConnectOther,
            FailureKind::BodyTimeout,
            FailureKind::Status(503),
            FailureKind::Downstream,
            FailureKind::Other,
        ] {
            assert_eq!(decide(k), RetryDecision::Stop, "{k}");
        }
        assert_eq!(p.max_attempts(), 3);
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
    }
}
