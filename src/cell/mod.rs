//! The health a peer carries: the per-peer cell that [`Peer`](crate::Peer) and the health rules
//! both point down to.
//!
//! [`PeerHealth`] is a few atomics shared by every request, in parts with one reason to change
//! each:
//! - [`gate`]: consecutive failures, ejection, the probe slot and the active check's verdict;
//! - [`timing`]: what its answers and connects have taken;
//! - [`suspicion`]: the requests waiting on it (its load in flight with them) and the evidence
//!   that it is stuck;
//! - [`ramp`]: when it last joined traffic, for slow start;
//! - [`membership`]: the sets that hold it, and what its departure settles.
//!
//! The rules that feed it ([`OutlierDetection`](crate::OutlierDetection), the recovery probe, the
//! engine) live above, in `health` and `proxy`; the cell takes their thresholds as plain values.

pub(crate) mod gate;
pub(crate) mod membership;
mod ramp;
pub(crate) mod ratio;
pub(crate) mod suspicion;
mod timing;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::FailureKind;
use gate::{Admit, HealthCell, NoTally, Tally, Thresholds};
use membership::{Accounts, Membership};
use ramp::Ramp;
use ratio::{Ratio, RatioRule};
use suspicion::Waiting;
use timing::Timing;

/// The health of one peer, shared by every request. Lock-free.
///
/// What a [`Peer`](crate::Peer) exposes is a view: holding a peer cannot eject it. Outcomes are recorded by
/// the engine, or deliberately through [`OutlierDetection::record_failure`](crate::OutlierDetection::record_failure) and
/// [`OutlierDetection::record_success`](crate::OutlierDetection::record_success), which need the rules they apply.
///
/// Times are kept as milliseconds since the peer was built, on tokio's clock (so tests can pause
/// it); each peer has its own origin, as each [`RetryBudget`](crate::RetryBudget) does.
#[derive(Debug)]
pub struct PeerHealth {
    origin: Instant,
    /// Failures, ejection, the probe slot, the active check.
    cell: HealthCell,
    /// Its requests and failures over a sliding window, for the failure-ratio rule.
    ratio: Ratio,
    /// Requests sent to the peer and not finished: its load, for load-aware selectors.
    in_flight: AtomicU32,
    /// What its answers and connects take.
    timing: Timing,
    /// Requests waiting for their header, and when it last answered: a peer that answers
    /// nothing while requests wait on it is suspected.
    waiting: Waiting,
    /// When it last joined traffic, for slow start.
    ramp: Ramp,
    /// The sets that hold it: its probe, its gauge and its series last as long as they do.
    membership: Membership,
}

