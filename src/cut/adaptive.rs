//! Timeouts learned per peer: a connect, or an answer, that runs far past what the peer has
//! shown is abandoned early, and the request goes to the next peer.

use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use super::evidence;
use super::watch::{MayCut, Watch};
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
/// The stall cut does the same with the time to the response header, but only on evidence that
/// the peer is stuck, never because one request is slow. A wait is looked at once it passes
/// `factor` times what the peer, or this kind of request (method and path, learned across
/// peers), typically takes to answer, and at least `floor`; the larger of the two counts, so a
/// report that always takes 300 ms gets ten times that. Then, in this order:
/// - the attempt's transport (Linux `TCP_INFO`): an answer already received means the proxy is
///   the one that stalled, and a request still being sent (an upload) is not waiting for its
///   header: neither is cut. A request none of whose bytes the peer's kernel acknowledged shows
///   the peer unreachable;
/// - answers to other requests: a peer that answered anything in the last `limit` is alive;
/// - a liveness check on another connection (the recovery probe's request, or a connect when
///   there is none), one per peer at a time, shared by every request waiting on it, started at
///   a quarter of the limit: answered within half the limit (or longer, where the peer's
///   checks or connections are known to take longer, and for a peer that has answered nothing
///   of its own: see Default), the peer is alive, and the slow request keeps its full timeout;
///   unanswered, the peer is stuck.
///
/// When the peer is stuck, it is suspected ([`PeerHealth::is_suspected`]) and a safe request (GET,
/// HEAD, OPTIONS, TRACE) without a body is cut and goes to the next peer: the cut attempt may still
/// run on upstream beside its retry, and a PUT or a DELETE overlapping its own replay could undo a
/// later write. Any other request is cut only when its peer never received it, and only with
/// [`with_undelivered_retry`](Self::with_undelivered_retry). Only the wait for the header is cut:
/// once it has come, the body takes the time it takes. A cut counts against its peer only when the
/// retry then answered within the time the cut peer was given. The cut takes its retry from the
/// budget as it cuts, and makes no cut when the budget is spent (the retry of a request's first
/// attempt is free when its peer broke under it: silent since the request began, and not known
/// stuck before). (It works from outside pingora, which offers no hook while a request waits: a
/// watch on the attempt's connection, on a thread of the engine's own. It applies to connections
/// over TCP: HTTP/1 ones, and HTTP/2 ones that carry one stream at a time (pingora's default
/// `max_h2_streams`), as above; HTTP/2 ones that carry several, only when the transport shows the
/// peer unreachable (retransmitted, and nothing acknowledged), since the cut ends every request on
/// the connection. [`Failover::connected_to_upstream`] arms it, and for an `Http2OrHttp1` peer
/// [`Failover::upstream_request_filter`], once the protocol is known.)
///
/// With the stall cut off, the evidence is still gathered, for suspicion alone (with a floor of
/// 100 ms).
///
/// [`PeerHealth::is_suspected`]: crate::PeerHealth::is_suspected
/// [`Failover::connected_to_upstream`]: crate::Failover::connected_to_upstream
/// [`Failover::upstream_request_filter`]: crate::Failover::upstream_request_filter
///
/// # Default
///
/// - connect: abandoned after 10 times the learned connect time, at least 50 ms (a SYN lost on
///   a LAN is resent after 1 s: a connect that slow goes to the next peer instead); a peer that
///   has made no connection yet borrows what connections to the engine's other peers take (a
///   host down at deploy costs its first requests 50 ms, not the connect timeout; a peer
///   farther away than the rest is abandoned once, and learns its own time from that)
/// - stall cut: looked at after 10 times what the peer or the request typically takes to answer,
///   at least 50 ms, and made on evidence that the peer is stuck (so a broken peer costs a
///   client 50 to 100 ms, not the read timeout, and a slow request on a live peer runs once);
///   when neither the peer nor that kind of request has an answer time yet, after 10 times
///   what the peer's liveness check takes, or else any peer's (learned by the warm-up,
///   [`WarmUp`](crate::WarmUp), and from each check a peer answers)
/// - liveness check: its connect given half the limit and at least 10 times the least the
///   peer's connections take (its own or the warm-up's, or else the pool's; at most 1 s),
///   its answer half the limit and at least 10 times what the peer's own checks take (at
///   most 1 s); a peer that has answered nothing of its own, neither a request nor a check,
///   1 s (Kubernetes' default readiness probe timeout), so that a peer slower than the rest
///   at everything is not taken for a stuck one. A peer hung from the proxy's start costs
///   its first requests about that second, not a longer read timeout
/// - a request whose peer never received it (none of it acknowledged): moved only when safe,
///   unless [`with_undelivered_retry`](Self::with_undelivered_retry)
///
/// Neither cut is made where no retry could follow it: on the last attempt a request is
/// allowed, when the retry budget is spent (a request's first attempt excepted: the budget
/// charges no retry after a failed connect, nor after a cut of a request whose peer broke
/// under it, silent since the request began and not known stuck before), when the deadline
/// would leave the retry less than the
/// configured timeout, or when the policy would not retry that failure. An abandoned
/// connect counts against its peer as any failure does, not as a connect failure (one of which
/// ejects): the peer may only be slower than it was.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveTimeouts {
    connect: Option<Bound>,
    header: Option<Bound>,
    undelivered: bool,
}

