//! Building a [`Peer`]: address, weight, HTTP version, TLS and timeouts, each checked.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

use super::tls;
use super::{
    Endpoint, Peer, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    MAX_CONNECT_TIMEOUT, MAX_IO_TIMEOUT, MAX_WEIGHT,
};
use crate::error::{check_timeout, ConfigError};

/// The HTTP versions spoken to a peer.
///
/// HTTP/2 multiplexes every request to a peer over one connection, and lets an upstream refuse a
/// stream it has not processed (`REFUSED_STREAM`, `GOAWAY`), which the engine retries for any
/// method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HttpVersion {
    /// HTTP/1.1 only: what pingora speaks unless told otherwise.
    #[default]
    Http1,
    /// HTTP/2 only. Over TLS, ALPN offers `h2` alone; in clear text, h2c with prior knowledge
    /// (RFC 9113 §3.3), for upstreams such as gRPC servers that speak it.
    Http2,
    /// HTTP/2 where the peer agrees to it, HTTP/1.1 otherwise: ALPN offers `h2`, then
    /// `http/1.1`. Needs TLS: in clear text there is nothing to negotiate with.
    Http2OrHttp1,
}

/// The names configuration files give the versions: `h1`, `h2`, `h2-or-h1`.
impl std::str::FromStr for HttpVersion {
    /// What is wrong, naming the accepted names.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "h1" => Ok(Self::Http1),
            "h2" => Ok(Self::Http2),
            "h2-or-h1" => Ok(Self::Http2OrHttp1),
            other => Err(format!("{other:?}: use h1, h2 or h2-or-h1")),
        }
    }
}

