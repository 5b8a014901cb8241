//! Before traffic needs it: what a connection to the engine's peers takes, learned by one
//! connect to each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::Failover;
use crate::cut::Routes;
use crate::health::RecoveryProbe;
use crate::peer::Peer;
use crate::retry::RetryPolicy;
use crate::select::PeerSelector;

/// How many of the engine's peers are connected to, the first in its set's order (those an
/// ordered list tries first). The pool's connect time needs only a few of them.
const PEERS: usize = 32;

/// One connect to each of an engine's peers (up to 32, the first in its set), made once, that
/// learns what a connection to each takes: the peers' own connect times, and the pool's, which
/// a peer that has made no connection of its own borrows ([`AdaptiveTimeouts`]). A peer down
/// from the start (one host of a pool down at deploy) then costs the requests that meet it the
/// connect cut (50 ms by default), not the configured connect timeout.
///
/// The engine makes it on its first request by itself, which that request is too early to
/// use. Run it before traffic arrives to spare that one too: as a pingora background service
/// (`pingora_core::services::background::background_service("warm-up",
/// proxy.engine().warm_up())`), or with [`run`](Self::run). Whichever comes first makes the
/// connects; the other does nothing.
///
/// Nothing is made when the engine does not cut connects ([`AdaptiveTimeouts`] off, or
/// [`without_connect`](crate::AdaptiveTimeouts::without_connect)), or when its selector names
/// no peer set. A connect that fails teaches nothing and counts against no peer: requests
/// judge it.
///
/// [`AdaptiveTimeouts`]: crate::AdaptiveTimeouts
pub struct WarmUp {
    peers: Vec<Peer>,
    probe: RecoveryProbe,
    routes: Arc<Routes>,
    done: Arc<AtomicBool>,
}

impl std::fmt::Debug for WarmUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmUp")
            .field("peers", &self.peers.len())
            .field("done", &self.done.load(Ordering::Relaxed))
            .finish()
    }
}

impl WarmUp {
    pub(crate) fn new(
        peers: Vec<Peer>,
        probe: RecoveryProbe,
        routes: Arc<Routes>,
        done: Arc<AtomicBool>,
    ) -> Self {
        Self {
            peers,
            probe,
            routes,
            done,
        }
    }

    /// Connects to each peer once, concurrently, and learns what each connection took; returns
    /// when all have connected or failed. Does nothing when the engine already did.
    pub async fn run(&self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut connects = tokio::task::JoinSet::new();
        for peer in &self.peers {
            let (peer, probe, routes) = (peer.clone(), self.probe.clone(), self.routes.clone());
            connects.spawn(async move {
                if let Some(took) = probe.connect_time(&peer).await {
                    peer.health().learn_connect(took);
                    routes.learn_connect(took);
                }
            });
        }
        while connects.join_next().await.is_some() {}
    }
}

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    /// One connect to each of the engine's peers, which learns what their connections take
    /// before requests need it (see [`WarmUp`]). The engine makes it on its first request by
    /// itself; run this before traffic arrives to spare that request too.
    pub fn warm_up(&self) -> WarmUp {
        let cuts_connects = self.adaptive.is_some_and(|a| a.cuts_connects());
        let peers = match &self.feed.pool {
            Some(set) if cuts_connects => {
                set.snapshot().peers().iter().take(PEERS).cloned().collect()
            }
            _ => Vec::new(),
        };
        WarmUp::new(
            peers,
            self.watchdog.liveness().clone(),
            self.feed.routes.clone(),
            self.warmed.clone(),
        )
    }

    /// Makes the [`WarmUp`] in the background, the first time.
    pub(super) fn warm_up_once(&self) {
        if self.warmed.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let warm = self.warm_up();
            runtime.spawn(async move { warm.run().await });
        }
    }
}

#[async_trait]
impl BackgroundService for WarmUp {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.run() => {}
            _ = shutdown.changed() => {}
        }
    }
}
