//! Before traffic needs it: what a connection to the engine's peers takes, and what their
//! liveness checks do, learned by three connects and three checks of each (the least of
//! each).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::Failover;
use crate::cut::Routes;
use crate::health::RecoveryProbe;
use crate::retry::RetryPolicy;
use crate::select::PeerSelector;
use crate::set::PeerSet;

/// How many of the engine's peers are connected to, the first in its set's order (those an
/// ordered list tries first). The pool's connect time needs only a few of them.
const PEERS: usize = 32;
/// How many connects, and checks, the warm-up makes of each peer, one after the other: it
/// learns the least each took.
const SAMPLES: usize = 3;
/// How long the liveness check's request is given (or the peer's read timeout, if shorter): a
/// check's floors, for the peer's sake, never exceed 1 s, so a slower answer teaches nothing
/// they would use; and a warm-up run before traffic waits no longer on a hung peer.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// Three connects to each of an engine's peers (up to 32, the first in its set), one after the
/// other, made once, that learn what a connection to each takes at least, and, when the liveness
/// check is a request (the default, `GET /`), three checks that learn what each takes at least to
/// answer it (the warm-up races the first requests, whose burst can delay one of them tenfold). A
/// peer that has made no connection of its own borrows the pool's connect time, and one that has
/// answered nothing borrows what the pool's checks take ([`AdaptiveTimeouts`]). A peer down from
/// the start (one host of a pool down at deploy) then costs the requests that meet it the connect
/// cut (50 ms by default), not the configured connect timeout; and one that accepts connections but
/// answers nothing (hung from the start) costs them about the stall cut, not the read timeout.
///
/// The engine makes it on its first request by itself, which that request is too early to use. Run
/// it before traffic arrives to spare that one too: as a pingora background service
/// (`pingora_core::services::background::background_service("warm-up", proxy.engine().warm_up())`;
/// pingora starts it beside the listeners, so its connects race the first requests, and on loopback
/// or a LAN they win), or with [`run`](Self::run). Whichever comes first makes the connects; the
/// other does nothing.
///
/// Nothing is made when the engine learns no timeout ([`AdaptiveTimeouts`] off), or when its
/// selector names no peer set. A connect or a check that fails teaches nothing and counts
/// against no peer: requests judge it. The check is given 1 s to answer (or the peer's read
/// timeout, if shorter), so a warm-up run before traffic waits at most about that long on a
/// hung peer. Each connection is closed once done with (over TLS, after the handshake): an
/// upstream sees three connections without a request per proxy start, and three checks (three
/// more connections) when the check is a request; a connect or a check that fails ends the
/// series.
///
/// [`AdaptiveTimeouts`]: crate::AdaptiveTimeouts
pub struct WarmUp {
    /// The engine's peers, read when the warm-up runs; `None` when it makes no connect.
    pool: Option<PeerSet>,
    probe: RecoveryProbe,
    routes: Arc<Routes>,
    /// Taken by the run that makes the connects; given back should it end unfinished.
    done: Arc<AtomicBool>,
}

impl std::fmt::Debug for WarmUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmUp")
            .field("connects", &self.pool.is_some())
            .field("done", &self.done.load(Ordering::Relaxed))
            .finish()
    }
}

impl WarmUp {
    /// Connects to each peer three times and checks it three times, the peers concurrently, and
    /// learns the least each took; returns when all are done or have failed. Does nothing when the
    /// engine already did, or does now, or outside a tokio runtime.
    pub async fn run(&self) {
        if tokio::runtime::Handle::try_current().is_err() || !self.claim() {
            return;
        }
        self.connect_all().await;
    }

