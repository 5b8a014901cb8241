//! Timeouts learned per peer: a connect, or an answer, that runs far past what the peer has
//! shown is abandoned early, and the request goes to the next peer.

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use crate::classify::FailureKind;
use crate::error::{check_timeout, ConfigError};
use crate::peer::Peer;

/// How far past a peer's learned times an attempt is abandoned.
///
/// A peer's connect time ([`PeerHealth::connect_time`](crate::PeerHealth::connect_time)) and
/// answer time ([`PeerHealth::latency`](crate::PeerHealth::latency)) are learned from its
/// traffic. A connect that takes `factor` times the learned connect time (but at least
/// `floor`) is abandoned: a host that vanished leaves connects hanging, and waiting out the
/// configured connect timeout there only delays the failover that follows. Nothing was sent,
/// so this is safe for any request. The configured timeout stays the upper bound, and the last
/// attempt a request is allowed always gets it in full.
///
/// The stall cut does the same with the time to the response header, for safe requests (GET,
/// HEAD, OPTIONS, TRACE) without a body: when the header is `factor` times later than the peer
/// typically answers (a moving average of its last 20 or so answers: the peak-sensitive
/// estimate that balancing uses holds a spike for seconds, and would hold the cut back with
/// it), at least `floor`, and the peer has answered nothing else for that long, the attempt is
/// cut and the request goes to the next peer. Safe requests only, because the cut attempt may
/// run on upstream beside its retry (a PUT or a DELETE overlapping its own replay could undo a
/// later write); without a body, because the wait would count the time a body takes to send. A
/// peer that keeps answering is alive, and a slow request there keeps its full timeout. Only
/// the wait for the header is cut: once it has come, the body takes the time it takes (a
/// stream of server-sent events, a long poll answering in parts). A cut counts against its peer
/// only when the retry then answered within the time the cut peer was given: a request that is
/// slow everywhere (a report, an export) is slow, not a sign of a broken peer. The cut takes its
/// retry from the budget as it cuts, and makes no cut when the budget is spent. (It shuts the
/// attempt's connection down, from outside pingora, which offers no hook while a request waits;
/// it applies to peers that speak HTTP/1 only, where a connection carries one request at a
/// time, and [`Failover::connected_to_upstream`] arms it.)
///
/// [`Failover::connected_to_upstream`]: crate::Failover::connected_to_upstream
///
/// # Default
///
/// - connect: abandoned after 10 times the learned connect time, at least 50 ms (a SYN lost on
///   a LAN is resent after 1 s: a connect that slow goes to the next peer instead)
/// - stall cut: after 10 times what the peer typically takes to answer, at least 50 ms, while
///   it answers nothing else (so a broken peer costs a client about 50 ms, not the read
///   timeout)
///
/// Neither cut is made where no retry could follow it: on the last attempt a request is
/// allowed, when the retry budget is spent, when the deadline would leave the retry less than
/// the configured timeout, or when the policy would not retry that failure. An abandoned
/// connect counts against its peer as any failure does, not as a connect failure (one of which
/// ejects): the peer may only be slower than it was.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveTimeouts {
    connect: Option<Bound>,
    header: Option<Bound>,
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    factor: f64,
    floor: Duration,
}

impl Bound {
    fn new(factor: f64, floor: Duration) -> Result<Self, ConfigError> {
        if !(1.0..=1000.0).contains(&factor) {
            return Err(ConfigError::OutOfRange {
                what: "adaptive timeout factor",
                value: factor.to_string(),
                range: "1.0..=1000.0",
            });
        }
        check_timeout("adaptive timeout floor", floor, Duration::from_secs(3600))?;
        Ok(Self { factor, floor })
    }

    /// The timeout for a peer that has shown `learned`, under the `configured` one.
    fn limit(&self, learned: Duration, configured: Duration) -> Duration {
        Duration::try_from_secs_f64(learned.as_secs_f64() * self.factor)
            .unwrap_or(configured)
            .max(self.floor)
            .min(configured)
    }
}

