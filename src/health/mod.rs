//! Shared peer health: outlier ejection with growing times, half-open probes, events.
//!
//! Every [`Peer`] carries its [`PeerHealth`]: a few atomics, shared by all requests,
//! read by the selectors through [`Attempt::admits`](crate::Attempt::admits) and written by the
//! engine after each attempt. The rules:
//! - `n` consecutive failures eject a peer ([`OutlierDetection`] has the thresholds; connect
//!   failures have a threshold of their own, 1 by default, because a refused or timed-out connect
//!   is unambiguous);
//! - a success resets the counts;
//! - the ejection lasts `base * k` for the `k`-th ejection in a row, up to a cap;
//! - when it ends, the peer is probed in the background until a probe passes, which re-admits
//!   it ([`RecoveryProbe`]); without a background probe, a single request probes it (half-open)
//!   while the others keep going to healthy peers, and a failed probe ejects it again, for
//!   longer; a peer ejected again soon after its re-admission is flapping and is kept out longer;
//! - an ejected peer is still tried when no other candidate is left (panic mode): a selector
//!   never refuses a request while some peer might serve it.

#[cfg(feature = "active-health")]
mod active;
mod latency;
pub(crate) mod membership;
pub(crate) mod recovery;
pub(crate) mod state;
pub(crate) mod suspicion;

#[cfg(feature = "active-health")]
pub use active::ActiveHealthCheck;
pub use recovery::RecoveryProbe;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::FailureKind;
use crate::error::{check_timeout, ConfigError};
use crate::peer::Peer;
use latency::Latency;
use membership::{Accounts, Membership};
use state::{Admit, HealthCell, NoTally, Tally, Thresholds};
use suspicion::Waiting;

/// The health of one peer, shared by every request. Lock-free.
///
/// What a [`Peer`] exposes is a view: holding a peer cannot eject it. Outcomes are recorded by
/// the engine, or deliberately through [`OutlierDetection::record_failure`] and
/// [`OutlierDetection::record_success`], which need the rules they apply.
///
/// Times are kept as milliseconds since the peer was built, on tokio's clock (so tests can pause
/// it); each peer has its own origin, as each [`RetryBudget`](crate::RetryBudget) does.
#[derive(Debug)]
pub struct PeerHealth {
    origin: Instant,
    cell: HealthCell,
    /// Requests sent to the peer and not finished: its load, for load-aware selectors.
    in_flight: std::sync::atomic::AtomicU32,
    /// How long it takes to answer (peak EWMA of the time to the response header).
    latency: Latency,
    /// How long a new connection to it takes (a moving average).
    connect: Latency,
    /// What an answer typically takes: a plain moving average of the time to the header.
    typical: Latency,
    /// Requests waiting for their header, and when it last answered: a peer that answers
    /// nothing while requests wait on it is suspected.
    waiting: Waiting,
    /// When it last joined traffic (added to a running set, or re-admitted), for slow start;
    /// 0 when it has served from the start.
    ramp_from: std::sync::atomic::AtomicU64,
    /// The sets that hold it: its probe, its gauge and its series last as long as they do.
    membership: Membership,
}

/// An ejection made by [`OutlierDetection::record_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ejection {
    /// How long it lasts.
    pub time: Duration,
    /// Whether the peer was already ejected (its probe failed), rather than newly taken out.
    pub repeat: bool,
}

impl Default for PeerHealth {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            cell: HealthCell::new(),
            in_flight: std::sync::atomic::AtomicU32::new(0),
            latency: Latency::new(),
            connect: Latency::new(),
            typical: Latency::new(),
            waiting: Waiting::default(),
            ramp_from: std::sync::atomic::AtomicU64::new(0),
            membership: Membership::default(),
        }
    }
}

/// Whether a peer takes a request now ([`PeerHealth::admission`]); selectors ask through
/// [`Attempt::admits`](crate::Attempt::admits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Healthy: yes.
    Healthy,
    /// Its ejection is over and its single probe slot is free: yes, as the probe. The engine
    /// claims the slot when it sends the request, so only one request probes.
    Probe,
    /// Ejected, failed its active check, suspected of stalling
    /// ([`PeerHealth::is_suspected`]), or another request is probing it: no.
    Refused,
}

