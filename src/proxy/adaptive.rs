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
/// Cutting a stalled answer (`with_stall_cut`) does the same with the time to the response
/// header, against what the peer typically takes (a moving average of its last 20 or so
/// answers: the peak-sensitive estimate that balancing uses holds a spike for seconds, and
/// would hold the cut back with it), for idempotent requests only. It is off by default: pingora 0.9 applies a peer's
/// read timeout to every read of the response, its body included, and offers no hook to lift
/// it once the header has come. A cut attempt whose header came in time but whose body then
/// pauses longer than the cut (a stream of server-sent events, a long poll answering in parts)
/// would fail after the header went to the client, where nothing can be retried. Turn it on
/// for upstreams whose bodies follow their headers without pauses.
///
/// # Default
///
/// - connect: abandoned after 10 times the learned connect time, at least 50 ms (a SYN lost on
///   a LAN is resent after 1 s: a connect that slow goes to the next peer instead)
/// - stall cut: off
///
/// Neither cut is made where no retry could follow it: on the last attempt a request is
/// allowed, when the retry budget is spent, when the deadline leaves less than the configured
/// timeout, when the policy would not retry that failure, and, for the stall cut, for a
/// non-idempotent request or a body too large (or of unknown size) to be replayed. An abandoned
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
            header: None,
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

    /// Cuts an idempotent request's attempt whose response header takes `factor` times the
    /// peer's learned answer time, at least `floor`, and retries it on another peer (see the
    /// type's documentation for why this is off by default).
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a factor below 1; a timeout error for a zero floor.
    pub fn with_stall_cut(mut self, factor: f64, floor: Duration) -> Result<Self, ConfigError> {
        self.header = Some(Bound::new(factor, floor)?);
        Ok(self)
    }

    /// Lowers `target`'s timeouts for an attempt to `peer`, where `retry_after` says that a
    /// failure of that kind, cutting that configured timeout short, would be retried (a cut
    /// where no retry can follow would turn a slow answer into an error); which were lowered.
    pub(crate) fn apply(
        &self,
        peer: &Peer,
        target: &mut HttpPeer,
        retry_after: impl Fn(FailureKind, Duration) -> bool,
    ) -> Cut {
        let options = &mut target.options;
        let health = peer.health();
        Cut {
            connect: lower(
                self.connect,
                &mut options.connection_timeout,
                || health.connect_time(),
                |configured| retry_after(FailureKind::ConnectTimeout, configured),
            ),
            header: lower(
                self.header,
                &mut options.read_timeout,
                || health.typical_latency(),
                |configured| retry_after(FailureKind::HeaderTimeout, configured),
            ),
        }
    }
}

/// Lowers `timeout` to what `bound` makes of the peer's `learned` time, when that is shorter and
/// a failure cutting the configured timeout short would be `retried`; whether it did.
fn lower(
    bound: Option<Bound>,
    timeout: &mut Option<Duration>,
    learned: impl FnOnce() -> Option<Duration>,
    retried: impl FnOnce(Duration) -> bool,
) -> bool {
    let (Some(bound), Some(configured)) = (bound, *timeout) else {
        return false;
    };
    let Some(learned) = learned() else {
        return false;
    };
    let limit = bound.limit(learned, configured);
    if limit < configured && retried(configured) {
        *timeout = Some(limit);
        return true;
    }
    false
}

/// Which of an attempt's timeouts [`AdaptiveTimeouts`] lowered.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cut {
    pub(crate) connect: bool,
    pub(crate) header: bool,
}
