//! The contract every source of peers keeps: [`Source`] runs, and pushes what it finds into a
//! [`Feed`], which updates the set, keeps the last good set through the source's failures, and
//! reports the source's state as events, metrics and a [`SourceState`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::ConfigError;
use crate::peer::Peer;
use crate::set::{PeerSet, Shared};

/// Where a [`PeerSet`]'s peers come from, kept in step with it: a registry, a file, a control
/// plane. A source is one type and this one trait; [`SourceService`](crate::SourceService)
/// runs it, as a pingora background service (so in the process pingora serves from, after any
/// fork) or on a thread of its own.
///
/// [`run`](Self::run) reads the source and pushes what it finds into the [`Feed`]: complete
/// snapshots with [`Feed::replace`], or changes with [`Feed::update`]; it reports a failure of
/// its own with [`Feed::failed`] (the set keeps its peers) and an entry it cannot use with
/// [`Feed::skipped`]. It returns once [`Feed::stopped`] completes (the server shuts down, or the
/// set is gone). A `run` that returns early, or panics, is run again after a second.
///
/// # Examples
///
/// A source that asks a function for the peers every few seconds:
///
/// ```
/// use std::time::Duration;
/// use pingora_failover::pingora::async_trait;
/// use pingora_failover::{ConfigError, Feed, Peer, Source};
///
/// struct Every(Duration, fn() -> Result<Vec<Peer>, ConfigError>);
///
/// #[async_trait]
/// impl Source for Every {
///     async fn run(&self, feed: &Feed) {
///         loop {
///             match (self.1)() {
///                 Ok(peers) => {
///                     // A bad list is reported by the feed, and the set keeps its peers.
///                     let _ = feed.replace(peers, None);
///                 }
///                 Err(e) => feed.failed(&e),
///             }
///             if !feed.sleep(self.0).await {
///                 return; // shutting down
///             }
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// Keeps the feed's set in step with the source until [`Feed::stopped`].
    async fn run(&self, feed: &Feed);
}

/// What a source did, given to [`SourceService::on_event`](crate::SourceService::on_event)
/// with the source's name.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SourceEvent {
    /// The set was updated from the source: it now has `peers` peers (at the source's
    /// `revision`, when it has one).
    Updated {
        /// The peers in the set now.
        peers: usize,
        /// The source's revision or serial.
        revision: Option<u64>,
    },
    /// The source failed (unreachable, a bad answer, a list the set refused); the set kept its
    /// peers.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// One entry of the source could not be used and was left out; the rest were taken.
    Skipped {
        /// The entry (a key, a line).
        entry: String,
        /// Why.
        error: ConfigError,
    },
}

/// The state of a source, as its [`Feed`] last saw it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SourceState {
    /// When the set was last updated from the source (or the source confirmed it unchanged).
    pub last_success: Option<SystemTime>,
    /// The last failure, and when.
    pub last_error: Option<(SystemTime, String)>,
    /// The source's revision or serial at the last success, when it has one.
    pub revision: Option<u64>,
    /// Successful updates so far.
    pub updates: u64,
    /// Failures so far.
    pub failures: u64,
    /// Entries skipped so far.
    pub skipped: u64,
}

pub(crate) type SourceObserver = Arc<dyn Fn(&str, &SourceEvent) + Send + Sync>;

/// What a source's updates and failures are reported to: shared by every run of the source.
#[derive(Clone)]
pub(crate) struct Reports {
    pub(crate) name: Arc<str>,
    pub(crate) state: Arc<Mutex<SourceState>>,
    pub(crate) observer: Option<SourceObserver>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl Reports {
    pub(crate) fn state(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, event: &SourceEvent) {
        if let Some(observe) = &self.observer {
            crate::health::guarded(|| observe(&self.name, event));
        }
    }

    fn succeeded(&self, peers: usize, revision: Option<u64>) {
        let now = SystemTime::now();
        {
            let mut s = self.state();
            s.last_success = Some(now);
            s.updates += 1;
            if revision.is_some() {
                s.revision = revision;
            }
        }
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.source_updated(&self.name, now, revision);
        }
        self.event(&SourceEvent::Updated { peers, revision });
    }

