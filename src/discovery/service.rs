//! Running a [`Source`]: as a pingora background service, or on a thread of its own.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::ServiceReadyNotifier;
use tokio::sync::watch;

use crate::discovery::source::{Feed, Ready, Reports, Source, SourceEvent, SourceState};
use crate::error::ConfigError;
use crate::set::{PeerSet, Shared};

/// How long a source that ended (or panicked) waits before it runs again.
const RERUN_AFTER: Duration = Duration::from_secs(1);

/// How long [`SourceService::spawn`] waits for the source to say it is running.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A [`Source`] bound to the [`PeerSet`] it feeds, ready to run:
/// - [`into_service`](Self::into_service) gives a pingora background service. Pingora starts it
///   with its other services, in the process that serves (after the fork of daemon mode), and
///   stops it at shutdown. No thread is started before pingora's fork.
/// - [`spawn`](Self::spawn) runs it on a thread of its own, for a set used without a pingora
///   server (or before one starts), until the set is dropped; in a process forked from this
///   one, the thread is started again by the set's first use.
///
/// Either way the source is run again a second after it returns early or panics, its events go
/// to [`on_event`](Self::on_event) (a panicking observer is caught), and
/// [`state`](Self::state) gives its last success, last error and revision.
///
/// # Examples
///
/// ```no_run
/// use pingora_failover::pingora::Server;
/// use pingora_failover::{PeerSet, PeersFile, Peer, SourceService};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = PeersFile::new("/etc/proxy/peers").reload_on_sighup();
/// let set = PeerSet::new(file.load()?)?;
/// let source = SourceService::new("peers-file", file, &set)
///     .on_event(|name, event| eprintln!("{name}: {event:?}"));
/// let mut server = Server::new(None)?;
/// server.bootstrap();
/// server.add_service(source.into_service());
/// # Ok(()) }
/// ```
pub struct SourceService {
    source: Arc<dyn Source>,
    set: Weak<Shared>,
    reports: Reports,
}

impl fmt::Debug for SourceService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceService")
            .field("name", &self.reports.name)
            .finish_non_exhaustive()
    }
}

/// The state of a running source, shared with its service: see [`SourceService::state`].
#[derive(Clone)]
pub struct SourceStatus(Arc<Mutex<SourceState>>);

impl fmt::Debug for SourceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl SourceStatus {
    /// The source's state now.
    pub fn get(&self) -> SourceState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SourceService {
    /// `source` feeding `set`, named `name` in its events and metrics.
    pub fn new(name: impl Into<String>, source: impl Source, set: &PeerSet) -> Self {
        Self {
            source: Arc::new(source),
            set: set.downgrade(),
            reports: Reports {
                name: name.into().into(),
                state: Arc::default(),
                observer: None,
                #[cfg(feature = "metrics")]
                metrics: None,
            },
        }
    }

    /// Calls `f` with the source's name and each of its events (a panic in `f` is caught).
    #[must_use]
    pub fn on_event(mut self, f: impl Fn(&str, &SourceEvent) + Send + Sync + 'static) -> Self {
        self.reports.observer = Some(Arc::new(f));
        self
    }

    /// Counts the source's updates, failures and skipped entries, and shows its revision and
    /// last success, on `metrics` (see [`Metrics`](crate::Metrics)).
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn with_metrics(mut self, metrics: &crate::Metrics) -> Self {
        self.reports.metrics = Some(metrics.clone());
        self
    }

    /// The source's state, now and later.
    pub fn state(&self) -> SourceStatus {
        SourceStatus(self.reports.state.clone())
    }

    /// A pingora background service that runs the source; add it to the server
    /// (`server.add_service(...)`).
    pub fn into_service(self) -> pingora_core::services::background::GenBackgroundService<Self> {
        let name = self.reports.name.to_string();
        background_service(&name, self)
    }

    /// Runs the source on a thread of its own until the set is dropped, started again in a
    /// process forked from this one; returns once the source said it is running (at most 10 s).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Resolve`] when the thread cannot start.
    pub fn spawn(self) -> Result<SourceStatus, ConfigError> {
        let status = self.state();
        let Some(set) = PeerSet::upgrade(&self.set) else {
            return Ok(status);
        };
        let this = Arc::new(self);
        set.follow(Arc::new(move || this.clone().start_thread()))?;
        Ok(status)
    }

    fn start_thread(self: Arc<Self>) -> Result<(), ConfigError> {
        let failed = |e: std::io::Error| ConfigError::Resolve {
            name: self.reports.name.to_string(),
            reason: e.to_string(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let this = self.clone();
        std::thread::Builder::new()
            .name(format!("failover-source-{}", self.reports.name))
            .spawn(move || {
                // No stop but the set's going: the sender leaves at once.
                let (_, stop) = watch::channel(false);
                let ready = Box::new(move || {
                    let _ = ready.send(());
                });
                runtime.block_on(this.supervise(stop, ready));
            })
            .map_err(failed)?;
        let _ = started.recv_timeout(READY_WITHIN);
        Ok(())
    }

    /// Runs the source until it is to stop, again after it ends early or panics.
    async fn supervise(&self, stop: watch::Receiver<bool>, ready: Ready) {
        let feed = Feed::new(self.set.clone(), self.reports.clone(), stop, ready);
        loop {
            let (source, run) = (self.source.clone(), feed.clone());
            let ran = tokio::spawn(async move { source.run(&run).await }).await;
            if let Err(e) = ran {
                if e.is_panic() {
                    let why = panic_message(e.into_panic());
                    self.reports.failed(format!("the source panicked: {why}"));
                }
            }
            // A source that ended before it said so must not hold its service's start.
            feed.ready();
            if feed.is_stopping() || !feed.sleep(RERUN_AFTER).await {
                return;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for SourceService {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready_notifier: ServiceReadyNotifier,
    ) {
        self.supervise(shutdown, Box::new(move || ready_notifier.notify_ready()))
            .await;
    }

    async fn start(&self, shutdown: ShutdownWatch) {
        self.supervise(shutdown, Box::new(|| {})).await;
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}
