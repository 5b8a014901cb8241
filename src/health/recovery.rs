//! Recovery out of band: an ejected peer is probed in the background at a short interval, and
//! re-admitted by the first probe that passes. No request is ever the probe of an ejected peer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora_core::connectors::http::Connector;
use pingora_core::connectors::TransportConnector;
use pingora_http::RequestHeader;

use crate::error::{check_timeout, ConfigError};
use crate::health::state::Tally;
use crate::peer::Peer;

/// How an ejected peer is probed while it is out.
///
/// Without it, the first request to reach a peer after its ejection is the probe: it pays a
/// timeout if the peer is still broken, and the peer's traffic returns only when its ejection
/// time ends, however early it recovered. With it, the engine probes each ejected peer in the
/// background from the end of its ejection time, every `interval`, and re-admits it at the first
/// probe that passes; requests never probe. The ejection time is then the quiet spell before
/// probing starts, which grows for a flapping peer (one ejected again before it has stayed
/// healthy for as long as it was last out).
///
/// The probe is an HTTP request (`GET /` by default; any status below 500 passes) over the
/// peer's own transport (TLS, HTTP/2, unix socket, as configured on the peer), or only a
/// connect. An HTTP probe sees a peer that accepts connections but answers 503, or too slowly
/// to be useful; a connect does not.
///
/// # Default
///
/// - check: `GET /`, any status below 500 passes (nginx Plus's `health_check` default)
/// - interval: 250 ms
/// - timeout: 1 s for the connect and for the answer each
#[derive(Debug, Clone)]
pub struct RecoveryProbe {
    check: Check,
    interval: Duration,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Check {
    Connect,
    Http { path: Box<str> },
}

impl Default for RecoveryProbe {
    fn default() -> Self {
        Self {
            check: Check::Http { path: "/".into() },
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
        }
    }
}

impl RecoveryProbe {
    /// Probes with `GET path`; a status below 500 passes.
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

    /// The time between probes of a peer that is still failing.
    ///
    /// # Errors
    ///
    /// A timeout error for zero or more than a minute.
    pub fn with_interval(mut self, interval: Duration) -> Result<Self, ConfigError> {
        self.interval =
            check_timeout("recovery probe interval", interval, Duration::from_secs(60))?;
        Ok(self)
    }

    /// How long a probe may take to connect, and then to be answered.
    ///
    /// # Errors
    ///
    /// A timeout error for zero or more than a minute.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeout = check_timeout("recovery probe timeout", timeout, Duration::from_secs(60))?;
        Ok(self)
    }

    /// Whether `peer` passes one probe. The probe is never more patient than a request: its
    /// timeouts are the probe's, or the peer's own where they are shorter (a peer too slow for
    /// its requests must not pass its probe).
    async fn passes(&self, peer: &Peer) -> bool {
        self.passes_within(peer, self.timeout).await
    }

    /// Whether `peer` passes one probe with `timeout` for its connect and for its answer: the
    /// liveness check of a peer a request waits on ([`AdaptiveTimeouts`]).
    ///
    /// [`AdaptiveTimeouts`]: crate::AdaptiveTimeouts
    pub(crate) async fn passes_within(&self, peer: &Peer, timeout: Duration) -> bool {
        let mut target = peer.http_peer().clone();
        let options = &mut target.options;
        let within = |own: Option<Duration>| Some(own.map_or(timeout, |t| t.min(timeout)));
        options.connection_timeout = within(options.connection_timeout);
        options.total_connection_timeout = within(options.total_connection_timeout);
        options.read_timeout = within(options.read_timeout);
        options.write_timeout = within(options.write_timeout);
        // Bounded as a whole too, whatever the transport does.
        let limit = timeout * 3;
        match &self.check {
            Check::Connect => {
                static CONNECTOR: OnceLock<TransportConnector> = OnceLock::new();
                let connector = CONNECTOR.get_or_init(|| TransportConnector::new(None));
                tokio::time::timeout(limit, connector.new_stream(&target))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            Check::Http { path } => {
                tokio::time::timeout(limit, http_status(&target, path, peer.name()))
                    .await
                    .is_ok_and(|status| status.is_some_and(|s| s < 500))
            }
        }
    }
}

/// The status `GET path` gets from `target`, `None` when it fails.
async fn http_status(
    target: &pingora_core::upstreams::peer::HttpPeer,
    path: &str,
    name: &str,
) -> Option<u16> {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    let connector = CONNECTOR.get_or_init(|| Connector::new(None));
    let (mut session, _) = connector.get_http_session(target).await.ok()?;
    // The connector applies the connect timeouts only.
    session.set_write_timeout(target.options.write_timeout);
    session.set_read_timeout(target.options.read_timeout);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).ok()?;
    let host = if target.sni.is_empty() {
        name
    } else {
        &target.sni
    };
    req.insert_header("host", host).ok()?;
    req.insert_header("user-agent", "pingora-failover recovery probe")
        .ok()?;
    session.write_request_header(Box::new(req)).await.ok()?;
    session.finish_request_body().await.ok()?;
    session.read_response_header().await.ok()?;
    session.response_header().map(|r| r.status.as_u16())
}

/// What a prober reports to: the engine's tally of ejected peers and its health events.
pub(crate) trait Reports: Tally + Send + Sync + 'static {
    fn probing(&self, peer: &Peer);
    fn readmitted(&self, peer: &Peer);
}

/// Starts probing `peer` in the background unless a prober already owns it. Without a tokio
/// runtime to run on, nothing starts, and the peer is probed by a request as without a prober.
/// A prober whose probes have failed for `give_up` hands the peer back to request probes: a
/// probe that fails by design (a health path the peer does not serve) must not keep a working
/// peer out for good.
pub(crate) fn start(
    peer: &Peer,
    probe: &RecoveryProbe,
    give_up: Duration,
    reports: &Arc<impl Reports>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !peer.health().take_background() {
        return;
    }
    let (peer, probe, reports) = (peer.clone(), probe.clone(), reports.clone());
    runtime.spawn(async move {
        loop {
            if !run(&peer, &probe, give_up, &*reports).await {
                // Gave up: requests probe it from now on.
                peer.health().release_background();
                return;
            }
            peer.health().release_background();
            // An ejection that came as this prober was leaving found it still in charge: take it.
            if peer.is_orphan() || !peer.health().is_ejected() || !peer.health().take_background() {
                return;
            }
        }
    });
}

/// Probes `peer` until it is re-admitted, is no longer ejected, or has left every set; `false`
/// when its probes kept failing for `give_up`.
async fn run(
    peer: &Peer,
    probe: &RecoveryProbe,
    give_up: Duration,
    reports: &impl Reports,
) -> bool {
    let mut announced = false;
    let mut probing_since = None;
    loop {
        let health = peer.health();
        if !health.is_ejected() || peer.is_orphan() {
            return true;
        }
        let wait = health.ejection_left_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            continue;
        }
        if !health.is_check_passing() {
            // Its active check holds it out; probing would not let it in.
            tokio::time::sleep(probe.interval).await;
            continue;
        }
        if !announced {
            reports.probing(peer);
            announced = true;
        }
        let since = *probing_since.get_or_insert_with(tokio::time::Instant::now);
        if probe.passes(peer).await {
            if health.record_success_counted(true, reports) {
                reports.readmitted(peer);
            }
            return true;
        }
        if since.elapsed() >= give_up {
            return false;
        }
        tokio::time::sleep(probe.interval).await;
    }
}
