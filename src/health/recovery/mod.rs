//! Recovery out of band: an ejected peer is probed in the background at a short interval, and
//! re-admitted by the first probe that passes. No request is ever the probe of an ejected peer.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora_core::connectors::http::Connector;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::server::configuration::ServerConf;
use pingora_http::RequestHeader;

use crate::error::{check_between, ConfigError};

mod check;
mod prober;

pub(crate) use check::Checked;
pub(crate) use prober::{start, Reports};

/// How an ejected peer is probed while it is out.
///
/// Without it, the first request to reach a peer after its ejection is the probe: it pays a
/// timeout if the peer is still broken, and the peer's traffic returns only when its ejection
/// time ends, however early it recovered. With it, the engine probes each ejected peer in the
/// background from the end of its ejection time, about every `interval`, and re-admits it at the
/// first probe that passes; requests never probe. The ejection time is then the quiet spell
/// before probing starts, which grows for a flapping peer (one ejected again before it has stayed
/// healthy for as long as it was last out). A peer that leaves its [`PeerSet`](crate::PeerSet)
/// is no longer probed; one that stays across an update (a reload, a new weight, a DNS answer)
/// keeps its probe.
///
/// The probe is an HTTP request over the peer's own transport (TLS, HTTP/2, unix socket, as
/// configured on the peer), or only a connect. An HTTP probe sees a peer that accepts
/// connections but answers 503, or too slowly to be useful; a connect does not.
///
/// # Default
///
/// - check: `GET /` with `Host` set to the peer's TLS server name, else the name it was
///   resolved from, else its address: the request a browser or `curl` would send to that
///   peer, so that a virtual host answers as it does to real traffic
/// - passing statuses: 200 to 399, as in Kubernetes' HTTP probes, HAProxy's `httpchk` and nginx
///   Plus's `health_check`. A 404 from a default virtual host, a 401 from an authentication
///   wall or a 429 from a rate limiter says the peer cannot serve yet, so none re-admits it. A
///   service whose `/` does not answer 2xx or 3xx needs a health path
///   ([`http`](Self::http)) or [`with_passing_statuses`](Self::with_passing_statuses);
///   until then its probes fail and, after the longest ejection time, requests probe it
/// - interval: 250 ms, each wait drawn within ±20 % of it (gRPC's connection backoff jitter),
///   so that the probes of many peers, or of a fleet of proxies, do not arrive in step
/// - timeout: 1 s for the connect and for the answer each
/// - connection: as the proxy's own, from the server's configuration (`ca_file`,
///   `client_bind_to_ipv4`/`ipv6`) once the engine is checked against it
///   ([`Failover::check_server_conf`](crate::Failover::check_server_conf), which building it
///   does), so that a peer trusted through the server's CA file passes its probes
#[derive(Debug, Clone)]
pub struct RecoveryProbe {
    check: Check,
    connectors: Connectors,
    host: Option<Box<str>>,
    passing: Statuses,
    interval: Duration,
    jitter: f64,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Check {
    Connect,
    Http { path: Box<str> },
}

/// Shortest probe interval accepted: a probe every 10 ms already keeps a broken peer busy.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Shortest probe timeout accepted.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

impl Default for RecoveryProbe {
    fn default() -> Self {
        Self {
            check: Check::Http { path: "/".into() },
            connectors: Connectors::default(),
            host: None,
            passing: Statuses::range(200, 399),
            interval: Duration::from_millis(250),
            jitter: 0.2,
            timeout: Duration::from_secs(1),
        }
    }
}

impl RecoveryProbe {
    /// Probes with `GET path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a path that does not start with `/` or is not a valid
    /// request target.
    pub fn http(path: &str) -> Result<Self, ConfigError> {
        if !path.starts_with('/') || RequestHeader::build("GET", path.as_bytes(), None).is_err() {
            return Err(ConfigError::OutOfRange {
                what: "recovery probe path",
                value: path.to_owned(),
                range: "a request path starting with /",
            });
        }
        Ok(Self {
            check: Check::Http { path: path.into() },
            ..Self::default()
        })
    }

