//! The peer set: the upstreams selectors choose from, swapped as a whole when they change.
//!
//! tower and linkerd2-proxy keep three things apart: the set of endpoints (`discover`, `pool`),
//! the algorithm that picks one (`balance`), and each endpoint's load and health. So does this
//! crate: a [`PeerSet`] owns the peers, a [`PeerSelector`](crate::PeerSelector) picks from a
//! [`Snapshot`] of it, and each [`Peer`] carries its health.
//!
//! # Updates
//!
//! Every change (an add, a remove, a new weight, a whole new list, a name resolving to other
//! addresses) builds a new [`Snapshot`] and swaps it in at once. The request path only loads the
//! current snapshot: no lock, no allocation. A selector loads it once per attempt, so it always
//! sees one consistent set.
//!
//! - A peer that stays (the same endpoint and TLS server name) keeps its health across the
//!   update: its ejection, its counters, its probe. Its weight and settings may change.
//! - A removed peer leaves the snapshot; requests already on their way to it finish normally
//!   (they hold their own handle), and no request selects it once the update has returned.
//!   Once no set holds it, it is gone, whoever still holds a handle: its background probe
//!   stops, its ejection ends (and leaves the ejected-peers gauge), and the engine's metrics
//!   drop its series. Its handles are rebuilt by every update; its membership is what counts.
//! - A request's retries never return to a peer it already tried, even across an update: a
//!   peer's identity is its health, which the update keeps.
//!
//! Sources feed the set: a static list, names resolved by DNS (feature `dns`, see
//! `Resolver`), a peers file ([`PeersFile`](crate::PeersFile)), and
//! pingora-load-balancing's `ServiceDiscovery` (feature `discovery`).

mod builder;
#[cfg(feature = "dns")]
pub(crate) mod dns;
mod members;
mod snapshot;
mod weighted;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;

use crate::error::ConfigError;
use crate::health::{HealthChange, HealthObserver};
use crate::peer::{Endpoint, Peer};
pub use builder::PeerSetBuilder;
#[cfg(feature = "dns")]
pub(crate) use builder::Reply;
use members::Members;
#[cfg(feature = "dns")]
pub(crate) use members::Resolved;
pub use snapshot::{Snapshot, SnapshotRef};

#[cfg(feature = "dns")]
use dns::{Dns, Resolver};

/// The peers a selector chooses from, shared and changeable at runtime. Cloning it gives another
/// handle to the same set.
///
/// # Examples
///
/// ```
/// use pingora_failover::{OrderedList, Peer, PeerSet};
///
/// let set = PeerSet::new(vec![Peer::new("127.0.0.1:8080")?, Peer::new("127.0.0.1:8081")?])?;
/// let selector = OrderedList::from_set(set.clone());
/// // Later, from anywhere: a third peer joins, the first leaves.
/// set.add(Peer::new("127.0.0.1:8082")?)?;
/// assert!(set.remove("127.0.0.1:8080"));
/// assert_eq!(set.snapshot().len(), 2);
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct PeerSet {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    current: ArcSwap<Snapshot>,
    /// The set as configured: its peers and names, in order. Taken by updates only, never on
    /// the request path.
    members: Mutex<Members>,
    observer: Option<HealthObserver>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    /// How names are resolved; the resolver thread starts with the first name.
    #[cfg(feature = "dns")]
    resolver: Resolver,
    #[cfg(feature = "dns")]
    dns: Mutex<Option<Arc<Dns>>>,
    /// What keeps the set in step with a source on a thread of its own (a peers file, a
    /// service discovery): started again, with the resolver, in a process forked from this one.
    followers: Mutex<Vec<Follower>>,
    /// The fork generation the set's threads run in ([`crate::fork`]).
    generation: AtomicU64,
    /// What selectors derive from each snapshot (a hash ring), rebuilt by every update before
    /// the snapshot is published. Taken under `members`, never on the request path.
    derived: Mutex<Vec<Weak<dyn Derive>>>,
}

