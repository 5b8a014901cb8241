//! What the health rules report: a peer's change, to the observers a user gives.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::FailureKind;
use crate::peer::Peer;

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
    /// ([`RecoveryProbe`](super::RecoveryProbe)), where the event comes once when probing starts.
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
