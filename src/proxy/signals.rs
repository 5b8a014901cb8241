//! Where the engine reports what happened: health events to the observer, and metrics.

use std::fmt;

use crate::cell::gate::Tally;
use crate::classify::FailureKind;
use crate::ctx::Outcome;
use crate::health::{Ejection, HealthChange, HealthObserver};
use crate::peer::Peer;

/// The engine's outputs besides the request itself.
#[derive(Default)]
pub(crate) struct Signals {
    pub(crate) observer: Option<HealthObserver>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Signals");
        d.field("observer", &self.observer.is_some());
        #[cfg(feature = "metrics")]
        d.field("metrics", &self.metrics.is_some());
        d.finish()
    }
}

/// The count of ejected peers is the metrics gauge.
impl Tally for Signals {
    fn add(&self, delta: i64) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.ejected_peers(delta);
        }
        let _ = delta;
    }
}

/// The engine's metrics are the accounts a peer settles when it leaves its sets.
impl crate::cell::membership::Accounts for Signals {
    fn keep(&self) -> Option<Box<dyn crate::cell::membership::Accounts>> {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            return crate::cell::membership::Accounts::keep(m);
        }
        None
    }

    fn forget(&self, name: &str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            crate::cell::membership::Accounts::forget(m, name);
        }
        let _ = name;
    }
}

impl crate::health::recovery::Reports for Signals {
    fn probing(&self, peer: &Peer) {
        Signals::probing(self, peer);
    }

    fn readmitted(&self, peer: &Peer) {
        Signals::readmitted(self, peer);
    }
}

impl Signals {
    fn health(&self, peer: &Peer, change: HealthChange) {
        if let Some(observe) = &self.observer {
            crate::health::notify(observe, peer, change);
        }
    }

    pub(crate) fn ejected(&self, peer: &Peer, ejection: Ejection, after: FailureKind) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.ejected(peer);
        }
        let time = ejection.time;
        self.health(peer, HealthChange::Ejected { time, after });
    }

    pub(crate) fn probing(&self, peer: &Peer) {
        self.health(peer, HealthChange::Probing);
    }

    pub(crate) fn readmitted(&self, peer: &Peer) {
        self.health(peer, HealthChange::Readmitted);
    }

    pub(crate) fn attempt(&self, peer: &Peer, outcome: &Outcome) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.attempt(peer, outcome);
        }
        let _ = (peer, outcome);
    }

    pub(crate) fn retry(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.retry();
        }
    }

    pub(crate) fn budget_refused(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.budget_refused();
        }
    }

    pub(crate) fn hedge(&self) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.hedge();
        }
    }

    /// A request left the queue: `placed`, or turned away (`full`, `timeout`).
    pub(crate) fn queued(&self, outcome: &'static str) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.queued(outcome);
        }
        let _ = outcome;
    }
}