    /// Probes with a connect only (TCP, and TLS for a TLS peer).
    pub fn connect() -> Self {
        Self {
            check: Check::Connect,
            ..Self::default()
        }
    }

    /// The `Host` an HTTP probe sends (the `:authority` over HTTP/2), for every peer: a
    /// virtual host the peers serve their health on.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for anything but a host name or address with an optional
    /// `:port` (`api.example`, `10.0.0.1:8080`, `[::1]:8080`).
    pub fn with_host(mut self, host: &str) -> Result<Self, ConfigError> {
        if !is_authority(host) {
            return Err(ConfigError::OutOfRange {
                what: "recovery probe host",
                value: host.to_owned(),
                range: "a host name or address, with an optional :port",
            });
        }
        self.host = Some(host.into());
        Ok(self)
    }

    /// The statuses with which an HTTP probe passes (`200..=299`, `[200, 204]`); any other
    /// fails.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for no status, or one outside 100 to 599.
    pub fn with_passing_statuses(
        mut self,
        statuses: impl IntoIterator<Item = u16>,
    ) -> Result<Self, ConfigError> {
        let mut passing = Statuses::default();
        for status in statuses {
            if !passing.insert(status) {
                return Err(ConfigError::OutOfRange {
                    what: "recovery probe passing statuses",
                    value: status.to_string(),
                    range: "100 to 599",
                });
            }
        }
        if passing.is_empty() {
            return Err(ConfigError::OutOfRange {
                what: "recovery probe passing statuses",
                value: "none".into(),
                range: "at least one status",
            });
        }
        self.passing = passing;
        Ok(self)
    }

    /// The time between probes of a peer that is still failing (each wait within the jitter
    /// of it).
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for zero, [`ConfigError::TimeoutTooShort`] below 10 ms,
    /// [`ConfigError::TimeoutTooLong`] above a minute.
    pub fn with_interval(mut self, interval: Duration) -> Result<Self, ConfigError> {
        self.interval = check_between(
            "recovery probe interval",
            interval,
            MIN_INTERVAL,
            Duration::from_secs(60),
        )?;
        Ok(self)
    }

    /// How far each wait between probes may stray from the interval, as a fraction of it: each
    /// wait is drawn uniformly from `interval × (1 ± jitter)`. 0 waits exactly the interval.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] outside 0 to 1.
    pub fn with_jitter(mut self, jitter: f64) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&jitter) {
            return Err(ConfigError::OutOfRange {
                what: "recovery probe jitter",
                value: jitter.to_string(),
                range: "0 to 1",
            });
        }
        self.jitter = jitter;
        Ok(self)
    }

    /// How long a probe may take to connect, and then to be answered.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for zero, [`ConfigError::TimeoutTooShort`] below 1 ms,
    /// [`ConfigError::TimeoutTooLong`] above a minute.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeout = check_between(
            "recovery probe timeout",
            timeout,
            MIN_TIMEOUT,
            Duration::from_secs(60),
        )?;
        Ok(self)
    }

    /// Probes connect as the proxy does under `conf` (its CA file, its source addresses). The
    /// first configuration given is kept: clones of this probe share it.
    pub(crate) fn use_server_conf(&self, conf: &ServerConf) {
        self.connectors.0.get_or_init(|| {
            let options = ConnectorOptions::from_server_conf(conf);
            (
                Connector::new(Some(options.clone())),
                TransportConnector::new(Some(options)),
            )
        });
    }

    /// The wait before the next probe, `unit` a random number in `[0, 1)`.
    fn wait(&self, unit: f64) -> Duration {
        self.interval
            .mul_f64(1.0 + self.jitter * (2.0 * unit - 1.0))
            .max(Duration::from_millis(1))
    }
}

/// The connectors probes use, made from the server's configuration once it is known; until
/// then, pingora's defaults.
#[derive(Clone, Default)]
struct Connectors(Arc<OnceLock<(Connector, TransportConnector)>>);

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Connectors(server)"
        } else {
            "Connectors(default)"
        })
    }
}