/// Starts a thread that keeps a set in step with a source (a spawned
/// [`SourceService`](crate::SourceService), which reads its source at once whenever it starts).
pub(crate) type Follower = Arc<dyn Fn() -> Result<(), ConfigError> + Send + Sync>;

/// A structure a selector derives from each snapshot of its set (pingora-load-balancing builds
/// its selection index when the backends change): built by the update that makes the snapshot,
/// before the snapshot is published, so that no request builds it.
pub(crate) trait Derive: Send + Sync {
    /// Builds what `snapshot` needs and keeps it.
    fn rebuild(&self, snapshot: &Arc<Snapshot>);
}

impl Drop for Shared {
    /// The set's peers leave it with it, and its metrics' count of peers.
    fn drop(&mut self) {
        let current = self.current.load();
        current.peers.iter().for_each(Peer::left_set);
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.set_dropped(current.peers.len());
        }
    }
}

impl fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSet")
            .field("peers", &self.snapshot().peers)
            .finish_non_exhaustive()
    }
}

impl PeerSet {
    /// A set of `peers`, in this order. Names are resolved first (feature `dns`, with the
    /// system's resolver; see [`PeerSetBuilder`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoPeers`], [`ConfigError::DuplicatePeer`], and for a name that does not
    /// resolve, [`ConfigError::Resolve`] (or [`ConfigError::UnresolvedName`] without the `dns`
    /// feature).
    pub fn new(peers: Vec<Peer>) -> Result<Self, ConfigError> {
        Self::builder(peers).build()
    }

    /// A builder for a set of `peers`.
    pub fn builder(peers: Vec<Peer>) -> PeerSetBuilder {
        PeerSetBuilder::new(peers)
    }

    /// The current snapshot, for one selection: no lock, no allocation.
    pub fn snapshot(&self) -> SnapshotRef {
        self.follow_forks();
        SnapshotRef(self.shared.current.load())
    }

    /// The current snapshot, to keep.
    pub fn peers(&self) -> Arc<Snapshot> {
        self.follow_forks();
        self.shared.current.load_full()
    }

    /// In a process forked since the set's threads started (pingora's daemon), starts them
    /// again: the resolver, which follows every name again, and the followers.
    fn follow_forks(&self) {
        let now = crate::fork::current();
        if self.shared.generation.load(Ordering::Relaxed) != now {
            self.restart(now);
        }
    }

    #[cold]
    fn restart(&self, now: u64) {
        let followers = {
            let followers = self.followers();
            if self.shared.generation.swap(now, Ordering::Relaxed) == now {
                return;
            }
            followers.clone()
        };
        #[cfg(feature = "dns")]
        {
            // The old thread is gone; its handle only holds a channel.
            let gone = self
                .shared
                .dns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if gone.is_some() && self.dns().is_ok() {
                let names = self.members().names();
                self.resolve_in_background(names);
            }
        }
        for follow in followers {
            let _ = follow();
        }
    }

    /// Starts `follow` now, and again in every process forked from this one.
    pub(crate) fn follow(&self, follow: Follower) -> Result<(), ConfigError> {
        self.follow_forks();
        follow()?;
        self.followers().push(follow);
        Ok(())
    }

