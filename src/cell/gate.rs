//! The lock-free core of a peer's health: consecutive failures, ejection, the probe slot and the
//! active check's verdict, in a few atomics. Time is passed in, as milliseconds on the peer's
//! own clock (never 0, which marks "not ejected").
//!
//! This file depends on nothing but `crate::sync`, so that `tests/loom.rs` can model-check it
//! with loom's atomics: at most one probe at a time, and a count of ejected peers that never goes
//! negative, in every interleaving.

use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// When failures eject a peer, and for how long (in ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    pub(crate) failures: u32,
    pub(crate) connect_failures: u32,
    pub(crate) base_ms: u64,
    pub(crate) max_ms: u64,
}

/// The count of ejected peers that an engine keeps (its metrics gauge): `+1` when a peer is newly
/// ejected, `-1` when it is re-admitted.
///
/// A new ejection adds its `+1` *before* the compare-and-swap that publishes it (and takes it
/// back if the swap loses). The re-admission that ends it can only see the ejection after that
/// swap, so its `-1` always comes after the `+1`: the count may run one high for an instant, but
/// never below zero.
pub(crate) trait Tally {
    fn add(&self, delta: i64);
}

/// A tally that counts nothing.
pub(crate) struct NoTally;

impl Tally for NoTally {
    fn add(&self, _delta: i64) {}
}

/// Whether a peer takes a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Healthy,
    /// Its ejection is over: the single probe slot is free ([`HealthCell::admissible`]) or
    /// was taken by the caller ([`HealthCell::claim`]).
    Probe,
    Refused,
}

/// An ejection that [`HealthCell::record_failure`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejected {
    pub(crate) ms: u64,
    /// The peer was ejected already (its probe failed).
    pub(crate) repeat: bool,
}

#[derive(Debug)]
pub(crate) struct HealthCell {
    failures: AtomicU32,
    connect_failures: AtomicU32,
    /// Ejections in a row: a peer ejected again before it has stayed healthy for as long as it
    /// was last out is flapping, and its next ejection is longer.
    ejections: AtomicU32,
    /// When it was last re-admitted (0: never).
    readmitted_at: AtomicU64,
    /// A background prober owns the probe of this ejected peer: no request probes it.
    background: AtomicBool,
    /// The time until which the peer is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// The time until which a probe holds the half-open slot; 0 when none does.
    probe_until: AtomicU64,
    /// Set by active health checks.
    check_failed: AtomicBool,
}

impl HealthCell {
    pub(crate) fn new() -> Self {
        Self {
            failures: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            readmitted_at: AtomicU64::new(0),
            background: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            probe_until: AtomicU64::new(0),
            check_failed: AtomicBool::new(false),
        }
    }

