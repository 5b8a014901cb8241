//! Building the engine: its settings, their defaults, and their checks.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::configuration::ServerConf;

use super::engine::{Failover, DEFAULT_MAX_RETRY_AFTER};
use super::feed::Feed;
use super::hedge::Hedging;
use super::queue::Queue;
use super::signals::Signals;
use crate::cut::{AdaptiveTimeouts, Watchdog};
use crate::error::{check_timeout, ConfigError};
use crate::health::{HealthEvent, OutlierDetection, RecoveryProbe};
use crate::retry::{RetryBudget, RetryPolicy, MAX_ATTEMPTS};
use crate::select::PeerSelector;

/// Longest overall deadline accepted.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// Builds a [`Failover`] engine.
///
/// # Default
///
/// - overall deadline: none (each attempt is bounded by its peer's timeouts, and the number of
///   attempts by the policy)
/// - retry budget: [`RetryBudget::default`] (20 % of requests over 10 s, or 3 a second with 20
///   at once where that is more)
/// - outlier ejection: [`OutlierDetection::default`] (1 connect failure or 5 failures in a row;
///   out for 1 s, then probed in the background until a probe passes)
/// - adaptive timeouts: [`AdaptiveTimeouts::default`] (a connect is abandoned after 10 times the
///   peer's learned connect time, at least 50 ms; a safe request's wait for its response header
///   is cut after 10 times what the peer or that kind of request typically takes, at least
///   50 ms, on evidence that the peer is stuck; never on a request's last attempt)
/// - longest `Retry-After` honoured: [`DEFAULT_MAX_RETRY_AFTER`] (3 s)
/// - hedging: off ([`with_hedging`](Self::with_hedging))
/// - queue: none: with every peer at its limit of requests in flight, a request gets a 503 at
///   once ([`with_queue`](Self::with_queue))
/// - health observer and metrics: none
#[derive(Debug)]
#[must_use]
pub struct FailoverBuilder<S, R> {
    selector: S,
    policy: R,
    deadline: Option<Duration>,
    budget: Option<RetryBudget>,
    outliers: Option<OutlierDetection>,
    max_retry_after: Duration,
    adaptive: Option<AdaptiveTimeouts>,
    hedging: Option<Hedging>,
    queue: Option<(usize, Duration)>,
    signals: Signals,
}

impl<S: PeerSelector, R: RetryPolicy> FailoverBuilder<S, R> {
    /// A builder with the defaults (see `# Default`).
    pub(crate) fn new(selector: S, policy: R) -> Self {
        Self {
            selector,
            policy,
            deadline: None,
            budget: Some(RetryBudget::default()),
            outliers: Some(OutlierDetection::default()),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            adaptive: Some(AdaptiveTimeouts::default()),
            hedging: None,
            queue: None,
            signals: Signals::default(),
        }
    }

    /// Timeouts learned per peer ([`AdaptiveTimeouts`]).
    pub fn with_adaptive_timeouts(mut self, adaptive: AdaptiveTimeouts) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// Every attempt gets the configured timeouts.
    pub fn without_adaptive_timeouts(mut self) -> Self {
        self.adaptive = None;
        self
    }

    /// An overall deadline across all attempts of a request, backoff included. No retry starts
    /// after it, and each attempt's timeouts are shortened to what is left of it.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The retry budget shared by all requests through this engine.
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only the attempt cap limits retries.
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The longest `Retry-After` (in seconds) the engine waits for when a retriable status
    /// carries one and the retry would return to a peer already tried. A longer wait, or one that
    /// would pass the overall deadline, stops the retries and passes the upstream's answer, with
    /// its `Retry-After`, to the client.
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The rules for ejecting failing peers.
    pub fn with_outlier_detection(mut self, rules: OutlierDetection) -> Self {
        self.outliers = Some(rules);
        self
    }