    fn followers(&self) -> MutexGuard<'_, Vec<Follower>> {
        self.shared
            .followers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces every peer with `peers`. Peers that stay keep their health; names are resolved
    /// in the background (until then, a name keeps the addresses it had, if it was there
    /// before).
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`], except that names never fail here: a name that does not resolve
    /// keeps what it had, and the failure is reported as a health event and a metric. The
    /// resolver (the builder's, or the system's) starts with the set's first name.
    pub fn replace(&self, peers: Vec<Peer>) -> Result<(), ConfigError> {
        if peers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        members::check(&peers)?;
        self.require_resolver(&peers)?;
        let mut m = self.members();
        let names = m.replace(peers);
        // Every peer leaving for names that have not resolved yet: the old peers serve until
        // they do, rather than no peer at all.
        let changes = (!(m.pending() && m.flatten_is_empty())).then(|| self.publish(&mut m));
        drop(m);
        self.report(changes);
        self.resolve_in_background(names);
        Ok(())
    }

    /// Adds `peer` at the end.
    ///
    /// # Errors
    ///
    /// [`ConfigError::DuplicatePeer`] when the set has it already.
    pub fn add(&self, peer: Peer) -> Result<(), ConfigError> {
        self.require_resolver(std::slice::from_ref(&peer))?;
        let mut m = self.members();
        let names = m.add(peer)?;
        let changes = self.publish(&mut m);
        drop(m);
        self.report(Some(changes));
        self.resolve_in_background(names);
        Ok(())
    }

    /// Removes the peer (or the name) at `endpoint`, as given to [`Peer::new`]; `false` when the
    /// set has none.
    pub fn remove(&self, endpoint: &str) -> bool {
        let Ok(endpoint) = Endpoint::parse(endpoint) else {
            return false;
        };
        let mut m = self.members();
        let removed = m.remove(&endpoint);
        let changes = removed.then(|| self.publish(&mut m));
        drop(m);
        self.report(changes);
        removed
    }

    /// Gives the peer (or every address of the name) at `endpoint` a new weight, keeping its
    /// health; `false` when the set has none.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroWeight`] or [`ConfigError::WeightTooLarge`].
    pub fn set_weight(&self, endpoint: &str, weight: u32) -> Result<bool, ConfigError> {
        let Ok(endpoint) = Endpoint::parse(endpoint) else {
            return Ok(false);
        };
        let mut m = self.members();
        let changed = m.set_weight(&endpoint, weight)?;
        let changes = changed.then(|| self.publish(&mut m));
        drop(m);
        self.report(changes);
        Ok(changed)
    }

    /// Keeps `derived` built for every snapshot, from the current one on, as long as it lives
    /// elsewhere (the set holds it weakly).
    pub(crate) fn derive(&self, derived: Arc<dyn Derive>) {
        let _members = self.members();
        // Not `peers()`: after a fork, that starts the set's threads again, which takes the
        // lock held here.
        derived.rebuild(&self.shared.current.load_full());
        self.derived().push(Arc::downgrade(&derived));
    }

    fn derived(&self) -> MutexGuard<'_, Vec<Weak<dyn Derive>>> {
        self.shared
            .derived
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        // A panic while updating cannot leave the members half-changed: each update builds its
        // new state before it assigns it.
        self.shared
            .members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds the snapshot from `m`, keeping the health of peers that stay, and swaps it in;
    /// what changed, to report once the lock is released (an observer may update the set).
    fn publish(&self, m: &mut MutexGuard<'_, Members>) -> Changes {
        let old = self.shared.current.load_full();
        let peers = m.flatten(&old.peers);
        let ids = |ps: &[Peer]| ps.iter().map(Peer::id).collect::<HashSet<_>>();
        let (before, after) = (ids(&old.peers), ids(&peers));
        let added: Vec<Peer> = peers
            .iter()
            .filter(|p| !before.contains(&p.id()))
            .cloned()
            .collect();
        let removed: Vec<Peer> = old
            .peers
            .iter()
            .filter(|q| !after.contains(&q.id()))
            .cloned()
            .collect();
        // A peer that joins a set already serving ramps up (slow start); a first set has
        // nothing to ramp up beside.
        if !old.peers.is_empty() {
            added.iter().for_each(|p| p.health().start_ramp());
        }
        // Membership is what keeps a peer's probe, gauge and series alive, not its handles.
        added.iter().for_each(Peer::joined_set);
        removed.iter().for_each(Peer::left_set);
        let version = old.version + 1;
        let weighted = weighted::Weighted::new(&peers);
        let snapshot = Arc::new(Snapshot {
            peers,
            version,
            weighted,
        });
        self.derived().retain(|d| match d.upgrade() {
            Some(d) => {
                d.rebuild(&snapshot);
                true
            }
            None => false,
        });
        self.shared.current.store(snapshot);
        Changes { added, removed }
    }

    fn report(&self, changes: Option<Changes>) {
        let Some(Changes { added, removed }) = changes else {
            return;
        };
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.shared.metrics {
            metrics.set_changed(added.len(), removed.len(), self.snapshot().len());
        }
        if let Some(observe) = &self.shared.observer {
            for (peers, change) in [
                (&added, HealthChange::Added),
                (&removed, HealthChange::Removed),
            ] {
                for peer in peers {
                    crate::health::notify(observe, peer, change);
                }
            }
        }
    }

    /// Reports that `name` failed to resolve; the set keeps what it had.
    #[cfg(feature = "dns")]
    pub(crate) fn report_resolve_failure(&self, name: &Peer) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.shared.metrics {
            metrics.resolve_failed(name);
        }
        if let Some(observe) = &self.shared.observer {
            crate::health::notify(observe, name, HealthChange::ResolveFailed);
        }
    }

    /// Sets the addresses of the name `group` to `resolved`; `false` when the set no longer has
    /// that name (it was removed or replaced).
    #[cfg(feature = "dns")]
    pub(crate) fn set_resolved(&self, group: u64, resolved: Vec<Resolved>) -> bool {
        let mut m = self.members();
        let (live, changes) = match m.set_resolved(group, resolved) {
            Some(true) => (true, Some(self.publish(&mut m))),
            Some(false) => (true, None),
            None => (false, None),
        };
        drop(m);
        self.report(changes);
        live
    }

    pub(crate) fn downgrade(&self) -> Weak<Shared> {
        Arc::downgrade(&self.shared)
    }

    pub(crate) fn upgrade(weak: &Weak<Shared>) -> Option<Self> {
        weak.upgrade().map(|shared| Self { shared })
    }

    /// The resolver thread, started on first use.
    #[cfg(feature = "dns")]
    fn dns(&self) -> Result<Arc<Dns>, ConfigError> {
        let mut dns = self.shared.dns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dns) = &*dns {
            return Ok(dns.clone());
        }
        let started = Arc::new(Dns::start(self.shared.resolver.clone())?);
        *dns = Some(started.clone());
        Ok(started)
    }

    #[cfg(feature = "dns")]
    fn require_resolver(&self, peers: &[Peer]) -> Result<(), ConfigError> {
        if peers.iter().any(|p| p.endpoint().is_name()) {
            self.dns()?;
        }
        Ok(())
    }

    #[cfg(not(feature = "dns"))]
    fn require_resolver(&self, peers: &[Peer]) -> Result<(), ConfigError> {
        members::no_names(peers)
    }

    #[cfg(feature = "dns")]
    fn resolve_in_background(&self, names: Vec<(u64, Peer)>) {
        // `require_resolver` started it when there are names.
        let dns = self
            .shared
            .dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(dns) = dns {
            for (group, spec) in names {
                dns.watch(self, group, spec, None);
            }
        }
    }

    #[cfg(not(feature = "dns"))]
    fn resolve_in_background(&self, names: Vec<(u64, Peer)>) {
        debug_assert!(names.is_empty());
    }
}

#[cfg(feature = "active-health")]
impl crate::health::ActiveHealthCheck {
    /// Checks the peers `set` holds at each round with `check`, every `interval` (10 ms to 1
    /// hour): the addresses its names resolve to, and peers added after this call; a peer that
    /// left is no longer checked.
    ///
    /// # Errors
    ///
    /// A timeout error for the interval.
    pub fn from_set(
        set: &PeerSet,
        check: Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync>,
        interval: std::time::Duration,
    ) -> Result<Self, ConfigError> {
        let set = set.clone();
        Self::following(Box::new(move || set.peers().to_vec()), check, interval)
    }
}

/// The peers an update added and removed.
struct Changes {
    added: Vec<Peer>,
    removed: Vec<Peer>,
}