    /// The time until which the peer is ejected, 0 when it is not.
    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Acquire)
    }

    pub(crate) fn check_failed(&self) -> bool {
        self.check_failed.load(Ordering::Acquire)
    }

    /// Marks a background prober as owning (or no longer owning) this peer's probe; `true` when
    /// the caller took ownership (no other prober had it).
    pub(crate) fn set_background(&self, owned: bool) -> bool {
        self.background.swap(owned, Ordering::AcqRel) != owned
    }

    /// Sets the active check's verdict; `true` when it changed.
    #[cfg_attr(not(feature = "active-health"), allow(dead_code))]
    pub(crate) fn set_check_failed(&self, failed: bool) -> bool {
        self.check_failed.swap(failed, Ordering::AcqRel) != failed
    }

    /// The end of the ejection that a request could probe, or the answer when there is none to
    /// probe: healthy, or refused (failing its check, or probed in the background).
    fn ejection(&self) -> Result<u64, Admit> {
        if self.check_failed() {
            return Err(Admit::Refused);
        }
        match self.ejected_until() {
            0 => Err(Admit::Healthy),
            _ if self.background.load(Ordering::Acquire) => Err(Admit::Refused),
            until => Ok(until),
        }
    }

    /// Whether the peer would take a request at `now` (read only when the peer is ejected: a
    /// healthy peer is answered without the clock), without claiming anything:
    /// [`Admit::Probe`] means its ejection is over and its probe slot is free.
    pub(crate) fn admissible(&self, now: impl FnOnce() -> u64) -> Admit {
        let until = match self.ejection() {
            Ok(until) => until,
            Err(answer) => return answer,
        };
        let now = now();
        match until {
            until if now < until => Admit::Refused,
            _ if self.probe_until.load(Ordering::Acquire) > now => Admit::Refused,
            _ => Admit::Probe,
        }
    }

    /// Claims the peer for a request at `now`. Once its ejection is over, the first caller
    /// takes the probe slot for `window` ms; the others are refused until the probe reports or
    /// the window ends.
    pub(crate) fn claim(&self, now: impl FnOnce() -> u64, window: u64) -> Admit {
        let until = match self.ejection() {
            Ok(until) => until,
            Err(answer) => return answer,
        };
        let now = now();
        if now < until {
            return Admit::Refused;
        }
        let probe = self.probe_until.load(Ordering::Acquire);
        if probe > now {
            return Admit::Refused;
        }
        let hold = now + window;
        if self
            .probe_until
            .compare_exchange(probe, hold, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Admit::Refused;
        }
        // A failure may have ejected the peer again since `until` was read, freeing the slot of
        // the probe already running: that slot is not this caller's to take.
        if self.ejected_until() != until {
            let _ = self
                .probe_until
                .compare_exchange(hold, 0, Ordering::AcqRel, Ordering::Relaxed);
            return Admit::Refused;
        }
        Admit::Probe
    }

    /// Records a success; `true` when it re-admitted an ejected peer (at `now`, read only
    /// then). Only a success with `readmit` ends an ejection: one from a request sent before the
    /// peer was ejected does not.
    pub(crate) fn record_success(
        &self,
        now: impl FnOnce() -> u64,
        readmit: bool,
        tally: &(impl Tally + ?Sized),
    ) -> bool {
        if !readmit && self.ejected_until() != 0 {
            return false;
        }
        // Loads first: a success on a healthy peer writes nothing, so the shared cache line is
        // not bounced between cores on every request.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until() != 0 && self.ejected_until.swap(0, Ordering::AcqRel) != 0 {
            self.probe_until.store(0, Ordering::Release);
            // The count of ejections in a row stays: it is reset by a quiet spell (`eject`).
            self.readmitted_at.store(now(), Ordering::Relaxed);
            tally.add(-1);
            return true;
        }
        false
    }

    /// Ends the ejection without a success (the peer left its set), counting it out of
    /// `tally`; `true` when there was one. Racing a re-admission, only one of them ends it.
    pub(crate) fn clear_ejection(&self, tally: &(impl Tally + ?Sized)) -> bool {
        if self.ejected_until.swap(0, Ordering::AcqRel) == 0 {
            return false;
        }
        self.probe_until.store(0, Ordering::Release);
        tally.add(-1);
        true
    }

    /// Records a failure at `now` (`connect`: nothing was sent; `tripped`: another rule, the
    /// failure ratio, would eject the peer whatever its count); the ejection when it ejected
    /// the peer. A new ejection is made only when `may_eject` allows it (the share of its pool
    /// already ejected is below the cap). A peer refused so stays in with its failures counted,
    /// and the next failure asks again; a peer ejected already (its probe failed) is ejected
    /// again without asking.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_failure(
        &self,
        now: u64,
        connect: bool,
        tripped: bool,
        rules: &Thresholds,
        tally: &(impl Tally + ?Sized),
        may_eject: &dyn Fn() -> bool,
    ) -> Option<Ejected> {
        let until = self.ejected_until();
        if until != 0 {
            // Ejected already. A failure after the ejection ended is the probe's: eject again.
            return if now >= until {
                self.eject(now, until, rules, tally)
            } else {
                None
            };
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let connect_failures = if connect {
            self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.connect_failures.store(0, Ordering::Relaxed);
            0
        };
        if (tripped || failures >= rules.failures || connect_failures >= rules.connect_failures)
            && may_eject()
        {
            self.eject(now, 0, rules, tally)
        } else {
            None
        }
    }

    /// Ejects the peer if its ejection is still `seen`; only one racing caller wins.
    fn eject(
        &self,
        now: u64,
        seen: u64,
        rules: &Thresholds,
        tally: &(impl Tally + ?Sized),
    ) -> Option<Ejected> {
        let fresh = seen == 0;
        let mut before = u64::from(self.ejections.load(Ordering::Relaxed));
        // A peer that stayed healthy for as long as it was last out starts again from the base;
        // one ejected again sooner is flapping, and is kept out for longer each time.
        let last_out = rules.base_ms.saturating_mul(before).min(rules.max_ms);
        if fresh && now.saturating_sub(self.readmitted_at.load(Ordering::Relaxed)) >= last_out {
            before = 0;
        }
        let k = before + 1;
        let ms = rules.base_ms.saturating_mul(k).min(rules.max_ms);
        if fresh {
            tally.add(1);
        }
        if self
            .ejected_until
            .compare_exchange(seen, now + ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            if fresh {
                tally.add(-1);
            }
            return None;
        }
        self.ejections.store(k as u32, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.connect_failures.store(0, Ordering::Relaxed);
        self.probe_until.store(0, Ordering::Release);
        Some(Ejected { ms, repeat: !fresh })
    }
}