/// A snapshot of a peer's health, for display and custom selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Taking traffic.
    Healthy,
    /// Ejected for this much longer.
    Ejected {
        /// Time left.
        remaining: Duration,
    },
    /// Ejection over; waiting for, or running, its probe request.
    HalfOpen,
    /// Failing its active health check.
    CheckFailed,
}

impl PeerHealth {
    /// Milliseconds since this peer's origin; never 0, which marks "not ejected".
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `t` in milliseconds on this peer's clock.
    pub(crate) fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// How long the peer takes to answer, as learned from the time to each response header: a
    /// peak EWMA (Finagle, Linkerd, tower's `PeakEwma`). A slower answer than the estimate
    /// replaces it at once; faster ones pull it down gradually; without answers it decays
    /// towards zero with a time constant of 10 s, so an idle peer is tried again. `None` until
    /// the peer has answered once.
    pub fn latency(&self) -> Option<Duration> {
        self.latency_us_at(Instant::now())
            .map(|us| Duration::from_nanos((us * 1_000.0) as u64))
    }

    /// [`latency`](Self::latency) in microseconds at `now`.
    pub(crate) fn latency_us_at(&self, now: Instant) -> Option<f64> {
        self.latency.estimate_us(self.ms_at(now))
    }

    /// Teaches [`latency`](Self::latency) an answer that took `took`, ending now. The engine
    /// does this for every response header; call it to feed latency measured elsewhere.
    pub fn record_latency(&self, took: Duration) {
        self.learn_latency(took, true, Instant::now());
    }

    /// Learns from an attempt that took `took`, ending at `now`: answered, or failed, when only
    /// a wait longer than the estimate is learned.
    pub(crate) fn learn_latency(&self, took: Duration, answered: bool, now: Instant) {
        let us = took.as_secs_f64() * 1e6;
        let now_ms = self.ms_at(now);
        self.latency.observe(us, now_ms, !answered);
        if answered {
            self.typical.observe_mean(us);
            self.waiting.answered(now_ms);
        }
    }

    /// What an answer typically takes: a moving average of about the last 20 times to the
    /// response header (no peak, no decay). `None` until the first answer.
    pub(crate) fn typical_latency(&self) -> Option<Duration> {
        self.typical
            .mean_us()
            .map(|us| Duration::from_nanos((us * 1_000.0) as u64))
    }

    /// How long a new connection to the peer takes (TCP, and TLS for a TLS peer), learned as
    /// [`latency`](Self::latency) is, from each new connection the engine makes (pooled ones are
    /// not counted). `None` until the first.
    pub fn connect_time(&self) -> Option<Duration> {
        self.connect
            .mean_us()
            .map(|us| Duration::from_nanos((us * 1_000.0) as u64))
    }

    /// Learns a connect that took `took` (one that was abandoned counts with the time it was
    /// given).
    pub(crate) fn learn_connect(&self, took: Duration) {
        self.connect.observe_mean(took.as_secs_f64() * 1e6);
    }