    /// Takes the warm-up for this caller: whether no one had.
    fn claim(&self) -> bool {
        self.done
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The connects, once claimed: should they end unfinished (the future dropped, a panic),
    /// the claim goes back, so that a later request makes them.
    async fn connect_all(&self) {
        struct Unfinished<'a>(Option<&'a AtomicBool>);
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                if let Some(done) = self.0 {
                    done.store(false, Ordering::Release);
                }
            }
        }
        let mut unfinished = Unfinished(Some(&self.done));
        let peers = self.pool.as_ref().map_or_else(Vec::new, |set| {
            set.snapshot().peers().iter().take(PEERS).cloned().collect()
        });
        let mut connects = tokio::task::JoinSet::new();
        for peer in peers {
            let (probe, routes) = (self.probe.clone(), self.routes.clone());
            connects.spawn(async move {
                let Some(took) = least(|| probe.connect_time(&peer)).await else {
                    return;
                };
                peer.health().learn_connect(took);
                peer.health().learn_idle_connect(took);
                routes.learn_connect(took);
                let within = peer
                    .http_peer()
                    .options
                    .read_timeout
                    .map_or(ANSWER_WITHIN, |t| t.min(ANSWER_WITHIN));
                let connect = peer.connect_timeout();
                if let Some(took) = least(|| probe.answer_time(&peer, connect, within)).await {
                    peer.health().learn_check(took);
                    routes.learn_check(took);
                }
            });
        }
        while connects.join_next().await.is_some() {}
        unfinished.0 = None;
    }
}

/// The least of up to [`SAMPLES`] times `measure` gives, one after the other, until one gives
/// none: the warm-up races the first requests, and a connect or an answer delayed by their
/// burst would stretch every check of the peer that is judged by it. A sample is not waited
/// for longer than the least so far (it could not lower it), so a series takes at most about
/// three times its first sample.
async fn least<F, Fut>(mut measure: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Duration>>,
{
    let mut least = measure().await?;
    for _ in 1..SAMPLES {
        match tokio::time::timeout(least, measure()).await {
            Ok(Some(took)) => least = least.min(took),
            _ => break,
        }
    }
    Some(least)
}

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    /// Three connects to each of the engine's peers and three liveness checks, which learn what
    /// their connections and checks take before requests need it (see [`WarmUp`]). The engine makes
    /// it on its first request by itself; run this before traffic arrives to spare that request
    /// too.
    pub fn warm_up(&self) -> WarmUp {
        let learns = self.adaptive.is_some();
        WarmUp {
            pool: self.feed.pool.clone().filter(|_| learns),
            probe: self.watchdog.liveness().clone(),
            routes: self.feed.routes.clone(),
            done: self.warmed.clone(),
        }
    }

    /// Makes the [`WarmUp`] in the background, the first time.
    pub(super) fn warm_up_once(&self) {
        if self.warmed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let warm = self.warm_up();
        if warm.claim() {
            runtime.spawn(async move { warm.connect_all().await });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The least of `samples` as [`least`] takes them, and how many it took.
    async fn least_of(samples: &[Option<u64>]) -> (Option<Duration>, usize) {
        let mut taken = 0;
        let mut it = samples.iter().copied();
        let got = least(|| {
            taken += 1;
            let sample = it.next().flatten().map(Duration::from_millis);
            async move { sample }
        })
        .await;
        (got, taken)
    }

    #[tokio::test]
    async fn the_least_of_three_samples_until_one_fails() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(least_of(&[Some(5), Some(1), Some(3)]).await, (ms(1), 3));
        assert_eq!(least_of(&[Some(5), None, Some(1)]).await, (ms(5), 2));
        assert_eq!(least_of(&[None, Some(1)]).await, (None, 1));
        assert_eq!(
            least_of(&[Some(2), Some(2), Some(2), Some(1)]).await,
            (ms(2), 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_slower_than_the_least_so_far_is_not_waited_for() {
        let started = tokio::time::Instant::now();
        let mut n = 0;
        let got = least(|| {
            n += 1;
            let wait = if n == 1 { 5 } else { 1_000 };
            async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Some(Duration::from_millis(wait))
            }
        })
        .await;
        assert_eq!(got, Some(Duration::from_millis(5)));
        assert_eq!(n, 2, "the second sample ended the series");
        assert!(
            started.elapsed() < Duration::from_millis(20),
            "{:?}",
            started.elapsed()
        );
    }
}