/// Builds a [`Peer`]; every setting is checked by [`build`](Self::build).
///
/// # Examples
///
/// HTTPS with HTTP/2 by ALPN, a private CA and a client certificate; and a gRPC server in clear
/// text, by h2c:
///
/// ```no_run
/// use pingora_failover::{HttpVersion, Peer};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ca = std::fs::read("/etc/ssl/private-ca.pem")?;
/// let (cert, key) = (std::fs::read("client.pem")?, std::fs::read("client.key")?);
/// let api = Peer::builder("10.0.0.1:443")
///     .with_tls("api.internal")
///     .with_ca_pem(ca)
///     .with_client_cert_pem(cert, key)
///     .with_http_version(HttpVersion::Http2)
///     .build()?;
/// let grpc = Peer::builder("10.0.0.2:50051")
///     .with_http_version(HttpVersion::Http2)
///     .build()?;
/// # let _ = (api, grpc);
/// # Ok(())
/// # }
/// ```
///
/// # Default
///
/// - weight: 1
/// - requests in flight: no limit
/// - HTTP version: [`HttpVersion::Http1`]
/// - TLS: off; once on, the peer's certificate and host name are verified against the system's
///   trusted roots (or the CAs given to [`with_ca_pem`](Self::with_ca_pem)), and no client
///   certificate is sent
/// - connect timeout: [`DEFAULT_CONNECT_TIMEOUT`] (2 s)
/// - read timeout: [`DEFAULT_READ_TIMEOUT`] (60 s)
/// - write timeout: [`DEFAULT_WRITE_TIMEOUT`] (60 s)
#[must_use]
pub struct PeerBuilder {
    addr: String,
    weight: u32,
    max_requests: Option<u32>,
    tls_sni: Option<String>,
    version: HttpVersion,
    ca_pem: Option<Vec<u8>>,
    client_pem: Option<(Vec<u8>, Vec<u8>)>,
    verify_cert: bool,
    verify_hostname: bool,
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
            .field("max_requests", &self.max_requests)
            .field("tls_sni", &self.tls_sni)
            .field("version", &self.version)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_certificate", &self.client_pem.is_some())
            .field("verify_cert", &self.verify_cert)
            .field("verify_hostname", &self.verify_hostname)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl PeerBuilder {
    pub(super) fn new(addr: String) -> Self {
        Self {
            addr,
            weight: 1,
            max_requests: None,
            tls_sni: None,
            version: HttpVersion::Http1,
            ca_pem: None,
            client_pem: None,
            verify_cert: true,
            verify_hostname: true,
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

    /// The most requests this peer may have in flight at once, 1 or more (Envoy's circuit
    /// breaker `max_requests`, HAProxy's `maxconn`). A peer at its limit is passed over while
    /// another peer or tier has room, so a backup sized for part of the load is not flattened
    /// at failover; when every candidate is at its limit, the request fails at once with a 503,
    /// or waits in the engine's queue when it has one
    /// ([`FailoverBuilder::with_queue`](crate::FailoverBuilder::with_queue)). Counted per peer across every request of the engine, and exact: the engine
    /// takes a place below the limit in one atomic step when an attempt starts, and a peer that
    /// filled up since it was chosen is passed over for another.
    pub fn with_max_requests(mut self, max: u32) -> Self {
        self.max_requests = Some(max);
        self
    }

    /// Connect with TLS, sending `sni` as the server name (SNI) and verifying the certificate
    /// against it. An empty name is refused unless verification is turned off
    /// ([`without_certificate_verification`](Self::without_certificate_verification)): pingora
    /// checks nothing without one. Needs pingora built with a TLS back-end: this crate's feature `openssl`,
    /// `boringssl` or `rustls` enables it.
    pub fn with_tls(mut self, sni: impl Into<String>) -> Self {
        self.tls_sni = Some(sni.into());
        self
    }

    /// The HTTP versions to speak to this peer; see [`HttpVersion`].
    pub fn with_http_version(mut self, version: HttpVersion) -> Self {
        self.version = version;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks) for this peer,
    /// instead of the system's roots: for upstreams with certificates from a private CA. Needs
    /// TLS, and this crate's TLS feature matching pingora's back-end.
    #[cfg_attr(
        not(any(feature = "openssl", feature = "boringssl", feature = "rustls")),
        deprecated(
            note = "reading PEM needs pingora-failover's feature `rustls`, `openssl` or \
                    `boringssl` (the back-end pingora is built with): without it, build() \
                    returns ConfigError::InvalidPem"
        )
    )]
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents a client certificate to this peer (mutual TLS): `cert_pem` holds the
    /// certificate, then any intermediates; `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    #[cfg_attr(
        not(any(feature = "openssl", feature = "boringssl", feature = "rustls")),
        deprecated(
            note = "reading PEM needs pingora-failover's feature `rustls`, `openssl` or \
                    `boringssl` (the back-end pingora is built with): without it, build() \
                    returns ConfigError::InvalidPem"
        )
    )]
    pub fn with_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_pem = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Accepts a certificate whose names do not match the SNI, while still checking that it
    /// chains to a trusted CA: for upstreams reached by address whose certificate names a
    /// service.
    pub fn without_hostname_verification(mut self) -> Self {
        self.verify_hostname = false;
        self
    }

    /// Accepts any certificate, trusted or not. This gives up on knowing who answers: keep it to
    /// tests and to networks where something else authenticates the peer.
    pub fn without_certificate_verification(mut self) -> Self {
        self.verify_cert = false;
        self.verify_hostname = false;
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
    /// this builder does not cover (TCP keepalive, idle timeout, ...).
    pub fn with_http_peer(mut self, f: impl FnOnce(&mut HttpPeer) + Send + 'static) -> Self {
        self.customize = Some(Box::new(f));
        self
    }

    /// Checks every setting and builds the peer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad setting: the address, the weight, a timeout, TLS
    /// without a TLS back-end, a TLS setting without TLS, or certificates that cannot be read.
    pub fn build(self) -> Result<Peer, ConfigError> {
        let endpoint = Endpoint::parse(&self.addr)?;
        let peer = || endpoint.to_string();
        if self.weight == 0 {
            return Err(ConfigError::ZeroWeight { peer: peer() });
        }
        if self.weight > MAX_WEIGHT {
            return Err(ConfigError::WeightTooLarge {
                peer: peer(),
                weight: self.weight,
                max: MAX_WEIGHT,
            });
        }
        if self.max_requests == Some(0) {
            return Err(ConfigError::OutOfRange {
                what: "max requests in flight",
                value: "0".to_owned(),
                range: "1 or more",
            });
        }
        let connect = check_timeout("connect timeout", self.connect_timeout, MAX_CONNECT_TIMEOUT)?;
        let read = check_timeout("read timeout", self.read_timeout, MAX_IO_TIMEOUT)?;
        let write = check_timeout("write timeout", self.write_timeout, MAX_IO_TIMEOUT)?;
        let tls = self.tls_sni.is_some();
        if tls && !tls::PINGORA_HAS_TLS {
            return Err(ConfigError::TlsUnavailable { peer: peer() });
        }
        // Pingora skips every certificate check when the server name is empty.
        if self.tls_sni.as_deref() == Some("") && self.verify_cert {
            return Err(ConfigError::EmptySni { peer: peer() });
        }
        if !tls {
            let setting = if self.ca_pem.is_some() {
                Some("a trusted CA")
            } else if self.client_pem.is_some() {
                Some("a client certificate")
            } else if !self.verify_cert || !self.verify_hostname {
                Some("turning verification off")
            } else if self.version == HttpVersion::Http2OrHttp1 {
                Some("choosing between HTTP/2 and HTTP/1.1")
            } else {
                None
            };
            if let Some(setting) = setting {
                return Err(ConfigError::TlsRequired {
                    peer: peer(),
                    setting,
                });
            }
        }
        let invalid = |what, reason| ConfigError::InvalidPem {
            peer: peer(),
            what,
            reason,
        };
        let ca = match &self.ca_pem {
            Some(pem) => Some(tls::ca_from_pem(pem).map_err(|r| invalid("trusted CA", r))?),
            None => None,
        };
        let client = match &self.client_pem {
            Some((cert, key)) => Some(
                tls::cert_key_from_pem(cert, key).map_err(|r| invalid("client certificate", r))?,
            ),
            None => None,
        };

        let sni = self.tls_sni.unwrap_or_default();
        let mut template = match &endpoint {
            Endpoint::Inet(sa) => HttpPeer::new(*sa, tls, sni),
            Endpoint::Unix(path) => {
                let path = path.to_str().ok_or_else(|| ConfigError::InvalidAddress {
                    address: self.addr.clone(),
                })?;
                HttpPeer::new_uds(path, tls, sni).map_err(|_| ConfigError::InvalidAddress {
                    address: self.addr.clone(),
                })?
            }
            // A template: each resolved address gets a copy with its own address.
            Endpoint::Name { port, .. } => {
                HttpPeer::new(SocketAddr::from(([0, 0, 0, 0], *port)), tls, sni)
            }
            Endpoint::Srv(_) => HttpPeer::new(SocketAddr::from(([0, 0, 0, 0], 0)), tls, sni),
        };
        template.options.connection_timeout = Some(connect);
        // Covers TCP and TLS together, so a stalled handshake cannot outlast the connect budget.
        template.options.total_connection_timeout = Some(connect);
        template.options.read_timeout = Some(read);
        template.options.write_timeout = Some(write);
        match self.version {
            HttpVersion::Http1 => template.options.set_http_version(1, 1),
            HttpVersion::Http2 => template.options.set_http_version(2, 2),
            HttpVersion::Http2OrHttp1 => template.options.set_http_version(2, 1),
        }
        template.options.ca = ca;
        template.client_cert_key = client;
        template.options.verify_cert = self.verify_cert;
        template.options.verify_hostname = self.verify_hostname;
        if let Some(f) = self.customize {
            f(&mut template);
        }
        Ok(Peer::from_parts(
            endpoint,
            self.weight,
            self.max_requests,
            template,
            None,
        ))
    }
}
