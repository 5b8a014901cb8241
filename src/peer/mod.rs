//! One upstream: where it lives, its weight, TLS settings and timeouts.

mod builder;
mod endpoint;
mod tls;

pub use builder::{HttpVersion, PeerBuilder};
pub use endpoint::Endpoint;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::upstreams::peer::HttpPeer;

use crate::cell::PeerHealth;
use crate::error::ConfigError;

/// Connect timeout used when none is given: 2 s, long enough for one lost SYN to be resent
/// (Linux resends after 1 s) and short enough that a dead peer is left quickly.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read timeout used when none is given: 60 s, nginx's `proxy_read_timeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Write timeout used when none is given: 60 s, nginx's `proxy_send_timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest connect timeout accepted: Linux gives up on an unanswered SYN after about 127 s, so a
/// longer timeout never fires.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest read or write timeout accepted: one hour.
pub const MAX_IO_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest weight accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// One upstream server.
///
/// A `Peer` is a cheap handle (an [`Arc`]): cloning it does not allocate, and clones are the same
/// peer. A peer's identity is its health: two peers built separately are different peers even
/// when their settings match, which is what lets a request know which peers it already tried.
/// A [`PeerSet`](crate::PeerSet) keeps that identity across updates: a peer that stays in the set
/// (same endpoint and SNI) keeps its health, even when its weight or settings change.
///
/// A peer lives at an [`Endpoint`]: `IP:PORT`, `unix:/path`, or a name (`host:PORT`, or an SRV
/// name) that a [`PeerSet`](crate::PeerSet) resolves into one peer per address.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use pingora_failover::Peer;
///
/// let primary = Peer::new("127.0.0.1:8080")?;
/// let backup = Peer::builder("127.0.0.1:8081")
///     .with_weight(2)
///     .with_connect_timeout(Duration::from_millis(400))
///     .build()?;
/// assert_eq!(backup.weight(), 2);
/// assert_ne!(primary, backup);
/// let by_name = Peer::new("api.internal:8080")?; // resolved by a PeerSet
/// assert!(by_name.endpoint().is_name());
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    /// The `Display` form, computed once: logs and metric labels use it on every request.
    name: Box<str>,
    weight: u32,
    /// The most requests it may have in flight; `None`: no limit.
    max_requests: Option<u32>,
    template: HttpPeer,
    /// The HTTP authority of the name this peer's address was resolved from (`host`, with
    /// `:PORT` unless it is the scheme's default), sent as `Host` by its probes.
    authority: Option<Box<str>>,
    /// Shared by every handle of the same peer, across set updates.
    health: Arc<PeerHealth>,
}

impl Peer {
    /// Whether the peer is gone: it has left every set that held it, or, for a peer never in
    /// a set (a custom selector's own), this handle is its last. A set's updates rebuild
    /// handles but keep a peer that stays, so membership, not handles, says whether it is.
    pub(crate) fn is_orphan(&self) -> bool {
        match self.health().held() {
            Some(held) => !held,
            None => Arc::strong_count(&self.inner) == 1,
        }
    }

    /// Counts the peer into a set.
    pub(crate) fn joined_set(&self) {
        self.health().joined_set();
    }

    /// Counts the peer out of a set (see `PeerHealth::left_set`).
    pub(crate) fn left_set(&self) {
        self.health().left_set(self.name());
    }