/// A set of HTTP statuses, 100 to 599.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Statuses([u64; 8]);

impl Statuses {
    fn range(from: u16, to: u16) -> Self {
        let mut s = Self::default();
        (from..=to).for_each(|status| {
            s.insert(status);
        });
        s
    }

    /// Adds `status`; `false` when it is not a status.
    fn insert(&mut self, status: u16) -> bool {
        if !(100..=599).contains(&status) {
            return false;
        }
        let i = usize::from(status - 100);
        self.0[i / 64] |= 1 << (i % 64);
        true
    }

    fn contains(&self, status: u16) -> bool {
        (100..=599).contains(&status) && {
            let i = usize::from(status - 100);
            self.0[i / 64] & (1 << (i % 64)) != 0
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

impl fmt::Debug for Statuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((100..=599).filter(|s| self.contains(*s)))
            .finish()
    }
}

/// A host name or address with an optional port: what a `Host` header may carry.
fn is_authority(s: &str) -> bool {
    let host = match s.strip_prefix('[') {
        // `[IPv6]` or `[IPv6]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((ip, port)) => {
                return ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty()
                        || port
                            .strip_prefix(':')
                            .is_some_and(|p| p.parse::<u16>().is_ok()));
            }
            None => return false,
        },
        None => match s.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            Some(_) => return false,
            None => s,
        },
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stray_within_the_jitter_and_do_not_repeat() {
        let probe = RecoveryProbe::default();
        assert_eq!(probe.wait(0.0), Duration::from_millis(200));
        assert_eq!(probe.wait(0.5), Duration::from_millis(250));
        let jitter = crate::rng::Rng::from_seed(7);
        let waits: Vec<Duration> = (0..1000).map(|_| probe.wait(jitter.unit())).collect();
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*lo >= Duration::from_millis(200) && *hi <= Duration::from_millis(300));
        assert!(
            *hi - *lo > Duration::from_millis(90),
            "spread: {lo:?}..{hi:?}"
        );
        let steady = probe.with_jitter(0.0).unwrap();
        assert_eq!(steady.wait(0.9), Duration::from_millis(250));
    }

    #[test]
    fn statuses_pass_as_configured() {
        let default = RecoveryProbe::default().passing;
        for (status, passes) in [(200, true), (204, true), (302, true), (399, true)] {
            assert_eq!(default.contains(status), passes, "{status}");
        }
        for status in [100, 401, 404, 429, 500, 503] {
            assert!(!default.contains(status), "{status}");
        }
        let given = RecoveryProbe::default()
            .with_passing_statuses([200, 404])
            .unwrap()
            .passing;
        assert!(given.contains(404) && given.contains(200) && !given.contains(204));
        assert_eq!(format!("{given:?}"), "{200, 404}");
    }

    #[test]
    fn a_host_is_a_name_or_address_with_a_port() {
        for good in [
            "api.example",
            "api.example:8443",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_authority(good), "{good:?}");
        }
        for bad in [
            "",
            "api example",
            "a/b",
            "api:port",
            "[::1",
            "[nope]:80",
            "a:99999",
        ] {
            assert!(!is_authority(bad), "{bad:?}");
        }
    }

    #[test]
    fn intervals_and_timeouts_have_bounds() {
        let p = RecoveryProbe::default();
        assert!(matches!(
            p.clone().with_interval(Duration::from_nanos(1)),
            Err(ConfigError::TimeoutTooShort { .. })
        ));
        assert!(matches!(
            p.clone().with_interval(Duration::from_secs(61)),
            Err(ConfigError::TimeoutTooLong { .. })
        ));
        assert!(p.clone().with_interval(MIN_INTERVAL).is_ok());
        assert!(p.clone().with_timeout(Duration::ZERO).is_err());
        assert!(p.with_jitter(f64::NAN).is_err());
    }
}
