//! Where a peer lives: a socket address, a Unix domain socket, or a name to resolve.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// Where a peer lives, as given to [`Peer::new`](crate::Peer::new).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Endpoint {
    /// `IP:PORT`, or `[IPv6]:PORT`.
    Inet(SocketAddr),
    /// `unix:/path/to/socket`: a Unix domain socket.
    Unix(PathBuf),
    /// `host:PORT`: every A and AAAA record of `host` is a peer on `port`
    /// (see [`PeerSet`](crate::PeerSet)).
    Name {
        /// The host name, without a trailing dot.
        host: String,
        /// The port.
        port: u16,
    },
    /// `_service._proto.name` (no port): every SRV record of the name is a peer, with the port
    /// and weight the record gives (how Kubernetes headless services and Consul publish a
    /// fleet).
    Srv(String),
}

impl Endpoint {
    /// Parses `addr`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidAddress`] when `addr` is none of the accepted forms, and
    /// [`ConfigError::ZeroPort`] for port 0.
    pub fn parse(addr: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidAddress {
            address: addr.to_owned(),
        };
        let s = addr.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(invalid());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(ConfigError::ZeroPort {
                    address: addr.to_owned(),
                });
            }
            return Ok(Self::Inet(sa));
        }
        if s.starts_with('_') && !s.contains(':') {
            let name = s.trim_end_matches('.');
            return is_dns_name(name, true)
                .then(|| Self::Srv(name.to_ascii_lowercase()))
                .ok_or_else(invalid);
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if port == 0 {
            return Err(ConfigError::ZeroPort {
                address: addr.to_owned(),
            });
        }
        let host = host.trim_end_matches('.');
        // An IP without brackets or a bad IPv6 form is not a name either.
        if host.parse::<std::net::IpAddr>().is_ok() || !is_dns_name(host, false) {
            return Err(invalid());
        }
        Ok(Self::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The socket address of an [`Inet`](Self::Inet) endpoint.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Inet(sa) => Some(*sa),
            _ => None,
        }
    }

    /// The path of a [`Unix`](Self::Unix) endpoint.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(p) => Some(p),
            _ => None,
        }
    }

    /// Whether this endpoint is a name that must be resolved before it can be connected to.
    pub fn is_name(&self) -> bool {
        matches!(self, Self::Name { .. } | Self::Srv(_))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet(sa) => write!(f, "{sa}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
            Self::Srv(name) => f.write_str(name),
        }
    }
}

/// Letters, digits, hyphens and dots, labels of 1 to 63 characters, 253 in all (RFC 1123);
/// `_` may start a label of an SRV name.
fn is_dns_name(s: &str, srv: bool) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let body = if srv {
                label.strip_prefix('_').unwrap_or(label)
            } else {
                label
            };
            !body.is_empty()
                && label.len() <= 63
                && !body.starts_with('-')
                && !body.ends_with('-')
                && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = |s| Endpoint::parse(s).unwrap();
        assert_eq!(
            p("127.0.0.1:80"),
            Endpoint::Inet("127.0.0.1:80".parse().unwrap())
        );
        assert!(matches!(p("[::1]:443"), Endpoint::Inet(sa) if sa.is_ipv6()));
        assert_eq!(
            p("unix:/run/app.sock"),
            Endpoint::Unix("/run/app.sock".into())
        );
        assert_eq!(
            p("API.Internal.:8080"),
            Endpoint::Name {
                host: "api.internal".into(),
                port: 8080
            }
        );
        assert_eq!(
            p("_http._tcp.api.internal"),
            Endpoint::Srv("_http._tcp.api.internal".into())
        );
        assert!(p("localhost:1").is_name());
    }

    #[test]
    fn rejects_what_is_none_of_them() {
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:http",
            "1.2.3.4:99999",
            "::1:80",
            "api",
            "bad_name:80",
            "-x.example:80",
            "unix:",
            "unix:relative.sock",
            "a..b:80",
            "_srv._tcp.x:80",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(bad),
                    Err(ConfigError::InvalidAddress { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Endpoint::parse("api:0"),
            Err(ConfigError::ZeroPort { .. })
        ));
    }
}