/// The evidence gathered for suspicion alone, with the stall cut off.
const SUSPECT: Bound = Bound {
    factor: 10.0,
    floor: Duration::from_millis(100),
};

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
        // In nanoseconds, through `u64` (585 years) rather than `u128`, whose conversion to a
        // float is a library call: anything past the configured timeout is the configured
        // timeout.
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX) as f64;
        let scaled = nanos(learned) * self.factor;
        let scaled = if scaled < nanos(configured) {
            // Rounded to the nearest nanosecond (`scaled` is not negative).
            Duration::from_nanos((scaled + 0.5) as u64)
        } else {
            configured
        };
        scaled.max(self.floor).min(configured)
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
            undelivered: false,
        }
    }
}

impl AdaptiveTimeouts {
    /// The defaults (see `# Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Abandons a connect after `factor` times the peer's learned connect time (or, before it
    /// has one, the engine's other peers'), at least `floor`.
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

    /// Also moves a request that is not safe to repeat (a POST, a PATCH, a PUT, a DELETE) off a
    /// peer that never received it: one none of whose bytes the peer's kernel acknowledged by
    /// the cut (Linux only). The cut aborts the attempt's connection first, so that the kernel
    /// sends none of it later, and the request is sent once more, elsewhere.
    ///
    /// Off by default, for one residual risk: a copy of the request delayed in the network
    /// (rather than dropped) for longer than the cut's limit may still reach the peer before the
    /// abort does, and then the request runs twice. On a path that drops rather than delays
    /// (a host gone, a blackholed route, a full queue on the far side), this does not happen.
    #[must_use]
    pub fn with_undelivered_retry(mut self) -> Self {
        self.undelivered = true;
        self
    }

    /// Lowers `target`'s connect timeout for an attempt to `peer`, and sets the limit of its
    /// wait for the header and what a cut may do there. `route` is what this kind of request
    /// typically takes (on any peer); `pool` what a new connection to any peer takes and what
    /// any peer takes to answer its liveness check (the priors of a peer that has made no
    /// connection, or answered nothing); `safe` says the request may run twice (a safe method,
    /// no body); `retried` says whether a failure of that kind, cutting that configured
    /// timeout short at that limit, would be retried (a cut where no retry can follow would
    /// turn a slow answer into an error).
    pub(crate) fn apply(
        &self,
        peer: &Peer,
        route: Option<Duration>,
        pool: Pool,
        safe: bool,
        target: &mut HttpPeer,
        retried: impl Fn(FailureKind, Duration, Duration) -> bool,
    ) -> Cut {
        let options = &mut target.options;
        let health = peer.health();
        let (own_connect, own_check, own_answer) = (
            health.connect_time(),
            health.check_time(),
            health.typical_latency(),
        );
        let connect_time = own_connect.or(pool.connect);
        let connect = lower(
            self.connect,
            &mut options.connection_timeout,
            connect_time,
            |configured, limit| retried(FailureKind::ConnectTimeout, configured, limit),
        );
        // Before the peer or the route has answered anything, what its liveness check takes
        // (or any peer's): the wait is first looked at sooner than it would be, and a check
        // decides, whose time is then known.
        let learned = match (own_answer, route) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .or(own_check)
        .or(pool.check);
        let bound = self.header.unwrap_or(SUSPECT);
        let header = match (options.read_timeout, learned) {
            (Some(configured), Some(learned)) => {
                Some(bound.limit(learned, configured)).filter(|l| *l < configured)
            }
            _ => None,
        };
        let may_cut = match (header, self.header, options.read_timeout) {
            (Some(limit), Some(_), Some(configured)) => {
                if safe && retried(FailureKind::HeaderTimeout, configured, limit) {
                    MayCut::Always
                } else if self.undelivered && retried(FailureKind::Unprocessed, configured, limit) {
                    MayCut::IfUndelivered
                } else {
                    MayCut::Never
                }
            }
            _ => MayCut::Never,
        };
        Cut {
            connect,
            header,
            may_cut,
            free: false,
            // The least the peer's connections take, its own or the warm-up's: the floor must
            // not stretch a check by the proxy's own load when its connections were made. A
            // path that becomes slower later raises its own; a check's connect is given half
            // its wait's limit anyway (at least 25 ms by default).
            check_floor: CheckFloor::of(
                own_connect
                    .into_iter()
                    .chain(health.idle_connect_time())
                    .min()
                    .or(pool.connect),
                own_check,
                own_answer.is_some(),
            ),
            watch: None,
            unarmed: None,
        }
    }
}