    /// A peer at `addr` with default settings: `IP:PORT`, `[IPv6]:PORT`, `unix:/path`,
    /// `host:PORT` or `_service._proto.name` (see [`Endpoint`]).
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidAddress`] or [`ConfigError::ZeroPort`] when `addr` is none of
    /// these.
    pub fn new(addr: &str) -> Result<Self, ConfigError> {
        Self::builder(addr).build()
    }

    /// A builder for a peer at `addr` (see [`Peer::new`]); the address is checked by
    /// [`PeerBuilder::build`].
    pub fn builder(addr: impl Into<String>) -> PeerBuilder {
        PeerBuilder::new(addr.into())
    }

    /// Where the peer lives.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The socket address, for a peer at `IP:PORT` (a resolved name included); `None` for a
    /// Unix socket or a name not resolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.socket_addr()
    }

    /// The peer's name for logs and metric labels: its endpoint, with the SNI for a TLS peer.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The most requests it may have in flight ([`PeerBuilder::with_max_requests`]); `None`
    /// for no limit.
    pub fn max_requests(&self) -> Option<u32> {
        self.inner.max_requests
    }

    /// Whether the peer has as many requests in flight as it may have
    /// ([`PeerBuilder::with_max_requests`]): selectors pass it over, as they pass over an
    /// ejected peer, and panic mode does not pick it.
    pub fn is_at_limit(&self) -> bool {
        self.inner
            .max_requests
            .is_some_and(|max| self.health().in_flight() >= max)
    }

    /// Takes a place in flight below its limit, in one atomic step; `false` when it is full
    /// ([`PeerHealth::reserve`](crate::cell::PeerHealth)).
    pub(crate) fn reserve(&self) -> bool {
        self.health().reserve(self.inner.max_requests)
    }

    /// The weight, used by weighted selectors.
    pub fn weight(&self) -> u32 {
        self.inner.weight
    }

    /// Whether connections to this peer use TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.template.is_tls()
    }

    /// The server name sent in TLS SNI (empty without TLS).
    pub fn sni(&self) -> &str {
        &self.inner.template.sni
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.inner
            .template
            .options
            .connection_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The read timeout: the longest wait for each read of the response header or body.
    pub fn read_timeout(&self) -> Duration {
        self.inner
            .template
            .options
            .read_timeout
            .unwrap_or(DEFAULT_READ_TIMEOUT)
    }

    /// The pingora peer this peer connects through, as configured. For a name no
    /// [`PeerSet`](crate::PeerSet) resolved, its address is a placeholder (`0.0.0.0:PORT`):
    /// send through [`connect_target`](Self::connect_target), which refuses it.
    pub fn http_peer(&self) -> &HttpPeer {
        &self.inner.template
    }

    /// The pingora peer to send a request to, or an error when there is no address to send it
    /// to: a name (`host:PORT`, SRV) that no [`PeerSet`](crate::PeerSet) resolved. Such a peer
    /// still holds the template address `0.0.0.0:PORT`, which Linux connects to the local host;
    /// a request must never go there. The engine answers it with a 502, and this error.
    ///
    /// # Errors
    ///
    /// An `HTTPStatus(502)` error naming the peer, for an unresolved name.
    pub fn connect_target(&self) -> pingora_error::Result<&HttpPeer> {
        if self.endpoint().is_name() {
            return pingora_error::Error::e_explain(
                pingora_error::ErrorType::HTTPStatus(502),
                format!(
                    "peer {self} is a name that was not resolved (only a PeerSet resolves \
                     names): not sent"
                ),
            );
        }
        Ok(&self.inner.template)
    }

    /// The peer's shared health: ejections, probes, active-check verdicts.
    pub fn health(&self) -> &PeerHealth {
        &self.inner.health
    }

    /// The `Host` a request of the crate's own (a probe) sends: the TLS server name, else the
    /// name the peer was resolved from (with the port unless it is the scheme's default), else
    /// the address; `localhost` for a Unix socket.
    pub(crate) fn authority(&self) -> &str {
        let sni = self.sni();
        if !sni.is_empty() {
            return sni;
        }
        if let Some(authority) = &self.inner.authority {
            return authority;
        }
        match self.endpoint() {
            Endpoint::Unix(_) => "localhost",
            _ => self.name(),
        }
    }

    /// How long a probe request may hold the half-open slot: one connect plus one read.
    pub(crate) fn probe_window(&self) -> Duration {
        self.connect_timeout() + self.read_timeout()
    }

    /// A number unique to this peer (shared by its handles) while it lives.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner.health) as *const () as usize
    }

    /// Whether `self` and `other` are the same peer: handles of one peer, or of one peer kept
    /// by a [`PeerSet`](crate::PeerSet) across an update.
    pub fn same(&self, other: &Peer) -> bool {
        Arc::ptr_eq(&self.inner.health, &other.inner.health)
    }

    /// What identifies a peer within a set: its endpoint and its TLS server name.
    pub(crate) fn key(&self) -> (&Endpoint, &str) {
        (&self.inner.endpoint, self.sni())
    }

    /// This peer's settings at `addr`, with `weight` if given: one address of a name. A new
    /// peer, with health of its own.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    pub(crate) fn resolved(&self, addr: SocketAddr, weight: Option<u32>) -> Peer {
        let mut template = self.inner.template.clone();
        template._address = PingoraAddr::Inet(addr);
        let weight = weight.map_or(self.inner.weight, |w| w.clamp(1, MAX_WEIGHT));
        let authority = match self.endpoint() {
            Endpoint::Name { host, port } if *port == if self.is_tls() { 443 } else { 80 } => {
                Some(host.as_str().into())
            }
            Endpoint::Name { host, port } => Some(format!("{host}:{port}").into_boxed_str()),
            _ => None,
        };
        Peer::from_parts(
            Endpoint::Inet(addr),
            weight,
            self.inner.max_requests,
            template,
            authority,
        )
    }

    /// A new peer, with health of its own.
    fn from_parts(
        endpoint: Endpoint,
        weight: u32,
        max_requests: Option<u32>,
        template: HttpPeer,
        authority: Option<Box<str>>,
    ) -> Peer {
        Peer {
            inner: Arc::new(Inner {
                name: display_name(&endpoint, &template),
                endpoint,
                weight,
                max_requests,
                template,
                authority,
                health: Arc::default(),
            }),
        }
    }

    /// This peer's settings and weight, with `existing`'s health and identity: how a set keeps a
    /// peer that stays across an update whose settings changed.
    pub(crate) fn adopting(&self, existing: &Peer) -> Peer {
        Peer {
            inner: Arc::new(Inner {
                endpoint: self.inner.endpoint.clone(),
                name: self.inner.name.clone(),
                weight: self.inner.weight,
                max_requests: self.inner.max_requests,
                template: self.inner.template.clone(),
                authority: self.inner.authority.clone(),
                health: existing.inner.health.clone(),
            }),
        }
    }

    /// This peer with another weight (already checked), keeping its health and identity.
    pub(crate) fn reweighted(&self, weight: u32) -> Peer {
        Peer {
            inner: Arc::new(Inner {
                endpoint: self.inner.endpoint.clone(),
                name: self.inner.name.clone(),
                weight,
                max_requests: self.inner.max_requests,
                template: self.inner.template.clone(),
                authority: self.inner.authority.clone(),
                health: self.inner.health.clone(),
            }),
        }
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}

impl Eq for Peer {}

impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.name)
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("endpoint", &self.inner.endpoint)
            .field("weight", &self.inner.weight)
            .field("tls", &self.is_tls())
            .field("sni", &self.sni())
            .field("health", &self.health().state())
            .finish()
    }
}

/// A peer's name for logs and metrics, computed once.
fn display_name(endpoint: &Endpoint, template: &HttpPeer) -> Box<str> {
    if template.is_tls() {
        format!("{endpoint} (tls {})", template.sni)
    } else {
        endpoint.to_string()
    }
    .into_boxed_str()
}

/// Peers on loopback ports from `port` on, with `weights`, for unit tests.
#[cfg(test)]
pub(crate) fn weighted_for_tests(port: u16, weights: &[u32]) -> Vec<Peer> {
    weights
        .iter()
        .zip(port..)
        .map(|(w, port)| {
            Peer::builder(format!("127.0.0.1:{port}"))
                .with_weight(*w)
                .build()
                .unwrap()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_v6_unix_and_names() {
        assert_eq!(
            Peer::new("127.0.0.1:80").unwrap().addr().unwrap().port(),
            80
        );
        assert!(Peer::new("[::1]:443").unwrap().addr().unwrap().is_ipv6());
        let uds = Peer::new("unix:/run/app.sock").unwrap();
        assert_eq!(uds.name(), "unix:/run/app.sock");
        assert_eq!(uds.addr(), None);
        assert!(Peer::new("localhost:80").unwrap().endpoint().is_name());
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:http",
            "1.2.3.4:99999",
            "no name:80",
        ] {
            assert!(
                matches!(Peer::new(bad), Err(ConfigError::InvalidAddress { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Peer::new("127.0.0.1:0"),
            Err(ConfigError::ZeroPort { .. })
        ));
    }

    #[test]
    fn a_resolved_address_keeps_the_settings_and_an_adopted_peer_the_identity() {
        let name = Peer::builder("api.internal:8080")
            .with_weight(3)
            .with_read_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let a = name.resolved("10.0.0.1:8080".parse().unwrap(), None);
        assert_eq!(a.name(), "10.0.0.1:8080");
        assert_eq!(
            (a.weight(), a.read_timeout()),
            (3, Duration::from_millis(300))
        );
        assert!(!a.same(&name));
        assert_eq!(a.authority(), "api.internal:8080", "probed by its name");
        let on_80 = Peer::new("api.internal:80").unwrap();
        let b = on_80.resolved("10.0.0.2:80".parse().unwrap(), None);
        assert_eq!(
            b.authority(),
            "api.internal",
            "the scheme's default port is left out"
        );
        let reweighted = a.resolved("10.0.0.1:8080".parse().unwrap(), Some(7));
        let kept = reweighted.adopting(&a);
        assert!(kept.same(&a) && kept.weight() == 7);
    }

    #[test]
    fn an_unresolved_name_has_no_connect_target() {
        let name = Peer::new("api.internal:8080").unwrap();
        let e = name.connect_target().unwrap_err();
        assert_eq!(e.etype(), &pingora_error::ErrorType::HTTPStatus(502));
        assert!(e.to_string().contains("api.internal:8080"), "{e}");
        let resolved = name.resolved("10.0.0.1:8080".parse().unwrap(), None);
        let target = resolved.connect_target().unwrap();
        assert_eq!(target._address.to_string(), "10.0.0.1:8080");
        assert!(Peer::new("unix:/run/app.sock")
            .unwrap()
            .connect_target()
            .is_ok());
    }

    #[test]
    fn applies_timeouts_to_the_pingora_peer() {
        let p = Peer::builder("127.0.0.1:1")
            .with_connect_timeout(Duration::from_millis(400))
            .with_read_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let o = &p.http_peer().options;
        assert_eq!(o.connection_timeout, Some(Duration::from_millis(400)));
        assert_eq!(o.total_connection_timeout, Some(Duration::from_millis(400)));
        assert_eq!(o.read_timeout, Some(Duration::from_millis(300)));
    }

    #[test]
    fn clones_are_the_same_peer_and_rebuilds_are_not() {
        let a = Peer::new("127.0.0.1:1").unwrap();
        let b = Peer::new("127.0.0.1:1").unwrap();
        assert_eq!(a, a.clone());
        assert_ne!(a, b);
        assert_eq!(
            crate::PeerSet::new(vec![a, b]).unwrap_err(),
            ConfigError::DuplicatePeer {
                peer: "127.0.0.1:1".into()
            }
        );
    }
}