impl Default for AdaptiveTimeouts {
    fn default() -> Self {
        Self {
            connect: Some(Bound {
                factor: 10.0,
                floor: Duration::from_millis(50),
            }),
            header: Some(Bound {
                factor: 10.0,
                floor: Duration::from_millis(50),
            }),
        }
    }
}

impl AdaptiveTimeouts {
    /// The defaults (see `# Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Abandons a connect after `factor` times the peer's learned connect time, at least
    /// `floor`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a factor below 1; a timeout error for a zero floor.
    pub fn with_connect(mut self, factor: f64, floor: Duration) -> Result<Self, ConfigError> {
        self.connect = Some(Bound::new(factor, floor)?);
        Ok(self)
    }

    /// Connects always get the configured timeout.
    #[must_use]
    pub fn without_connect(mut self) -> Self {
        self.connect = None;
        self
    }

    /// Cuts a safe request's attempt whose response header takes `factor` times what the peer
    /// typically takes, at least `floor`, while the peer answers nothing else, and retries it
    /// on another peer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a factor below 1; a timeout error for a zero floor.
    pub fn with_stall_cut(mut self, factor: f64, floor: Duration) -> Result<Self, ConfigError> {
        self.header = Some(Bound::new(factor, floor)?);
        Ok(self)
    }

    /// Response headers always get the configured read timeout.
    #[must_use]
    pub fn without_stall_cut(mut self) -> Self {
        self.header = None;
        self
    }

    /// Whether the stall cut is on.
    pub(crate) fn cuts_stalls(&self) -> bool {
        self.header.is_some()
    }

    /// Lowers `target`'s connect timeout for an attempt to `peer`, and sets the limit of its
    /// wait for the header, where `retry_after` says that a failure of that kind, cutting that
    /// configured timeout short, would be retried (a cut where no retry can follow would turn a
    /// slow answer into an error).
    pub(crate) fn apply(
        &self,
        peer: &Peer,
        target: &mut HttpPeer,
        retry_after: impl Fn(FailureKind, Duration, Duration) -> bool,
    ) -> Cut {
        let options = &mut target.options;
        let health = peer.health();
        Cut {
            connect: lower(
                self.connect,
                &mut options.connection_timeout,
                || health.connect_time(),
                |configured, limit| retry_after(FailureKind::ConnectTimeout, configured, limit),
            ),
            header: limit(
                self.header,
                options.read_timeout,
                || health.typical_latency(),
                |configured, limit| retry_after(FailureKind::HeaderTimeout, configured, limit),
            ),
            watch: None,
        }
    }
}

/// Lowers `timeout` to what `bound` makes of the peer's `learned` time, when that is shorter and
/// a failure cutting the configured timeout short would be `retried`; whether it did.
fn lower(
    bound: Option<Bound>,
    timeout: &mut Option<Duration>,
    learned: impl FnOnce() -> Option<Duration>,
    retried: impl FnOnce(Duration, Duration) -> bool,
) -> bool {
    match limit(bound, *timeout, learned, retried) {
        Some(limit) => {
            *timeout = Some(limit);
            true
        }
        None => false,
    }
}

/// What `bound` makes of the peer's `learned` time, when that is shorter than the `configured`
/// timeout and a failure cutting it short would be `retried`.
fn limit(
    bound: Option<Bound>,
    configured: Option<Duration>,
    learned: impl FnOnce() -> Option<Duration>,
    retried: impl FnOnce(Duration, Duration) -> bool,
) -> Option<Duration> {
    let (Some(bound), Some(configured)) = (bound, configured) else {
        return None;
    };
    let limit = bound.limit(learned()?, configured);
    (limit < configured && retried(configured, limit)).then_some(limit)
}

/// What [`AdaptiveTimeouts`] did to an attempt: whether it lowered the connect timeout, the
/// limit of the wait for the header, and the watch that holds the attempt to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cut {
    pub(crate) connect: bool,
    pub(crate) header: Option<Duration>,
    pub(crate) watch: Option<std::sync::Arc<super::stall::Watch>>,
}

impl Cut {
    /// Whether the watch cut the wait for the header.
    pub(crate) fn header_cut(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.fired())
    }
}