/// An ejection made by [`OutlierDetection::record_failure`](crate::OutlierDetection::record_failure).
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
            ratio: Ratio::new(),
            in_flight: AtomicU32::new(0),
            timing: Timing::new(),
            waiting: Waiting::default(),
            ramp: Ramp::default(),
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
        self.timing.latency_us(self.ms_at(now))
    }

    /// Teaches [`latency`](Self::latency) an answer that took `took`, ending now. The engine
    /// does this for every response header; call it to feed latency measured elsewhere.
    pub fn record_latency(&self, took: Duration) {
        self.learn_latency(took, true, Instant::now());
    }

    /// Learns from an attempt that took `took`, ending at `now`: answered, or failed, when only
    /// a wait longer than the estimate is learned.
    pub(crate) fn learn_latency(&self, took: Duration, answered: bool, now: Instant) {
        let now_ms = self.ms_at(now);
        self.timing
            .learn(took.as_secs_f64() * 1e6, now_ms, answered);
        if answered {
            self.waiting.answered(now_ms);
        }
    }

    /// Counts an outcome at `now` into the peer's failure rate.
    pub(crate) fn learn_outcome(&self, failed: bool, now: Instant) {
        self.timing.learn_outcome(failed, self.ms_at(now));
    }

    /// Learns an answer that is a failure (a 5xx) and took `took`, ending at `now`: as a
    /// failure (a fast one is not a fast answer: only a wait longer than the estimate is
    /// learned), and with the wait its `Retry-After` asked for, `hold`, as a floor under its
    /// cost until then.
    pub(crate) fn learn_failed_answer(&self, took: Duration, hold: Option<Duration>, now: Instant) {
        let now_ms = self.ms_at(now);
        let hold_ms = hold.map(|d| d.as_millis().min(u128::from(u32::MAX)) as u64);
        self.timing
            .learn_failed_answer(took.as_secs_f64() * 1e6, now_ms, hold_ms);
        self.waiting.answered(now_ms);
    }

    /// What weighs on the peer's cost besides its latency, at `now`, for latency-aware
    /// balancing: its failure rate (the share of about its last 20 outcomes that failed, 0 to
    /// 1, fading without outcomes, time constant 10 s), and the floor in microseconds that a
    /// `Retry-After` puts under its cost (the time left of it, at most 60 s; 0 for none).
    pub(crate) fn penalty_at(&self, now: Instant) -> (f64, f64) {
        self.timing.penalty(self.ms_at(now))
    }

    /// What an answer typically takes: a moving average of about the last 20 times to the
    /// response header (no peak, no decay). `None` until the first answer.
    pub(crate) fn typical_latency(&self) -> Option<Duration> {
        self.timing.typical()
    }

    /// How long a new connection to the peer takes (TCP, and TLS for a TLS peer), learned as
    /// [`latency`](Self::latency) is, from each new connection the engine makes (pooled ones are
    /// not counted). `None` until the first.
    pub fn connect_time(&self) -> Option<Duration> {
        self.timing.connect()
    }

    /// Learns a connect that took `took` (one that was abandoned counts with the time it was
    /// given).
    pub(crate) fn learn_connect(&self, took: Duration) {
        self.timing.learn_connect(took);
    }

    /// What the warm-up's connections to the peer took: the least of three, made one at a
    /// time, apart from requests, and learned once, at start-up. The engine's own
    /// ([`connect_time`](Self::connect_time)) are timed from the attempt's start, in the
    /// proxy's runtime: a burst of them at start-up, all made at once, can take ten times the
    /// path's own time, and pooled connections teach nothing more for long after.
    pub(crate) fn idle_connect_time(&self) -> Option<Duration> {
        self.timing.idle_connect()
    }

    /// Learns a connection the warm-up made in `took`.
    pub(crate) fn learn_idle_connect(&self, took: Duration) {
        self.timing.learn_idle_connect(took);
    }

    /// What the liveness check's request (`GET` of the probe's path) takes the peer to answer,
    /// once connected: learned before traffic by the warm-up ([`WarmUp`](crate::WarmUp)), and
    /// from each check of the stall cut answered within half its wait's limit. `None` until
    /// then, and for a check that is only a connect.
    pub fn check_time(&self) -> Option<Duration> {
        self.timing.check()
    }

    /// Learns a liveness check answered after `took`.
    pub(crate) fn learn_check(&self, took: Duration) {
        self.timing.learn_check(took);
    }

    /// When the peer last joined traffic, in [`now_ms`](Self::now_ms) time; `None` when it has
    /// served from the start.
    pub(crate) fn ramp_from(&self) -> Option<u64> {
        self.ramp.from()
    }

    /// Marks the peer as joining traffic now (added to a running set, or re-admitted).
    pub(crate) fn start_ramp(&self) {
        self.ramp.start(self.now_ms());
    }

    /// Ends the ramp that started at `from` (a newer one stays).
    pub(crate) fn end_ramp(&self, from: u64) {
        self.ramp.end(from);
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
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request sent now (tests; the engine passes the time it read).
    #[cfg(test)]
    pub(crate) fn begin_request(&self) {
        self.begin_request_at(Instant::now());
    }

    /// Counts a request sent to the peer at `now`, waiting for its header;
    /// [`header_done`](Self::header_done) and [`end_request`](Self::end_request) settle it.
    #[cfg(test)]
    pub(crate) fn begin_request_at(&self, now: Instant) {
        self.reserve(None);
        self.begin_reserved_at(now);
    }

    /// Takes a place in flight for a request, if the peer has one below `limit`: the check and
    /// the count are one atomic step, so that racing requests never take it past its limit.
    /// [`begin_reserved_at`](Self::begin_reserved_at) then starts the request, or
    /// [`end_request`](Self::end_request) gives the place back.
    pub(crate) fn reserve(&self, limit: Option<u32>) -> bool {
        match limit {
            None => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => self
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// Starts a request at `now` in the place [`reserve`](Self::reserve) took: it waits for its
    /// header.
    pub(crate) fn begin_reserved_at(&self, now: Instant) {
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
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether the peer is suspected of stalling: the evidence the engine gathers while
    /// requests wait on it for their headers showed it stuck since its last answer (none of a
    /// request acknowledged by its kernel, or a liveness check on another connection
    /// unanswered; see [`AdaptiveTimeouts`](crate::AdaptiveTimeouts)), and requests still
    /// wait on it, or one was cut on it less than a second ago. Selectors avoid a suspected
    /// peer (it does not [admit](Self::admission) requests) before any timeout fires, and
    /// requests sent while those caught on it are cut and retried elsewhere do not wait on it
    /// in turn; it is not ejected, and its next answer, a passing check or recovery probe, or
    /// no request waiting on it (and none cut on it for a second), clears it. A peer that is
    /// only slow to answer some requests, a proxy that stalled with the answers in its
    /// sockets, an upgraded connection (a WebSocket) and an upload still sending its body are
    /// never evidence.
    pub fn is_suspected(&self) -> bool {
        self.waiting.suspected(|| self.now_ms())
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
    #[cfg(test)]
    pub(crate) fn record_success(&self) -> bool {
        self.record_success_counted(true, &NoTally, None)
    }

    /// Records a failure of `kind`; the ejection when it ejected the peer.
    pub(crate) fn record_failure(
        &self,
        kind: FailureKind,
        thresholds: &Thresholds,
        ratio: Option<&RatioRule>,
    ) -> Option<Ejection> {
        self.record_failure_as(kind.is_connect(), thresholds, ratio, &NoTally, &|| true)
    }

    /// [`record_success`](Self::record_success), keeping `tally` (the engine's count of ejected
    /// peers) right.
    /// `readmit`: the success may end an ejection (it came from the probe, or from an attempt
    /// sent while the peer was out). Counted towards the failure ratio under `ratio`.
    pub(crate) fn record_success_counted(
        &self,
        readmit: bool,
        tally: &dyn Tally,
        ratio: Option<&RatioRule>,
    ) -> bool {
        if let Some(rule) = ratio {
            self.count_for_ratio(self.now_ms(), false, rule);
        }
        let readmitted = self.cell.record_success(|| self.now_ms(), readmit, tally);
        if readmitted {
            self.start_ramp();
        }
        readmitted
    }

    /// Records a failure, as a connect failure (`connect`: nothing was sent, and its own
    /// threshold applies) or as any other. A new ejection is made only when `may_eject` allows
    /// it (the cap on the share of a pool ejected at once). Under `ratio`, the failure is
    /// counted towards the failure ratio, and a ratio over the rule's ejects the peer whatever
    /// its count in a row.
    ///
    /// The accounts that count the ejection are remembered first, so that the peer's departure
    /// from its sets can settle them. A peer that has departed is not kept out: an ejection
    /// racing its departure is ended at once (and counted out), and `None` returned.
    pub(crate) fn record_failure_as(
        &self,
        connect: bool,
        thresholds: &Thresholds,
        ratio: Option<&RatioRule>,
        accounts: &dyn Accounts,
        may_eject: &dyn Fn() -> bool,
    ) -> Option<Ejection> {
        self.membership.keep(accounts);
        let now = self.now_ms();
        let tripped = ratio.is_some_and(|rule| self.count_for_ratio(now, true, rule));
        let ejection = self
            .cell
            .record_failure(now, connect, tripped, thresholds, accounts, may_eject)
            .map(|e| Ejection {
                time: Duration::from_millis(e.ms),
                repeat: e.repeat,
            });
        if ejection.is_some() {
            // Back from its ejection, the peer is judged on what it does then.
            self.ratio.reset();
        }
        if ejection.is_some() && self.membership.departed_after() {
            // Gone from its sets: nothing to eject it from, no one to probe it for.
            self.cell.clear_ejection(self.membership.accounts());
            return None;
        }
        ejection
    }

    /// Counts an outcome at `now` towards the failure ratio (not while the peer is ejected: what its
    /// probe or panic mode meets is judged by the ejection's own rules); whether the ratio is
    /// now over `rule`.
    fn count_for_ratio(&self, now: u64, failed: bool, rule: &RatioRule) -> bool {
        if self.cell.ejected_until() != 0 {
            return false;
        }
        self.ratio.count(now, failed, rule);
        failed && self.ratio.tripped(now, rule)
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

fn to_admission(admit: Admit) -> Admission {
    match admit {
        Admit::Healthy => Admission::Healthy,
        Admit::Probe => Admission::Probe,
        Admit::Refused => Admission::Refused,
    }
}

#[cfg(test)]
mod tests;