    /// When the peer last joined traffic, in [`now_ms`](Self::now_ms) time; `None` when it has
    /// served from the start.
    pub(crate) fn ramp_from(&self) -> Option<u64> {
        match self.ramp_from.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Marks the peer as joining traffic now (added to a running set, or re-admitted).
    pub(crate) fn start_ramp(&self) {
        self.ramp_from
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends the ramp that started at `from` (a newer one stays).
    pub(crate) fn end_ramp(&self, from: u64) {
        let _ = self.ramp_from.compare_exchange(
            from,
            0,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The state now.
    pub fn state(&self) -> HealthState {
        if self.cell.check_failed() {
            return HealthState::CheckFailed;
        }
        match self.cell.ejected_until() {
            0 => HealthState::Healthy,
            until => {
                let now = self.now_ms();
                if now < until {
                    HealthState::Ejected {
                        remaining: Duration::from_millis(until - now),
                    }
                } else {
                    HealthState::HalfOpen
                }
            }
        }
    }

    /// Requests sent to this peer through the engine and not finished yet (a response being
    /// streamed counts until it ends).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a request sent now (tests; the engine passes the time it read).
    #[cfg(test)]
    pub(crate) fn begin_request(&self) {
        self.begin_request_at(Instant::now());
    }

    /// Counts a request sent to the peer at `now`, waiting for its header;
    /// [`header_done`](Self::header_done) and [`end_request`](Self::end_request) settle it.
    pub(crate) fn begin_request_at(&self, now: Instant) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.waiting.start(self.ms_at(now));
    }

    /// When the peer last answered (ms on its clock), 0 before its first answer.
    pub(crate) fn answered_at_ms(&self) -> u64 {
        self.waiting.answered_at()
    }

    /// The request no longer waits for its header: it came, or the attempt ended without it.
    pub(crate) fn header_done(&self) {
        self.waiting.stop();
    }

    pub(crate) fn end_request(&self) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the peer is suspected of stalling: requests wait on it for their headers, and
    /// the evidence the engine gathers while they wait showed it stuck since its last answer
    /// (none of a request acknowledged by its kernel, or a liveness check on another connection
    /// unanswered; see [`AdaptiveTimeouts`](crate::AdaptiveTimeouts)). Selectors avoid a
    /// suspected peer (it does not [admit](Self::admission) requests) before any timeout fires;
    /// it is not ejected, and its next answer, a passing check, or the waiting requests ending,
    /// clears it. A peer that is only slow to answer some requests, a proxy that stalled with
    /// the answers in its sockets, an upgraded connection (a WebSocket) and an upload still
    /// sending its body are never evidence.
    pub fn is_suspected(&self) -> bool {
        self.waiting.suspected()
    }

    /// The suspicion state: waiting requests, answers, liveness checks.
    pub(crate) fn suspicion(&self) -> &Waiting {
        &self.waiting
    }

    /// Whether the peer is ejected (its ejection time may be over, waiting for a probe).
    pub(crate) fn is_ejected(&self) -> bool {
        self.cell.ejected_until() != 0
    }

    /// How much of its ejection time is left, in ms (0 when it is over or not ejected).
    pub(crate) fn ejection_left_ms(&self) -> u64 {
        match self.cell.ejected_until() {
            0 => 0,
            until => until.saturating_sub(self.now_ms()),
        }
    }

    /// Makes a background prober the owner of this peer's probe; `false` when one already is.
    pub(crate) fn take_background(&self) -> bool {
        self.cell.set_background(true)
    }

    /// The background prober gives up its ownership: a request may probe again.
    pub(crate) fn release_background(&self) {
        self.cell.set_background(false);
    }

    /// Whether the peer is healthy now (not ejected, not half-open, passing its checks). Two
    /// loads, no clock: selectors ask it of every peer.
    pub fn is_healthy(&self) -> bool {
        !self.cell.check_failed() && self.cell.ejected_until() == 0
    }

    /// Whether the peer would take a request now. A pure query: it claims nothing, so a
    /// selector may ask it of every candidate. [`Admission::Probe`] means its ejection is over
    /// and its single probe slot is free; the engine claims the slot when it sends the request.
    pub fn admission(&self) -> Admission {
        match to_admission(self.cell.admissible(|| self.now_ms())) {
            Admission::Healthy if self.is_suspected() => Admission::Refused,
            other => other,
        }
    }

    /// Claims the peer for a request about to be sent: when its ejection is over, the first
    /// caller takes the probe slot for `probe_window` and gets [`Admission::Probe`]; the others
    /// are refused until the probe reports or the window ends.
    pub(crate) fn claim(&self, probe_window: Duration) -> Admission {
        to_admission(
            self.cell
                .claim(|| self.now_ms(), probe_window.as_millis() as u64),
        )
    }

    /// How long until this peer is a candidate again, in ms: 0 for a healthy or half-open peer,
    /// `u64::MAX` for a peer failing its active check. Lower is a better panic-mode candidate.
    pub(crate) fn wait_ms(&self) -> u64 {
        if self.cell.check_failed() {
            return u64::MAX;
        }
        match self.cell.ejected_until() {
            0 => 0,
            until => until.saturating_sub(self.now_ms()),
        }
    }

    /// Records a success; `true` when it re-admitted an ejected peer.
    pub(crate) fn record_success(&self) -> bool {
        self.record_success_counted(true, &NoTally)
    }

    /// Records a failure of `kind`; the ejection when it ejected the peer.
    pub(crate) fn record_failure(
        &self,
        kind: FailureKind,
        rules: &OutlierDetection,
    ) -> Option<Ejection> {
        self.record_failure_counted(kind, rules, &NoTally)
    }

    /// [`record_success`](Self::record_success), keeping `tally` (the engine's count of ejected
    /// peers) right.
    /// `readmit`: the success may end an ejection (it came from the probe, or from an attempt
    /// sent while the peer was out).
    pub(crate) fn record_success_counted(&self, readmit: bool, tally: &dyn Tally) -> bool {
        let readmitted = self.cell.record_success(|| self.now_ms(), readmit, tally);
        if readmitted {
            self.start_ramp();
        }
        readmitted
    }

    /// [`record_failure`](Self::record_failure), keeping `tally` right.
    pub(crate) fn record_failure_counted(
        &self,
        kind: FailureKind,
        rules: &OutlierDetection,
        tally: &dyn Accounts,
    ) -> Option<Ejection> {
        self.record_failure_as(kind.is_connect(), rules, tally)
    }

    /// Records a failure, as a connect failure (`connect`: nothing was sent, and its own
    /// threshold applies) or as any other.
    ///
    /// The accounts that count the ejection are remembered first, so that the peer's departure
    /// from its sets can settle them. A peer that has departed is not kept out: an ejection
    /// racing its departure is ended at once (and counted out), and `None` returned.
    pub(crate) fn record_failure_as(
        &self,
        connect: bool,
        rules: &OutlierDetection,
        accounts: &dyn Accounts,
    ) -> Option<Ejection> {
        self.membership.keep(accounts);
        let thresholds = rules.thresholds();
        let ejection = self
            .cell
            .record_failure(self.now_ms(), connect, &thresholds, accounts)
            .map(|e| Ejection {
                time: Duration::from_millis(e.ms),
                repeat: e.repeat,
            });
        if ejection.is_some() && self.membership.departed_after() {
            // Gone from its sets: nothing to eject it from, no one to probe it for.
            self.cell.clear_ejection(self.membership.accounts());
            return None;
        }
        ejection
    }

    /// Counts the peer into a set.
    pub(crate) fn joined_set(&self) {
        self.membership.join();
    }

    /// Counts the peer, called `name`, out of a set. When no set holds it any more, its
    /// ejection ends (counted out of the ejected-peers gauge), its background probe stops at
    /// its next turn, and the engine's metrics forget its series.
    pub(crate) fn left_set(&self, name: &str) {
        if self.membership.leave() {
            let accounts = self.membership.accounts();
            self.cell.clear_ejection(accounts);
            accounts.forget(name);
        }
    }

    /// `Some(held)` once the peer has joined a set: whether one holds it now; `None` for a
    /// peer never in a set.
    pub(crate) fn held(&self) -> Option<bool> {
        self.membership.held()
    }

    /// Whether the peer has left every set that held it.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn is_departed(&self) -> bool {
        self.membership.departed()
    }

    /// Remembers the accounts that will count this peer (before they count it).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn keep_accounts(&self, accounts: &dyn Accounts) {
        self.membership.keep(accounts);
    }

    /// Whether the peer passes its active check (always, without active checks).
    pub fn is_check_passing(&self) -> bool {
        !self.cell.check_failed()
    }

    /// Sets the active check's verdict; `true` when it changed.
    #[cfg_attr(not(feature = "active-health"), allow(dead_code))]
    pub(crate) fn set_check_failed(&self, failed: bool) -> bool {
        let changed = self.cell.set_check_failed(failed);
        if changed && !failed {
            self.start_ramp();
        }
        changed
    }
}

/// When a peer is ejected, and for how long.
///
/// # Default
///
/// - consecutive failures: 5 (Envoy's `consecutive_5xx`). A 5xx response counts as a failure
///   whether or not the retry policy retries it: health judges responses on its own terms, so a
///   peer that answers 500 to everything is ejected, and a probe answered with a 5xx fails
/// - consecutive connect failures: 1 (nginx's `max_fails=1`; Finagle's fail-fast): a refused or
///   timed-out connect is unambiguous, and every request that meets it pays for it
/// - base ejection time: 1 s, growing by itself with each ejection in a row (Envoy's rule); a
///   peer ejected again before it has stayed healthy for as long as it was last out is in the
///   same row (flapping)
/// - maximum ejection time: 300 s (Envoy's `max_ejection_time`)
/// - recovery: probed in the background ([`RecoveryProbe`]'s defaults: `GET /` about every
///   250 ms, 200 to 399 pass) from the end of its ejection time, and re-admitted by the first
///   probe that passes; no request is the probe. The ejection time is the quiet spell before
///   probing, hence short. Without a background probe
///   ([`without_recovery_probe`](Self::without_recovery_probe)), the first request after the
///   ejection time is the probe; 10 s (nginx's `fail_timeout`) then suits better, since each
///   such probe of a broken peer costs a request its timeout.
#[derive(Debug, Clone)]
pub struct OutlierDetection {
    consecutive_failures: u32,
    count_5xx: bool,
    consecutive_connect_failures: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    recovery: Option<RecoveryProbe>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            count_5xx: true,
            consecutive_connect_failures: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(300),
            recovery: Some(RecoveryProbe::default()),
        }
    }
}

