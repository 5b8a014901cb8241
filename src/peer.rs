//! One upstream: its address, weight, TLS settings and timeouts.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use crate::error::{check_timeout, ConfigError};
use crate::health::PeerHealth;

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

/// Whether a TLS back-end is compiled in; without one, pingora would silently connect in clear.
const TLS_AVAILABLE: bool = cfg!(any(
    feature = "openssl",
    feature = "boringssl",
    feature = "rustls"
));

/// One upstream server.
///
/// A `Peer` is a cheap handle (an [`Arc`]): cloning it does not allocate, and clones are the same
/// peer. Identity is by handle, not by address: two peers built separately are different peers
/// even when their settings match, which is what lets a request know which peers it already
/// tried.
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
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    /// The `Display` form, computed once: logs and metric labels use it on every request.
    name: Box<str>,
    weight: u32,
    template: HttpPeer,
    health: PeerHealth,
}

impl Peer {
    /// A peer at `addr` (`IP:PORT`) with default settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidAddress`] or [`ConfigError::ZeroPort`] when `addr` is not a usable
    /// `IP:PORT`.
    pub fn new(addr: &str) -> Result<Self, ConfigError> {
        Self::builder(addr).build()
    }

    /// A builder for a peer at `addr` (`IP:PORT`); the address is checked by
    /// [`PeerBuilder::build`].
    pub fn builder(addr: impl Into<String>) -> PeerBuilder {
        PeerBuilder::new(addr.into())
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The peer's name for logs and metric labels: `IP:PORT`, with the SNI for a TLS peer.
    pub fn name(&self) -> &str {
        &self.inner.name
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

    /// The pingora peer this peer connects through, as configured.
    pub fn http_peer(&self) -> &HttpPeer {
        &self.inner.template
    }

    /// The peer's shared health: ejections, probes, active-check verdicts.
    pub fn health(&self) -> &PeerHealth {
        &self.inner.health
    }

    /// How long a probe request may hold the half-open slot: one connect plus one read.
    pub(crate) fn probe_window(&self) -> Duration {
        self.connect_timeout() + self.read_timeout()
    }

    /// A number unique to this peer while it lives.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as *const () as usize
    }

    /// Whether `self` and `other` are the same peer (the same handle).
    pub fn same(&self, other: &Peer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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
        std::ptr::hash(Arc::as_ptr(&self.inner), state)
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
            .field("addr", &self.inner.addr)
            .field("weight", &self.inner.weight)
            .field("tls", &self.is_tls())
            .field("sni", &self.sni())
            .field("health", &self.health().state())
            .finish()
    }
}

/// Builds a [`Peer`]; every setting is checked by [`build`](Self::build).
///
/// # Default
///
/// - weight: 1
/// - TLS: off
/// - connect timeout: [`DEFAULT_CONNECT_TIMEOUT`] (2 s)
/// - read timeout: [`DEFAULT_READ_TIMEOUT`] (60 s)
/// - write timeout: [`DEFAULT_WRITE_TIMEOUT`] (60 s)
#[must_use]
pub struct PeerBuilder {
    addr: String,
    weight: u32,
    tls_sni: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    customize: Option<Customize>,
}

type Customize = Box<dyn FnOnce(&mut HttpPeer) + Send>;

impl fmt::Debug for PeerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerBuilder")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .field("tls_sni", &self.tls_sni)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl PeerBuilder {
    fn new(addr: String) -> Self {
        Self {
            addr,
            weight: 1,
            tls_sni: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            customize: None,
        }
    }

    /// The weight for weighted selectors, 1 to [`MAX_WEIGHT`].
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Connect with TLS, sending `sni` as the server name. Needs one of the crate features
    /// `openssl`, `boringssl` or `rustls`.
    pub fn with_tls(mut self, sni: impl Into<String>) -> Self {
        self.tls_sni = Some(sni.into());
        self
    }

    /// The TCP (and TLS) connect timeout; at most [`MAX_CONNECT_TIMEOUT`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait for each read of the response; a slow upstream hits this one. At most
    /// [`MAX_IO_TIMEOUT`].
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The longest wait for each write of the request; at most [`MAX_IO_TIMEOUT`].
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Adjusts the underlying pingora [`HttpPeer`] after the builder has set it up, for options
    /// this builder does not cover (ALPN, certificates, TCP keepalive, ...).
    pub fn with_http_peer(mut self, f: impl FnOnce(&mut HttpPeer) + Send + 'static) -> Self {
        self.customize = Some(Box::new(f));
        self
    }

    /// Checks every setting and builds the peer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad setting: the address, the weight, a timeout, or
    /// TLS without a TLS back-end.
    pub fn build(self) -> Result<Peer, ConfigError> {
        let addr: SocketAddr =
            self.addr
                .trim()
                .parse()
                .map_err(|_| ConfigError::InvalidAddress {
                    address: self.addr.clone(),
                })?;
        if addr.port() == 0 {
            return Err(ConfigError::ZeroPort { address: self.addr });
        }
        if self.weight == 0 {
            return Err(ConfigError::ZeroWeight {
                peer: addr.to_string(),
            });
        }
        if self.weight > MAX_WEIGHT {
            return Err(ConfigError::WeightTooLarge {
                peer: addr.to_string(),
                weight: self.weight,
                max: MAX_WEIGHT,
            });
        }
        let connect = check_timeout("connect timeout", self.connect_timeout, MAX_CONNECT_TIMEOUT)?;
        let read = check_timeout("read timeout", self.read_timeout, MAX_IO_TIMEOUT)?;
        let write = check_timeout("write timeout", self.write_timeout, MAX_IO_TIMEOUT)?;
        if self.tls_sni.is_some() && !TLS_AVAILABLE {
            return Err(ConfigError::TlsUnavailable {
                peer: addr.to_string(),
            });
        }

        let tls = self.tls_sni.is_some();
        let name = match &self.tls_sni {
            Some(sni) => format!("{addr} (tls {sni})"),
            None => addr.to_string(),
        }
        .into_boxed_str();
        let mut template = HttpPeer::new(addr, tls, self.tls_sni.unwrap_or_default());
        template.options.connection_timeout = Some(connect);
        // Covers TCP and TLS together, so a stalled handshake cannot outlast the connect budget.
        template.options.total_connection_timeout = Some(connect);
        template.options.read_timeout = Some(read);
        template.options.write_timeout = Some(write);
        if let Some(f) = self.customize {
            f(&mut template);
        }
        Ok(Peer {
            inner: Arc::new(Inner {
                addr,
                name,
                weight: self.weight,
                template,
                health: PeerHealth::default(),
            }),
        })
    }
}

/// Checks a selector's peer list: not empty, no peer twice.
pub(crate) fn check_peers(peers: &[Peer]) -> Result<(), ConfigError> {
    if peers.is_empty() {
        return Err(ConfigError::NoPeers);
    }
    for (i, p) in peers.iter().enumerate() {
        if peers[..i]
            .iter()
            .any(|q| q.same(p) || (q.addr() == p.addr() && q.sni() == p.sni()))
        {
            return Err(ConfigError::DuplicatePeer {
                peer: p.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6() {
        assert_eq!(Peer::new("127.0.0.1:80").unwrap().addr().port(), 80);
        assert!(Peer::new("[::1]:443").unwrap().addr().is_ipv6());
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "localhost:80",
            "127.0.0.1",
            "127.0.0.1:http",
            "1.2.3.4:99999",
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
            check_peers(&[a, b]),
            Err(ConfigError::DuplicatePeer {
                peer: "127.0.0.1:1".into()
            })
        );
    }
}