/// Lowers `timeout` to what `bound` makes of the peer's `learned` time, when that is shorter and
/// a failure cutting the configured timeout short would be `retried`; whether it did.
fn lower(
    bound: Option<Bound>,
    timeout: &mut Option<Duration>,
    learned: Option<Duration>,
    retried: impl FnOnce(Duration, Duration) -> bool,
) -> bool {
    let (Some(bound), Some(configured), Some(learned)) = (bound, *timeout, learned) else {
        return false;
    };
    let limit = bound.limit(learned, configured);
    if limit < configured && retried(configured, limit) {
        *timeout = Some(limit);
        true
    } else {
        false
    }
}

/// The least a liveness check of a peer is given, beside half the limit of the wait that asks
/// for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CheckFloor {
    /// To connect.
    pub(crate) connect: Duration,
    /// To answer, once connected.
    pub(crate) answer: Duration,
}

impl CheckFloor {
    /// The floors of a peer whose connections take `connect` (the least of its own times, or its
    /// pool's) and whose checks take `check`, and that has `answered` requests: to answer, 10 times
    /// what its checks take, at most 1 s, and 1 s for a peer that has answered nothing of its own;
    /// to connect, 10 times what connections take, at most 1 s (a peer farther away than the rest
    /// is not taken for an unreachable one).
    fn of(connect: Option<Duration>, check: Option<Duration>, answered: bool) -> Self {
        let ten = |t: Duration| (t * evidence::CHECK_FACTOR).min(evidence::COLD_CHECK);
        Self {
            connect: connect.map_or(Duration::ZERO, ten),
            answer: match (check, answered) {
                (Some(own), _) => ten(own),
                (None, true) => Duration::ZERO,
                (None, false) => evidence::COLD_CHECK,
            },
        }
    }
}

/// What is known of every peer: the priors of a peer that has learned nothing of its own.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pool {
    /// What a new connection to any peer takes.
    pub(crate) connect: Option<Duration>,
    /// What any peer takes to answer its liveness check.
    pub(crate) check: Option<Duration>,
}

/// What [`AdaptiveTimeouts`] did to an attempt: whether it lowered the connect timeout, the
/// limit of the wait for the header, what a cut may do, and the watch that holds the attempt
/// to it.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    pub(crate) connect: bool,
    pub(crate) header: Option<Duration>,
    pub(crate) may_cut: MayCut,
    /// The retry after a cut may be free of the budget (the request's first attempt; the
    /// watch decides at the cut).
    pub(crate) free: bool,
    /// The least the peer's liveness check is given.
    pub(crate) check_floor: CheckFloor,
    pub(crate) watch: Option<std::sync::Arc<Watch>>,
    /// The connection of a peer that speaks HTTP/2 or HTTP/1 (`Http2OrHttp1`), until the
    /// request header shows which one it negotiated.
    pub(crate) unarmed: Option<Unarmed>,
}

/// A connection whose watch waits for the request header to show which protocol it speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unarmed {
    pub(crate) fd: i32,
    /// Its two ends, if known.
    pub(crate) ends: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Spoken as HTTP/2, it may carry several requests at once (`max_h2_streams` above 1).
    pub(crate) many_streams: bool,
}

impl Default for Cut {
    fn default() -> Self {
        Self {
            connect: false,
            header: None,
            may_cut: MayCut::Never,
            free: false,
            check_floor: CheckFloor::default(),
            watch: None,
            unarmed: None,
        }
    }
}