impl OutlierDetection {
    /// The defaults; see `# Default`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Failures of any kind in a row that eject a peer.
    #[must_use]
    pub fn with_consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Whether a 5xx response counts as a failure of its peer (yes by default). With `false`,
    /// only the statuses the retry policy retries count, and any other response is a success.
    #[must_use]
    pub fn with_5xx_as_failures(mut self, count: bool) -> Self {
        self.count_5xx = count;
        self
    }

    /// Whether a response with `status` counts against its peer.
    pub(crate) fn counts_status(&self, status: u16) -> bool {
        self.count_5xx && (500..=599).contains(&status)
    }

    /// Connect failures in a row that eject a peer.
    #[must_use]
    pub fn with_consecutive_connect_failures(mut self, n: u32) -> Self {
        self.consecutive_connect_failures = n;
        self
    }

    /// The first ejection's length, and the step it grows by.
    #[must_use]
    pub fn with_base_ejection(mut self, time: Duration) -> Self {
        self.base_ejection = time;
        self
    }

    /// The longest ejection.
    #[must_use]
    pub fn with_max_ejection(mut self, time: Duration) -> Self {
        self.max_ejection = time;
        self
    }

    /// How ejected peers are probed in the background ([`RecoveryProbe`]).
    #[must_use]
    pub fn with_recovery_probe(mut self, probe: RecoveryProbe) -> Self {
        self.recovery = Some(probe);
        self
    }

