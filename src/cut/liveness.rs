//! The liveness check: whether a peer that a request waits on still answers, asked on a
//! connection of its own, one check per peer at a time, shared by every request waiting on it
//! ([`evidence`](super::evidence) says when to ask and what the answer proves).

use std::time::{Duration, Instant};

use super::adaptive::CheckFloor;
use crate::health::recovery::Checked;
use crate::health::RecoveryProbe;
use crate::peer::Peer;

/// Starts a liveness check of `peer` with `probe` on another connection, unless one is
/// running: given `half` (half the limit of the wait that asks), or more where `floor` says
/// so; it fails when not connected or unanswered in that time. An answer within `half` teaches
/// the peer what its checks take.
pub(super) fn check(probe: &RecoveryProbe, peer: &Peer, half: Duration, floor: CheckFloor) {
    let (connect, answer) = (half.max(floor.connect), half.max(floor.answer));
    if !peer.health().suspicion().start_check() {
        return;
    }
    let slot = Slot(peer.clone());
    let probe = probe.clone();
    let from_ms = peer.health().now_ms();
    tokio::spawn(async move {
        let started = Instant::now();
        let (checked, took) = probe.check(&slot.0, connect, answer).await;
        // When its own timeouts had it fail: a check ended long after that was held up itself.
        let due = probe.due(connect, answer);
        let health = slot.0.health();
        // Any answer in time shows the peer alive, whatever its status (a `/` the peer does
        // not serve answers 404 at once).
        let passed = matches!(checked, Checked::Passed | Checked::Answered);
        // What checks take is learned from answers within half the limit only: a check given
        // longer (the floors) answered late teaches nothing, lest each late answer lengthen
        // the next check.
        if let Some(took) = took.filter(|t| passed && *t <= half) {
            health.learn_check(took);
        }
        let failed = matches!(checked, Checked::Unreachable | Checked::Failed);
        // A check the proxy could not make (out of descriptors) shows nothing about the peer,
        // and neither does one that failed long after its own timeouts were due: it was held
        // up itself (the machine, or this thread, was starved).
        if passed || (failed && started.elapsed() <= due * 2) {
            health
                .suspicion()
                .finish_check(from_ms, health.now_ms(), passed);
        }
    });
}

/// A peer's check slot, held by the task that runs the check and given back when it is
/// dropped, however the task ends (its runtime may drop it unpolled).
struct Slot(Peer);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.health().suspicion().release_check();
    }
}