    pub(crate) fn failed(&self, error: String) {
        {
            let mut s = self.state();
            s.last_error = Some((SystemTime::now(), error.clone()));
            s.failures += 1;
        }
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.source_failed(&self.name);
        }
        self.event(&SourceEvent::Failed { error });
    }

    fn skipped(&self, entry: &str, error: &ConfigError) {
        self.state().skipped += 1;
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.source_skipped(&self.name);
        }
        self.event(&SourceEvent::Skipped {
            entry: entry.to_owned(),
            error: error.clone(),
        });
    }
}

/// A running source's way into its [`PeerSet`]: every update goes through it, and it reports
/// each one. Given to [`Source::run`].
#[derive(Clone)]
pub struct Feed {
    set: Weak<Shared>,
    reports: Reports,
    stop: watch::Receiver<bool>,
    ready: Arc<Mutex<Option<Ready>>>,
}

/// What tells the source's runner that it is running, once.
pub(crate) type Ready = Box<dyn FnOnce() + Send>;

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("source", &self.reports.name)
            .field("state", &*self.reports.state())
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub(crate) fn new(
        set: Weak<Shared>,
        reports: Reports,
        stop: watch::Receiver<bool>,
        ready: Ready,
    ) -> Self {
        Self {
            set,
            reports,
            stop,
            ready: Arc::new(Mutex::new(Some(ready))),
        }
    }

    /// The source's name, as given to its [`SourceService`](crate::SourceService).
    pub fn name(&self) -> &str {
        &self.reports.name
    }

    /// The set, while it lives.
    pub fn set(&self) -> Option<PeerSet> {
        PeerSet::upgrade(&self.set)
    }

    /// Replaces the set's peers with `peers`, the source's complete list (at `revision`, when
    /// the source has one). Peers that stay keep their health.
    ///
    /// # Errors
    ///
    /// As [`PeerSet::replace`] ([`ConfigError::NoPeers`] for an empty list): the set keeps its
    /// peers, and the failure is reported.
    pub fn replace(&self, peers: Vec<Peer>, revision: Option<u64>) -> Result<(), ConfigError> {
        self.update(revision, |set| set.replace(peers))
    }

    /// Changes the set with `change` (adds, removes, weights: see [`PeerSet`]) and reports the
    /// update (at `revision`, when the source has one).
    ///
    /// # Errors
    ///
    /// `change`'s error, which is reported; what `change` did before it failed stays done.
    pub fn update(
        &self,
        revision: Option<u64>,
        change: impl FnOnce(&PeerSet) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        self.ready();
        let Some(set) = self.set() else {
            return Ok(());
        };
        match change(&set) {
            Ok(()) => {
                self.reports.succeeded(set.snapshot().len(), revision);
                Ok(())
            }
            Err(e) => {
                self.reports.failed(e.to_string());
                Err(e)
            }
        }
    }

    /// Reports that the source is still where it was (at `revision`): a check that found no
    /// change.
    pub fn unchanged(&self, revision: Option<u64>) {
        self.ready();
        if let Some(set) = self.set() {
            self.reports.succeeded(set.snapshot().len(), revision);
        }
    }

    /// Reports a failure of the source; the set keeps its peers.
    pub fn failed(&self, error: &dyn fmt::Display) {
        self.ready();
        self.reports.failed(error.to_string());
    }

    /// Reports an entry of the source left out for `error`.
    pub fn skipped(&self, entry: &str, error: &ConfigError) {
        self.reports.skipped(entry, error);
    }

    /// Says the source is running: what it needs in place before its service counts as
    /// started (a signal handler) is. The first update or failure says it too.
    pub fn ready(&self) {
        let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ready) = ready {
            ready();
        }
    }

    /// The source's state so far.
    pub fn state(&self) -> SourceState {
        self.reports.state().clone()
    }

    /// Whether the source is to stop: the server is shutting down, or the set is gone.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow() || self.set.strong_count() == 0
    }

    /// Completes when the source is to stop: race a source's waits against it.
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        // A set has no signal of its own for going: it is looked at four times a second.
        let mut gone = tokio::time::interval(Duration::from_millis(250));
        let mut open = true;
        loop {
            if self.is_stopping() {
                return;
            }
            if open {
                tokio::select! {
                    changed = stop.changed() => open = changed.is_ok(),
                    _ = gone.tick() => {}
                }
            } else {
                gone.tick().await;
            }
        }
    }

    /// Waits `d`; `false` when the source is to stop first.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => !self.is_stopping(),
            () = self.stopped() => false,
        }
    }
}