    /// No background probing: the first request after a peer's ejection time is its probe.
    #[must_use]
    pub fn without_recovery_probe(mut self) -> Self {
        self.recovery = None;
        self
    }

    /// The background probe, when there is one.
    pub(crate) fn recovery(&self) -> Option<&RecoveryProbe> {
        self.recovery.as_ref()
    }

    /// Background probes connect as the proxy does under `conf`.
    pub(crate) fn use_server_conf(&self, conf: &pingora_core::server::configuration::ServerConf) {
        if let Some(probe) = &self.recovery {
            probe.use_server_conf(conf);
        }
    }

    /// The longest ejection; also how long background probes may fail before a request probes
    /// the peer instead.
    pub(crate) fn max_ejection(&self) -> Duration {
        self.max_ejection
    }

    /// Records a failure of `kind` against `peer` under these rules; the ejection when it
    /// ejected the peer. The engine does this after every failed attempt; call it yourself to
    /// feed health from elsewhere (a failure your own code saw, a simulation).
    pub fn record_failure(&self, peer: &Peer, kind: FailureKind) -> Option<Ejection> {
        peer.health().record_failure(kind, self)
    }

    /// Records a success of `peer`; `true` when it re-admitted the peer.
    pub fn record_success(&self, peer: &Peer) -> bool {
        peer.health().record_success()
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            failures: self.consecutive_failures,
            connect_failures: self.consecutive_connect_failures,
            base_ms: self.base_ejection.as_millis() as u64,
            max_ms: self.max_ejection.as_millis() as u64,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a zero threshold; a timeout error for a zero or
    /// over-an-hour ejection time, or a base above the maximum.
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (what, n) in [
            ("consecutive failures", self.consecutive_failures),
            (
                "consecutive connect failures",
                self.consecutive_connect_failures,
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::OutOfRange {
                    what,
                    value: n.to_string(),
                    range: "1 or more",
                });
            }
        }
        let hour = Duration::from_secs(3600);
        check_timeout("base ejection time", self.base_ejection, hour)?;
        check_timeout("max ejection time", self.max_ejection, hour)?;
        if self.base_ejection > self.max_ejection {
            return Err(ConfigError::OutOfRange {
                what: "base ejection time",
                value: format!("{:?}", self.base_ejection),
                range: "at most the max ejection time",
            });
        }
        Ok(self)
    }
}

