//! Active health checks: pingora-load-balancing's TCP and HTTP checks feeding peer health.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;

use crate::error::{check_timeout, ConfigError};
use crate::health::{HealthChange, HealthEvent, HealthObserver};
use crate::peer::Peer;

/// Checks a set of peers at an interval and sets their health, so that a dead peer is skipped
/// before any request pays for finding out, and returns once it passes again.
///
/// Any pingora-load-balancing [`HealthCheck`] works: `TcpHealthCheck` (connect) or
/// `HttpHealthCheck` (a request and its status). Its `health_threshold` says how many results
/// in a row flip a peer. Run it as a pingora background service
/// (`pingora_core::services::background::background_service("health", check)`), or call
/// [`run_once`](Self::run_once) yourself.
///
/// A failed active check and a passive ejection are separate: a peer takes requests only when
/// neither holds it out (panic mode aside).
///
/// [`from_set`](Self::from_set) checks whatever a [`PeerSet`](crate::PeerSet) holds at each round: peers added
/// later (a reload, a DNS change) are checked from the next round, and peers that left are no
/// longer checked.
pub struct ActiveHealthCheck {
    targets: Targets,
    check: Box<dyn HealthCheck + Send + Sync>,
    interval: Duration,
    observer: Option<HealthObserver>,
}

/// The peers a check covers: fixed, or a set's at each round.
enum Targets {
    Fixed(Vec<Arc<Target>>),
    Following {
        /// The peers now (a set's snapshot).
        peers: PeersNow,
        /// The last round's, to keep each staying peer's streak.
        last: Mutex<Vec<Arc<Target>>>,
    },
}

/// Where a check that follows a set finds its peers at each round.
pub(crate) type PeersNow = Box<dyn Fn() -> Vec<Peer> + Send + Sync>;

impl Targets {
    /// The peers to check this round.
    fn now(&self) -> Vec<Arc<Target>> {
        match self {
            Self::Fixed(targets) => targets.clone(),
            Self::Following { peers, last } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                let mut kept: HashMap<usize, Arc<Target>> =
                    last.drain(..).map(|t| (t.peer.id(), t)).collect();
                let targets: Vec<_> = peers()
                    .iter()
                    .map(|p| kept.remove(&p.id()).unwrap_or_else(|| Target::new(p)))
                    .collect();
                last.clone_from(&targets);
                targets
            }
        }
    }
}

struct Target {
    peer: Peer,
    backend: Backend,
    /// Results in a row that disagree with the peer's current verdict.
    streak: AtomicUsize,
}

impl Target {
    fn new(peer: &Peer) -> Arc<Self> {
        Arc::new(Self {
            peer: peer.clone(),
            backend: Backend {
                addr: peer.http_peer()._address.clone(),
                weight: peer.weight() as usize,
                ext: Default::default(),
            },
            streak: AtomicUsize::new(0),
        })
    }
}

impl fmt::Debug for ActiveHealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveHealthCheck")
            .field(
                "peers",
                &self
                    .targets
                    .now()
                    .iter()
                    .map(|t| t.peer.clone())
                    .collect::<Vec<_>>(),
            )
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl ActiveHealthCheck {
    /// Checks `peers` with `check` every `interval` (10 ms to 1 hour).
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoPeers`] for no peers, [`ConfigError::UnresolvedName`] for a peer that is
    /// a name; a timeout error for the interval.
    pub fn new(
        peers: &[Peer],
        check: Box<dyn HealthCheck + Send + Sync>,
        interval: Duration,
    ) -> Result<Self, ConfigError> {
        if peers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        if let Some(p) = peers.iter().find(|p| p.endpoint().is_name()) {
            return Err(ConfigError::UnresolvedName {
                name: p.endpoint().to_string(),
            });
        }
        let targets = Targets::Fixed(peers.iter().map(Target::new).collect());
        Self::with_targets(targets, check, interval)
    }

    /// Checks the peers `peers` gives at each round ([`from_set`](Self::from_set), which the
    /// set's module defines: health sits below the set).
    pub(crate) fn following(
        peers: PeersNow,
        check: Box<dyn HealthCheck + Send + Sync>,
        interval: Duration,
    ) -> Result<Self, ConfigError> {
        let targets = Targets::Following {
            peers,
            last: Mutex::new(Vec::new()),
        };
        Self::with_targets(targets, check, interval)
    }

    fn with_targets(
        targets: Targets,
        check: Box<dyn HealthCheck + Send + Sync>,
        interval: Duration,
    ) -> Result<Self, ConfigError> {
        let interval = check_timeout("health check interval", interval, Duration::from_secs(3600))?;
        if interval < Duration::from_millis(10) {
            return Err(ConfigError::OutOfRange {
                what: "health check interval",
                value: format!("{interval:?}"),
                range: "10ms..=1h",
            });
        }
        Ok(Self {
            targets,
            check,
            interval,
            observer: None,
        })
    }

    /// Calls `f` when a check flips a peer ([`HealthChange::CheckFailed`],
    /// [`HealthChange::CheckPassed`]).
    #[must_use]
    pub fn on_health_change(mut self, f: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// Checks every peer once, concurrently, and applies the results.
    pub async fn run_once(&self) {
        let targets = self.targets.now();
        let checks = targets.iter().map(|t| async move {
            let passed = self.check.check(&t.backend).await.is_ok();
            self.apply(t, passed);
        });
        futures_join_all(checks).await;
    }

    fn apply(&self, t: &Target, passed: bool) {
        let failing = !t.peer.health().is_check_passing();
        if passed != failing {
            // Agrees with the current verdict.
            t.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = t.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < self.check.health_threshold(passed).max(1) {
            return;
        }
        t.streak.store(0, Ordering::Relaxed);
        if t.peer.health().set_check_failed(!passed) {
            if let Some(observe) = &self.observer {
                let change = if passed {
                    HealthChange::CheckPassed
                } else {
                    HealthChange::CheckFailed
                };
                crate::health::notify(observe, &t.peer, change);
            }
        }
    }
}

/// Runs the futures concurrently on this task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[async_trait]
impl BackgroundService for ActiveHealthCheck {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.run_once().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
