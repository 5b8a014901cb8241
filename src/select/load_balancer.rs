//! pingora-load-balancing's `LoadBalancer` as a [`PeerSelector`] (feature `discovery`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::{Backend, LoadBalancer};

use crate::discovery::{peer_of, PeerSettings};
use crate::peer::{Peer, PeerBuilder};
use crate::select::{Attempt, PeerSelector};

/// An existing pingora `LoadBalancer` as a [`PeerSelector`]: its discovery, health checks and
/// algorithm stay as they are, and the crate adds failover. A retry skips the backends the
/// request already tried (through `select_with`), and a backend the crate ejected is skipped
/// like one the `LoadBalancer`'s own checks failed.
///
/// The key given to the `LoadBalancer` (for its hash algorithms) is the request path. Each
/// backend keeps one [`Peer`] (and so its health) for as long as the backend lives.
/// `LoadBalancer::select_with` allocates as it iterates, so this selector does too; the crate's
/// own selectors do not.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use pingora_failover::{FailoverProxy, LoadBalancerSelector, StandardPolicy};
/// use pingora_load_balancing::{selection::RoundRobin, LoadBalancer};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let lb = Arc::new(LoadBalancer::<RoundRobin>::try_from_iter(["10.0.0.1:80", "10.0.0.2:80"])?);
/// let proxy = FailoverProxy::new(LoadBalancerSelector::new(lb), StandardPolicy::default())?;
/// # Ok(()) }
/// ```
pub struct LoadBalancerSelector<S: BackendSelection> {
    lb: Arc<LoadBalancer<S>>,
    settings: Option<PeerSettings>,
    peers: ArcSwap<HashMap<Backend, Peer>>,
    max_iterations: usize,
}

impl<S: BackendSelection> fmt::Debug for LoadBalancerSelector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadBalancerSelector")
            .field("peers", &self.peers.load().len())
            .finish_non_exhaustive()
    }
}

impl<S> LoadBalancerSelector<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    /// A selector over `lb`.
    pub fn new(lb: Arc<LoadBalancer<S>>) -> Self {
        Self {
            lb,
            settings: None,
            peers: ArcSwap::default(),
            max_iterations: 256,
        }
    }

    /// Settings applied to the peer of every backend (timeouts, TLS, ...), before its weight.
    #[must_use]
    pub fn with_peer_settings(
        mut self,
        f: impl Fn(PeerBuilder) -> PeerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.settings = Some(Arc::new(f));
        self
    }

    /// The `LoadBalancer`.
    pub fn load_balancer(&self) -> &Arc<LoadBalancer<S>> {
        &self.lb
    }

    /// The peer of `backend`: the same one every time, so that its health carries over.
    fn peer(&self, backend: &Backend) -> Option<Peer> {
        if let Some(p) = self.peers.load().get(backend) {
            return Some(p.clone());
        }
        let made = peer_of(backend, self.settings.as_ref()).ok()?;
        let mut kept = None;
        self.peers.rcu(|map| {
            // The backends as they are at this try (not before it): a peer another thread
            // just made for a new backend is never dropped as gone.
            let live = self.lb.backends().get_backend();
            let mut map: HashMap<Backend, Peer> = map
                .iter()
                .filter(|(b, _)| live.contains(*b))
                .map(|(b, p)| (b.clone(), p.clone()))
                .collect();
            kept = Some(
                map.entry(backend.clone())
                    .or_insert_with(|| made.clone())
                    .clone(),
            );
            map
        });
        kept
    }
}

impl<S> PeerSelector for LoadBalancerSelector<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let key = attempt
            .request()
            .map_or(&b""[..], |r| r.uri.path().as_bytes());
        // The first peer admitted is the one returned.
        let admitted = std::cell::RefCell::new(None);
        self.lb.select_with(key, self.max_iterations, |b, healthy| {
            let Some(p) = self.peer(b).filter(|p| healthy && attempt.admits(p)) else {
                return false;
            };
            *admitted.borrow_mut() = Some(p);
            true
        });
        if let Some(p) = admitted.into_inner() {
            return Some(p);
        }
        // Panic mode: every backend is tried, ejected or failing its checks.
        let all: Vec<Peer> = self
            .lb
            .backends()
            .get_backend()
            .iter()
            .filter_map(|b| self.peer(b))
            .collect();
        attempt.best_untried(all.iter()).cloned()
    }
}