/// A change in a peer's health.
#[derive(Debug, Clone)]
pub struct HealthEvent {
    /// The peer.
    pub peer: Peer,
    /// What changed.
    pub change: HealthChange,
}

/// What changed in a peer's health, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthChange {
    /// Ejected for `time` after a failure of kind `after` (again, and for longer, when its probe
    /// failed).
    Ejected {
        /// How long.
        time: Duration,
        /// The failure that tipped it.
        after: FailureKind,
    },
    /// The peer is being probed after its ejection time: by a request, or in the background
    /// ([`RecoveryProbe`]), where the event comes once when probing starts.
    Probing,
    /// The probe succeeded: the peer takes traffic again.
    Readmitted,
    /// The active health check failed.
    CheckFailed,
    /// The active health check passes again.
    CheckPassed,
    /// The peer joined its [`PeerSet`](crate::PeerSet).
    Added,
    /// The peer left its [`PeerSet`](crate::PeerSet); requests already sent to it finish.
    Removed,
    /// The name (the event's peer) could not be resolved; the set keeps the addresses it had.
    ResolveFailed,
}

impl fmt::Display for HealthChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ejected { time, after } => write!(f, "ejected for {time:?} after {after}"),
            Self::Probing => f.write_str("probing"),
            Self::Readmitted => f.write_str("re-admitted"),
            Self::CheckFailed => f.write_str("active check failed"),
            Self::CheckPassed => f.write_str("active check passed"),
            Self::Added => f.write_str("added"),
            Self::Removed => f.write_str("removed"),
            Self::ResolveFailed => f.write_str("name did not resolve"),
        }
    }
}

/// A callback for health changes; shared by the engine and the active checks.
pub type HealthObserver = Arc<dyn Fn(&HealthEvent) + Send + Sync>;

/// Tells `observe` that `peer` changed. An observer that panics is a bug of its own, which the
/// panic hook reports; it must not stop what called it (the resolver of a name, the peers-file
/// watcher, a prober, a request).
pub(crate) fn notify(observe: &HealthObserver, peer: &Peer, change: HealthChange) {
    let event = HealthEvent {
        peer: peer.clone(),
        change,
    };
    guarded(|| observe(&event));
}

/// Runs a user's callback, catching its panic (see [`notify`]).
pub(crate) fn guarded(callback: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
}