impl Cut {
    /// Whether the watch cut the wait for the header.
    pub(crate) fn header_cut(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.fired())
    }

    /// Whether the watch cut the wait for the header on a liveness check left unanswered.
    pub(crate) fn header_cut_on_check(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.fired_on_check())
    }

    /// Whether the watch cut the wait because the peer never received the request.
    pub(crate) fn undelivered(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.undelivered())
    }

    /// Ends the watch over the wait for the header: whether it had cut the attempt.
    pub(crate) fn end_wait(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.end())
    }

    /// The retry the cut paid for, if it made one.
    pub(crate) fn take_paid(&self) -> Option<crate::retry::Withdrawn> {
        self.watch.as_ref().and_then(|w| w.take_paid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floors of the liveness check that `apply` sets for `peer`, with no learned time
    /// of the route or the pool.
    fn floors(peer: &Peer) -> CheckFloor {
        let mut target = peer.http_peer().clone();
        let cut = AdaptiveTimeouts::new().apply(
            peer,
            None,
            Pool::default(),
            true,
            &mut target,
            |_, _, _| true,
        );
        cut.check_floor
    }

    fn peer() -> Peer {
        Peer::builder("127.0.0.1:9").build().unwrap()
    }

    #[test]
    fn a_limit_is_the_learned_time_scaled_to_the_nearest_nanosecond_within_its_bounds() {
        let bound = |factor, floor| Bound { factor, floor };
        let (ns, us, ms) = (
            Duration::from_nanos,
            Duration::from_micros,
            Duration::from_millis,
        );
        let configured = ms(300);
        // (factor, floor, learned, limit)
        let cases = [
            (10.0, ns(0), us(7), us(70)),
            // 4.5 ns rounds up, 4.2 ns down.
            (1.5, ns(0), ns(3), ns(5)),
            (1.4, ns(0), ns(3), ns(4)),
            // The floor, and never past the configured timeout.
            (10.0, ms(50), ms(1), ms(50)),
            (10.0, ms(50), ms(31), configured),
            (10.0, ms(500), ms(1), configured),
            (1000.0, ns(0), Duration::MAX, configured),
        ];
        for (factor, floor, learned, limit) in cases {
            assert_eq!(
                bound(factor, floor).limit(learned, configured),
                limit,
                "{factor} x {learned:?}, floor {floor:?}"
            );
        }
    }

    #[test]
    fn a_check_is_given_ten_times_what_the_peers_take_at_most_a_second() {
        // Nothing of its own answered: 1 s to answer.
        let cold = peer();
        assert_eq!(floors(&cold).answer, Duration::from_secs(1));
        // Its requests answered, no check time: half the limit is all.
        let warm = peer();
        warm.health().record_latency(Duration::from_millis(5));
        assert_eq!(floors(&warm).answer, Duration::ZERO);
        // Its checks known: ten times them, at most 1 s.
        for (check, floor) in [(20, 200), (200, 1_000)] {
            let p = peer();
            p.health().learn_check(Duration::from_millis(check));
            assert_eq!(
                floors(&p).answer,
                Duration::from_millis(floor),
                "{check} ms"
            );
        }
        // Its connections known: ten times them to connect, at most 1 s.
        let p = peer();
        p.health().learn_connect(Duration::from_millis(3));
        assert_eq!(floors(&p).connect, Duration::from_millis(30));
        p.health().learn_connect(Duration::from_secs(2));
        assert_eq!(floors(&p).connect, Duration::from_secs(1));
    }

    #[test]
    fn a_checks_connect_is_given_ten_times_the_least_a_connection_takes() {
        // The floor to connect of a peer whose warm-up took `idle` and whose own connections
        // took `own` (in µs).
        let floor = |idle: Option<u64>, own: &[u64]| {
            let p = peer();
            if let Some(idle) = idle {
                p.health().learn_idle_connect(Duration::from_micros(idle));
            }
            for took in own {
                p.health().learn_connect(Duration::from_micros(*took));
            }
            floors(&p).connect
        };
        let ms = Duration::from_millis;
        // The proxy's connections all made at once at start-up took 8 ms each; the warm-up's,
        // made one at a time, 0.5 ms. The path takes 0.5 ms: a check's connect is not stretched
        // to 80 ms by the proxy's own load (a blackholed peer's cut waited that much longer).
        assert_eq!(floor(Some(500), &[8_000; 32]), ms(5));
        // Whichever is less: here the engine's.
        assert_eq!(floor(Some(5_000), &[1_000]), ms(10));
        // Either alone.
        assert_eq!(floor(Some(2_000), &[]), ms(20));
        assert_eq!(floor(None, &[3_000]), ms(30));
        // A peer farther away than the rest takes long on both: it keeps its longer check.
        assert_eq!(floor(Some(40_000), &[45_000]), ms(400));
    }
}
