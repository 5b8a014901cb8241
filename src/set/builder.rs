//! Building a [`PeerSet`]: its resolver, observer and metrics, and the wait for the first
//! resolution of its names.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

#[cfg(feature = "dns")]
use super::dns::Resolver;
use super::members::{self, Members};
use super::weighted::Weighted;
use super::{PeerSet, Shared, Snapshot};
use crate::error::ConfigError;
use crate::health::{HealthEvent, HealthObserver};
use crate::peer::Peer;

/// Builds a [`PeerSet`].
///
/// # Default
///
/// - resolver: [`Resolver::system`](crate::Resolver::system) when a peer is a name (the hosts
///   file, then the system's nameservers)
/// - a name that does not resolve at build time: an error ([`ConfigError::Resolve`])
/// - health observer and metrics: none
#[must_use]
pub struct PeerSetBuilder {
    peers: Vec<Peer>,
    observer: Option<HealthObserver>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    #[cfg(feature = "dns")]
    resolver: Option<Resolver>,
    start_empty: bool,
}

impl fmt::Debug for PeerSetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSetBuilder")
            .field("peers", &self.peers)
            .field("start_empty", &self.start_empty)
            .finish_non_exhaustive()
    }
}

impl PeerSetBuilder {
    pub(super) fn new(peers: Vec<Peer>) -> Self {
        Self {
            peers,
            observer: None,
            #[cfg(feature = "metrics")]
            metrics: None,
            #[cfg(feature = "dns")]
            resolver: None,
            start_empty: false,
        }
    }

    /// The resolver for the set's names, and for names it gets later.
    #[cfg(feature = "dns")]
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Builds the set even when a name does not resolve yet: the name has no peers until it
    /// does, and a request that finds no peer at all gets a 503.
    pub fn start_empty_until_resolved(mut self) -> Self {
        self.start_empty = true;
        self
    }

    /// Calls `f` when a peer joins ([`HealthChange::Added`](crate::HealthChange::Added)) or leaves
    /// ([`HealthChange::Removed`](crate::HealthChange::Removed)) the set, and when a name fails to resolve
    /// ([`HealthChange::ResolveFailed`](crate::HealthChange::ResolveFailed)).
    pub fn on_change(mut self, f: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// Reports the set's size, its changes and resolution failures to `metrics`.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the set, resolving its names first. This blocks the calling thread until they
    /// resolve (or fail): call it before the server starts, or use
    /// [`build_async`](Self::build_async) from async code.
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`].
    pub fn build(self) -> Result<PeerSet, ConfigError> {
        let (set, pending) = self.start(true)?;
        for wait in pending {
            wait.blocking()?;
        }
        Ok(set)
    }

    /// Builds the set, resolving its names first.
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`].
    pub async fn build_async(self) -> Result<PeerSet, ConfigError> {
        let (set, pending) = self.start(false)?;
        for wait in pending {
            wait.wait().await?;
        }
        Ok(set)
    }

    /// Makes the set with its addresses, and starts resolving its names; `blocking`: the caller
    /// will wait for them on this thread.
    fn start(self, blocking: bool) -> Result<(PeerSet, Vec<Pending>), ConfigError> {
        members::check(&self.peers)?;
        if self.peers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        #[cfg(not(feature = "dns"))]
        members::no_names(&self.peers)?;
        let (members, names) = Members::new(self.peers);
        let set = PeerSet {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(Snapshot {
                    peers: Box::new([]),
                    version: 0,
                    weighted: Weighted::new(&[]),
                }),
                members: Mutex::new(members),
                observer: self.observer,
                #[cfg(feature = "metrics")]
                metrics: self.metrics,
                #[cfg(feature = "dns")]
                resolver: self.resolver.unwrap_or_default(),
                #[cfg(feature = "dns")]
                dns: Mutex::new(None),
                followers: Mutex::new(Vec::new()),
                generation: AtomicU64::new(crate::fork::generation()),
                derived: Mutex::new(Vec::new()),
            }),
        };
        let changes = set.publish(&mut set.members());
        set.report(Some(changes));
        #[cfg(feature = "dns")]
        let pending = {
            let mut pending = Vec::new();
            if !names.is_empty() {
                let dns = set.dns()?;
                for (group, spec) in names {
                    if self.start_empty {
                        dns.watch(&set, group, spec, None);
                        continue;
                    }
                    let (reply, wait) = Pending::channel(blocking, spec.endpoint().to_string());
                    dns.watch(&set, group, spec, Some(reply));
                    pending.push(wait);
                }
            }
            pending
        };
        #[cfg(not(feature = "dns"))]
        let pending = {
            let _ = (names, self.start_empty, blocking);
            Vec::new()
        };
        Ok((set, pending))
    }
}