fn to_admission(admit: Admit) -> Admission {
    match admit {
        Admit::Healthy => Admission::Healthy,
        Admit::Probe => Admission::Probe,
        Admit::Refused => Admission::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> OutlierDetection {
        OutlierDetection::new()
            .with_consecutive_failures(3)
            .with_base_ejection(Duration::from_secs(10))
            .with_max_ejection(Duration::from_secs(25))
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_the_threshold_and_a_success_resets_it() {
        let h = PeerHealth::default();
        let r = rules();
        assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r), None);
        assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r), None);
        assert!(!h.record_success());
        assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r), None);
        assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r), None);
        let ejected = h.record_failure(FailureKind::Status(503), &r);
        assert_eq!(
            ejected,
            Some(Ejection {
                time: Duration::from_secs(10),
                repeat: false
            })
        );
        assert!(matches!(h.state(), HealthState::Ejected { .. }));
        assert_eq!(h.claim(Duration::from_secs(1)), Admission::Refused);
    }

    #[tokio::test(start_paused = true)]
    async fn one_connect_failure_ejects_and_ejections_grow_to_the_cap() {
        let h = PeerHealth::default();
        let r = rules();
        let window = Duration::from_secs(1);
        let mut times = Vec::new();
        for n in 0..4 {
            let e = h.record_failure(FailureKind::ConnectRefused, &r).unwrap();
            assert_eq!(e.repeat, n > 0, "only the first ejection is new");
            let t = e.time;
            times.push(t);
            tokio::time::advance(t).await;
            assert_eq!(h.state(), HealthState::HalfOpen);
            assert_eq!(h.claim(window), Admission::Probe, "one probe");
            assert_eq!(h.claim(window), Admission::Refused, "only one");
            // The probe fails: the next loop sees the new, longer ejection.
        }
        let s = Duration::from_secs;
        assert_eq!(times, [s(10), s(20), s(25), s(25)]);
        // The probe succeeds: re-admitted. Ejected again at once, it is flapping: the next
        // ejection is longer still (capped). After a quiet spell as long as its last ejection,
        // it starts from the base again.
        assert!(h.record_success());
        assert_eq!(h.claim(window), Admission::Healthy);
        let again = h.record_failure(FailureKind::ConnectRefused, &r).unwrap();
        assert_eq!((again.time, again.repeat), (s(25), false));
        tokio::time::advance(again.time).await;
        assert_eq!(h.claim(window), Admission::Probe);
        assert!(h.record_success());
        tokio::time::advance(s(25)).await;
        let quiet = h.record_failure(FailureKind::ConnectRefused, &r).unwrap();
        assert_eq!((quiet.time, quiet.repeat), (s(10), false));
    }

    #[tokio::test(start_paused = true)]
    async fn asking_claims_nothing() {
        let h = PeerHealth::default();
        let t = h
            .record_failure(FailureKind::ConnectRefused, &rules())
            .unwrap()
            .time;
        assert_eq!(h.admission(), Admission::Refused);
        tokio::time::advance(t).await;
        for _ in 0..3 {
            assert_eq!(
                h.admission(),
                Admission::Probe,
                "a query leaves the slot free"
            );
        }
        let window = Duration::from_secs(1);
        assert_eq!(h.claim(window), Admission::Probe);
        assert_eq!(h.admission(), Admission::Refused, "the slot is taken");
        assert_eq!(h.claim(window), Admission::Refused);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_frees_the_slot_after_its_window() {
        let h = PeerHealth::default();
        let t = h
            .record_failure(FailureKind::ConnectTimeout, &rules())
            .unwrap()
            .time;
        tokio::time::advance(t).await;
        let window = Duration::from_secs(2);
        assert_eq!(h.claim(window), Admission::Probe);
        assert_eq!(h.claim(window), Admission::Refused);
        tokio::time::advance(window).await;
        assert_eq!(
            h.claim(window),
            Admission::Probe,
            "the first probe never reported"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_failing_its_active_check_is_newly_ejected_not_again() {
        // In panic mode a request can reach a peer held out by its active check; ejecting it
        // then is a new ejection, so that the ejected-peers gauge and re-admission balance.
        let h = PeerHealth::default();
        h.set_check_failed(true);
        let e = h
            .record_failure(FailureKind::ConnectRefused, &rules())
            .unwrap();
        assert!(!e.repeat);
        h.set_check_failed(false);
        assert!(h.record_success(), "re-admitted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_from_before_the_ejection_does_not_readmit() {
        let h = PeerHealth::default();
        h.record_failure(FailureKind::ConnectRefused, &rules())
            .unwrap();
        // A request sent while the peer was healthy answers after the ejection.
        assert!(!h.record_success_counted(false, &NoTally));
        assert!(matches!(h.state(), HealthState::Ejected { .. }));
        // Its probe (or an attempt sent while it was out) does.
        assert!(h.record_success_counted(true, &NoTally));
        assert_eq!(h.state(), HealthState::Healthy);
    }

    #[test]
    fn a_5xx_counts_unless_told_otherwise() {
        let rules = OutlierDetection::new();
        assert!(rules.counts_status(500) && rules.counts_status(503));
        assert!(!rules.counts_status(404) && !rules.counts_status(200));
        assert!(!rules.with_5xx_as_failures(false).counts_status(500));
    }

    #[test]
    fn rejects_bad_rules() {
        assert!(OutlierDetection::new()
            .with_consecutive_failures(0)
            .validate()
            .is_err());
        assert!(OutlierDetection::new()
            .with_base_ejection(Duration::ZERO)
            .validate()
            .is_err());
        assert!(OutlierDetection::new()
            .with_base_ejection(Duration::from_secs(60))
            .with_max_ejection(Duration::from_secs(30))
            .validate()
            .is_err());
    }
}
