//! Shared peer health: outlier ejection with growing times, half-open probes, events.
//!
//! Every [`Peer`](crate::Peer) carries its [`PeerHealth`]: a few atomics, shared by all requests,
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
//!
//! The per-peer state these rules write lives below, in the cell every peer carries
//! ([`PeerHealth`]); here are the rules ([`OutlierDetection`]), the background probe
//! ([`RecoveryProbe`]), the active check, and the events they report.

#[cfg(feature = "active-health")]
mod active;
mod events;
mod outlier;
pub(crate) mod recovery;

pub use crate::cell::{Admission, Ejection, HealthState, PeerHealth};
#[cfg(feature = "active-health")]
pub use active::ActiveHealthCheck;
pub(crate) use events::{guarded, notify};
pub use events::{HealthChange, HealthEvent, HealthObserver};
pub use outlier::OutlierDetection;
pub use recovery::RecoveryProbe;