    /// Hedges safe requests without a body: one whose first attempt has no response header
    /// after the [`Hedging`] delay is sent to a second peer too, and the first header answers
    /// (each hedge takes a retry from the budget). Off by default: it adds requests to the pool.
    pub fn with_hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = Some(hedging);
        self
    }

    /// Lets a new request wait for a place when every peer it could go to is at its limit of
    /// requests in flight ([`PeerBuilder::with_max_requests`](crate::PeerBuilder::with_max_requests)):
    /// at most `max` requests wait at once, each for at most `wait` (1 ms to 60 s), and each
    /// place given back lets the waiting requests look again. Past either bound, the request
    /// gets the 503 it gets without a queue (Envoy's `max_pending_requests`, HAProxy's queue
    /// with `timeout queue`). Retries do not wait: a retry with every peer full stops
    /// ([`StopReason::Full`](crate::StopReason::Full)), and a request that finds no peer with
    /// none of them full (all tried, or none at all) does not wait either. Each place given back
    /// wakes every waiting request to look again, in no set order: keep the queue short. None by
    /// default.
    pub fn with_queue(mut self, max: usize, wait: Duration) -> Self {
        self.queue = Some((max, wait));
        self
    }

    /// No outlier ejection: attempts do not change peer health (active checks still do).
    pub fn without_outlier_detection(mut self) -> Self {
        self.outliers = None;
        self
    }

    /// Calls `f` on every health change this engine causes: ejected, probing, re-admitted.
    pub fn on_health_change(mut self, f: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.signals.observer = Some(Arc::new(f));
        self
    }

    /// Reports attempts, retries, budget refusals and ejections to `metrics`.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.signals.metrics = Some(metrics);
        self
    }

    /// Checks the settings against each other and against the configuration of the pingora
    /// server the engine will run in, and builds the engine. The server's configuration is
    /// required here so that its check cannot be forgotten: pingora stops retrying at
    /// `ServerConf::max_retries` attempts whatever the engine decides.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroAttempts`] or [`ConfigError::TooManyAttempts`] for the policy's attempt
    /// cap; [`ConfigError::ZeroTimeout`] or [`ConfigError::TimeoutTooLong`] for the deadline;
    /// [`ConfigError::PingoraRetryCapTooLow`] when `conf.max_retries` would cut the policy short.
    pub fn build(self, conf: &ServerConf) -> Result<Failover<S, R>, ConfigError> {
        let engine = self.validate()?;
        engine.check_server_conf(conf)?;
        Ok(engine)
    }

    /// Checks the settings and builds the engine, leaving the server's configuration to be
    /// checked by [`FailoverProxy`](crate::FailoverProxy) when it becomes a service.
    pub(crate) fn validate(self) -> Result<Failover<S, R>, ConfigError> {
        match self.policy.max_attempts() {
            0 => return Err(ConfigError::ZeroAttempts),
            n if n > MAX_ATTEMPTS => {
                return Err(ConfigError::TooManyAttempts {
                    value: n,
                    max: MAX_ATTEMPTS,
                })
            }
            _ => {}
        }
        if let Some(d) = self.deadline {
            check_timeout("overall deadline", d, MAX_DEADLINE)?;
        }
        let outliers = self.outliers.map(OutlierDetection::validate).transpose()?;
        let budget = self.budget.map(Arc::new);
        // A peer's liveness is checked as its recovery is probed: with the probe's request, or
        // with a connect when there is none.
        let liveness = outliers
            .as_ref()
            .and_then(|o| o.recovery().cloned())
            .unwrap_or_else(RecoveryProbe::connect);
        let pool = self.selector.peer_set().cloned();
        Ok(Failover {
            selector: self.selector,
            policy: self.policy,
            deadline: self.deadline,
            budget: budget.clone(),
            max_retry_after: self.max_retry_after,
            adaptive: self.adaptive,
            feed: Feed {
                outliers,
                signals: Arc::new(self.signals),
                routes: Default::default(),
                pool,
            },
            watchdog: Watchdog::new(budget, liveness),
            warmed: Default::default(),
            hedging: self.hedging,
            queue: self
                .queue
                .map(|(max, wait)| Queue::new(max, wait).map(Arc::new))
                .transpose()?,
        })
    }
}
