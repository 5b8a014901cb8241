//! pingora-load-balancing's discovery, plugged in: a `ServiceDiscovery` drives a [`PeerSet`]
//! (feature `discovery`). Its `LoadBalancer` as a selector is
//! [`LoadBalancerSelector`](crate::LoadBalancerSelector).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::Backend;

use async_trait::async_trait;

use crate::discovery::{builder, Feed, PeerSettings, Source, SourceService};
use crate::error::{check_timeout, ConfigError};
use crate::peer::{Peer, PeerBuilder};
use crate::set::PeerSet;

type OnError = Arc<dyn Fn(&ConfigError) + Send + Sync>;

/// The peer for `backend`, with `settings` applied.
pub(crate) fn peer_of(
    backend: &Backend,
    settings: Option<&PeerSettings>,
) -> Result<Peer, ConfigError> {
    let addr = match &backend.addr {
        PingoraAddr::Inet(sa) => sa.to_string(),
        PingoraAddr::Unix(path) => match path.as_pathname() {
            Some(p) => format!("unix:{}", p.display()),
            None => {
                return Err(ConfigError::InvalidAddress {
                    address: format!("{:?}", backend.addr),
                })
            }
        },
    };
    let weight = u32::try_from(backend.weight).unwrap_or(u32::MAX).max(1);
    builder(addr, settings)
        .with_weight(weight.min(crate::peer::MAX_WEIGHT))
        .build()
}

/// A pingora-load-balancing [`ServiceDiscovery`] driving a [`PeerSet`]: whatever discovery a
/// proxy already wrote for `LoadBalancer` (or its `Static`) feeds the set. The set keeps the
/// health of backends that stay; a backend the discovery marks disabled leaves the set.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use pingora_failover::{Discovered, PeerSet, RoundRobin};
/// use pingora_load_balancing::discovery::Static;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let discovery = Static::try_from_iter(["10.0.0.1:80", "10.0.0.2:80"])?;
/// let source = Discovered::new(discovery, Duration::from_secs(5))?;
/// let set = source.discover_set().await?; // the first answer
/// let selector = RoundRobin::from_set(set.clone());
/// source.watch(&set)?; // and every 5 s after
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Discovered {
    discovery: Arc<dyn ServiceDiscovery + Send + Sync>,
    every: Duration,
    settings: Option<PeerSettings>,
    on_error: Option<OnError>,
}

impl fmt::Debug for Discovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovered")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl Discovered {
    /// `discovery`, asked again every `every`.
    ///
    /// # Errors
    ///
    /// A timeout error for `every` (0, or over a day).
    pub fn new(
        discovery: Box<dyn ServiceDiscovery + Send + Sync>,
        every: Duration,
    ) -> Result<Self, ConfigError> {
        let every = check_timeout("discovery interval", every, Duration::from_secs(86_400))?;
        Ok(Self {
            discovery: Arc::from(discovery),
            every,
            settings: None,
            on_error: None,
        })
    }

    /// Settings applied to every discovered peer (timeouts, TLS, ...), before its weight.
    #[must_use]
    pub fn with_peer_settings(
        mut self,
        f: impl Fn(PeerBuilder) -> PeerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.settings = Some(Arc::new(f));
        self
    }

    /// Calls `f` when the discovery fails, or gives a backend the crate cannot use; the set then
    /// keeps its peers.
    #[must_use]
    pub fn on_error(mut self, f: impl Fn(&ConfigError) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// The discovery's peers now, enabled ones only, in the discovery's order.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Resolve`] when the discovery fails, and the errors of [`Peer::new`] for a
    /// backend the crate cannot use.
    pub async fn discover(&self) -> Result<Vec<Peer>, ConfigError> {
        let (backends, enabled) =
            self.discovery
                .discover()
                .await
                .map_err(|e| ConfigError::Resolve {
                    name: "service discovery".into(),
                    reason: e.to_string(),
                })?;
        backends
            .iter()
            .filter(|b| enabled.get(&hash_key(b)).copied().unwrap_or(true))
            .map(|b| peer_of(b, self.settings.as_ref()))
            .collect()
    }

    /// A set of the discovery's peers now.
    ///
    /// # Errors
    ///
    /// As [`discover`](Self::discover) and [`PeerSet::new`].
    pub async fn discover_set(&self) -> Result<PeerSet, ConfigError> {
        PeerSet::new(self.discover().await?)
    }

    /// Asks the discovery every interval, on a thread of its own, and replaces `set`'s peers
    /// with its answer, until the set is dropped (a [`SourceService`](crate::SourceService)
    /// spawned; in a pingora server, prefer `SourceService::new("discovery", source,
    /// &set).into_service()`, which starts after pingora's fork).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Resolve`] when the thread cannot start.
    pub fn watch(self, set: &PeerSet) -> Result<(), ConfigError> {
        SourceService::new("discovery", self, set).spawn().map(drop)
    }
}

/// The discovery is asked when the source starts, then every interval. An empty answer keeps
/// the set, as `LoadBalancer` keeps its backends on an error: a discovery hiccup must not
/// drain it.
#[async_trait]
impl Source for Discovered {
    async fn run(&self, feed: &Feed) {
        loop {
            let found = tokio::select! {
                found = self.discover() => found,
                () = feed.stopped() => return,
            };
            let result = match found {
                Ok(peers) => feed.replace(peers, None),
                Err(e) => {
                    feed.failed(&e);
                    Err(e)
                }
            };
            if let (Err(e), Some(f)) = (result, &self.on_error) {
                crate::health::guarded(|| f(&e));
            }
            if !feed.sleep(self.every).await {
                return;
            }
        }
    }
}

/// pingora-load-balancing's key for a backend in the enablement map (its `hash_key`).
fn hash_key(b: &Backend) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}