/// Where the first resolution of a name is reported.
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
pub(crate) enum Reply {
    Blocking(std::sync::mpsc::SyncSender<Result<(), ConfigError>>),
    Async(tokio::sync::oneshot::Sender<Result<(), ConfigError>>),
}

impl Reply {
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    pub(crate) fn send(self, result: Result<(), ConfigError>) {
        // The builder may have given up waiting; nobody is left to tell.
        let _ = match self {
            Self::Blocking(tx) => tx.send(result).map_err(drop),
            Self::Async(tx) => tx.send(result).map_err(drop),
        };
    }
}

/// The first resolution of one name, waited for by the builder (none when the set may start
/// empty).
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
pub(super) struct Pending {
    name: String,
    rx: PendingRx,
}

#[cfg_attr(not(feature = "dns"), allow(dead_code))]
enum PendingRx {
    Blocking(std::sync::mpsc::Receiver<Result<(), ConfigError>>),
    Async(tokio::sync::oneshot::Receiver<Result<(), ConfigError>>),
}

#[cfg_attr(not(feature = "dns"), allow(dead_code))]
impl Pending {
    fn channel(blocking: bool, name: String) -> (Reply, Self) {
        let (reply, rx) = if blocking {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            (Reply::Blocking(tx), PendingRx::Blocking(rx))
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Reply::Async(tx), PendingRx::Async(rx))
        };
        (reply, Self { name, rx })
    }

    /// Waits on this thread. On a worker of a multi-thread tokio runtime (a set built from
    /// async code with `build()`), the worker's other tasks move to another thread meanwhile,
    /// rather than wait with it.
    fn blocking(self) -> Result<(), ConfigError> {
        let wait = || match self.rx {
            PendingRx::Blocking(rx) => rx.recv().ok(),
            PendingRx::Async(rx) => rx.blocking_recv().ok(),
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let answer = if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        answer.unwrap_or_else(|| Err(Self::unanswered(self.name)))
    }

    async fn wait(self) -> Result<(), ConfigError> {
        let answer = match self.rx {
            PendingRx::Async(rx) => rx.await.ok(),
            PendingRx::Blocking(rx) => rx.recv().ok(),
        };
        answer.unwrap_or_else(|| Err(Self::unanswered(self.name)))
    }

    /// A reply dropped unanswered: the resolver stopped (or the name left the set) before the
    /// name's first resolution. The set would start without the name: an error, not a success.
    fn unanswered(name: String) -> ConfigError {
        ConfigError::Resolve {
            name,
            reason: "the resolver stopped before answering".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_whose_reply_is_dropped_unanswered_fails_the_build() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for blocking in [true, false] {
            let wait = |p: Pending| match blocking {
                true => p.blocking(),
                false => runtime.block_on(p.wait()),
            };
            let (reply, pending) = Pending::channel(blocking, "db.internal:5432".into());
            drop(reply);
            let e = wait(pending).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Resolve { name, .. } if name == "db.internal:5432"),
                "{e}"
            );
            let (reply, pending) = Pending::channel(blocking, "db.internal:5432".into());
            reply.send(Ok(()));
            assert_eq!(wait(pending), Ok(()));
        }
    }
}
