//! The background prober: one task per ejected peer, probing it from the end of its ejection
//! time until a probe passes (re-admitting it), it is no longer ejected, or it leaves its sets.

use std::sync::Arc;
use std::time::Duration;

use super::RecoveryProbe;
use crate::cell::gate::Tally;
use crate::peer::Peer;
use crate::rng::Rng;

/// What a prober reports to: the engine's tally of ejected peers and its health events.
pub(crate) trait Reports: Tally + Send + Sync + 'static {
    fn probing(&self, peer: &Peer);
    fn readmitted(&self, peer: &Peer);
}

/// Starts probing `peer` in the background unless a prober already owns it. Without a tokio
/// runtime to run on, nothing starts, and the peer is probed by a request as without a prober.
/// A prober whose probes have failed for `give_up` hands the peer back to request probes: a
/// probe that fails by design (a health path the peer does not serve) must not keep a working
/// peer out for good.
pub(crate) fn start(
    peer: &Peer,
    probe: &RecoveryProbe,
    give_up: Duration,
    reports: &Arc<impl Reports>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !peer.health().take_background() {
        return;
    }
    let (peer, probe, reports) = (peer.clone(), probe.clone(), reports.clone());
    runtime.spawn(async move {
        loop {
            if !run(&peer, &probe, give_up, &*reports).await {
                // Gave up: requests probe it from now on.
                peer.health().release_background();
                return;
            }
            peer.health().release_background();
            // An ejection that came as this prober was leaving found it still in charge: take it.
            if peer.is_orphan() || !peer.health().is_ejected() || !peer.health().take_background() {
                return;
            }
        }
    });
}

/// Probes `peer` until it is re-admitted, is no longer ejected, or has left every set; `false`
/// when its probes kept failing for `give_up`.
async fn run(
    peer: &Peer,
    probe: &RecoveryProbe,
    give_up: Duration,
    reports: &impl Reports,
) -> bool {
    let mut announced = false;
    let mut probing_since = None;
    let jitter = Rng::new();
    loop {
        let health = peer.health();
        if !health.is_ejected() || peer.is_orphan() {
            return true;
        }
        let wait = health.ejection_left_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            continue;
        }
        if !health.is_check_passing() {
            // Its active check holds it out; probing would not let it in.
            tokio::time::sleep(probe.wait(jitter.unit())).await;
            continue;
        }
        if !announced {
            reports.probing(peer);
            announced = true;
        }
        let since = *probing_since.get_or_insert_with(tokio::time::Instant::now);
        if probe.passes(peer).await {
            // An answer: a stuck period the evidence had begun is over.
            health.suspicion().answered(health.now_ms());
            if health.record_success_counted(true, reports, None) {
                reports.readmitted(peer);
            }
            return true;
        }
        if since.elapsed() >= give_up {
            return false;
        }
        tokio::time::sleep(probe.wait(jitter.unit())).await;
    }
}
