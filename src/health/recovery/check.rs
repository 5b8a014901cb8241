//! One probe of a peer: a connect, or `GET path` over the peer's own transport, bounded by a
//! timeout; the background prober and the cut's liveness check both make it.

use std::sync::OnceLock;
use std::time::Duration;

use pingora_core::connectors::http::Connector;
use pingora_core::connectors::TransportConnector;
use pingora_http::RequestHeader;

use super::{Check, RecoveryProbe};
use crate::peer::Peer;

impl RecoveryProbe {
    /// Whether `peer` passes one probe. The probe is never more patient than a request: its
    /// timeouts are the probe's, or the peer's own where they are shorter (a peer too slow for
    /// its requests must not pass its probe).
    pub(super) async fn passes(&self, peer: &Peer) -> bool {
        self.check_within(peer, self.timeout).await == Checked::Passed
    }

    /// Makes the connector probes use now, off the path of any probe: the first one builds
    /// pingora's TLS context (loading the system's roots), which can take a hundred
    /// milliseconds.
    pub(crate) fn warm(&self) {
        if self.connectors.0.get().is_some() {
            return;
        }
        match &self.check {
            Check::Connect => {
                TRANSPORT.get_or_init(|| TransportConnector::new(None));
            }
            Check::Http { .. } => {
                HTTP.get_or_init(|| Connector::new(None));
            }
        }
    }

    /// The connector for plain connects: the server's, once known.
    fn transport(&self) -> &TransportConnector {
        match self.connectors.0.get() {
            Some((_, transport)) => transport,
            None => TRANSPORT.get_or_init(|| TransportConnector::new(None)),
        }
    }

    /// How long a new connection to `peer` takes (TCP, and TLS for a TLS peer), made as the
    /// proxy makes its own and within the peer's connect timeouts (10 s when it has none);
    /// `None` when it could not be made, or the peer is a name no set resolved (it has no
    /// address to connect to).
    pub(crate) async fn connect_time(&self, peer: &Peer) -> Option<Duration> {
        let target = peer.connect_target().ok()?;
        let connector = self.transport();
        let options = &target.options;
        let limit = options
            .total_connection_timeout
            .or(options.connection_timeout)
            .unwrap_or(Duration::from_secs(10));
        let started = std::time::Instant::now();
        match tokio::time::timeout(limit, connector.new_stream(target)).await {
            Ok(Ok(_)) => Some(started.elapsed()),
            _ => None,
        }
    }

    /// Whether `peer` passes one probe with `timeout` for its connect and for its answer: the
    /// liveness check of a peer a request waits on ([`AdaptiveTimeouts`]). A probe the proxy
    /// could not make for reasons of its own (out of file descriptors or local ports) is
    /// [`Checked::Unknown`]: it says nothing about the peer.
    ///
    /// [`AdaptiveTimeouts`]: crate::AdaptiveTimeouts
    pub(crate) async fn check_within(&self, peer: &Peer, timeout: Duration) -> Checked {
        self.check(peer, timeout, timeout).await.0
    }

    /// What the liveness check's request takes `peer` to answer once connected, with any
    /// status, within `answer` (its connect within `connect`); `None` when no answer came, and
    /// for a check that is only a connect (what that takes is the connect time).
    pub(crate) async fn answer_time(
        &self,
        peer: &Peer,
        connect: Duration,
        answer: Duration,
    ) -> Option<Duration> {
        if matches!(self.check, Check::Connect) {
            return None;
        }
        match self.check(peer, connect, answer).await {
            (Checked::Passed | Checked::Answered, Some(took)) => Some(took),
            _ => None,
        }
    }

    /// When a check given `connect` and `answer` has failed by its own timeouts.
    pub(crate) fn due(&self, connect: Duration, answer: Duration) -> Duration {
        match self.check {
            Check::Connect => connect,
            Check::Http { .. } => connect + answer,
        }
    }

    /// One check, its connect given `connect` and its answer `answer` (at most the peer's
    /// own timeouts), and the time from the connection made to the answer, if one came.
    pub(crate) async fn check(
        &self,
        peer: &Peer,
        connect: Duration,
        answer: Duration,
    ) -> (Checked, Option<Duration>) {
        let mut target = peer.http_peer().clone();
        let options = &mut target.options;
        let within = |own: Option<Duration>, at_most: Duration| {
            Some(own.map_or(at_most, |t| t.min(at_most)))
        };
        options.connection_timeout = within(options.connection_timeout, connect);
        options.total_connection_timeout = within(options.total_connection_timeout, connect);
        options.read_timeout = within(options.read_timeout, answer);
        options.write_timeout = within(options.write_timeout, answer);
        // Bounded as a whole too, whatever the transport does.
        let limit = (connect + answer) * 3 / 2;
        match &self.check {
            Check::Connect => {
                let checked =
                    match tokio::time::timeout(limit, self.transport().new_stream(&target)).await {
                        Ok(Ok(_)) => Checked::Passed,
                        Ok(Err(e)) => Checked::unreachable(&e),
                        Err(_) => Checked::Unreachable,
                    };
                (checked, None)
            }
            Check::Http { path } => {
                let connector = match self.connectors.0.get() {
                    Some((http, _)) => http,
                    None => HTTP.get_or_init(|| Connector::new(None)),
                };
                let host = self.host.as_deref().unwrap_or_else(|| peer.authority());
                let mut connected = None;
                let status = http_status(connector, &target, path, host, &mut connected);
                let checked = match tokio::time::timeout(limit, status).await {
                    Ok(Ok(status)) if self.passing.contains(status) => Checked::Passed,
                    Ok(Ok(_)) => Checked::Answered,
                    Ok(Err(e)) if connected.is_none() => Checked::unreachable(&e),
                    _ if connected.is_none() => Checked::Unreachable,
                    _ => Checked::Failed,
                };
                (checked, connected.map(|at| at.elapsed()))
            }
        }
    }
}

/// What one probe showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    Passed,
    /// Answered in time with a status the probe does not pass (a health path the peer does
    /// not serve): the peer is alive, though the probe does not pass.
    Answered,
    /// Connected, but the answer was late or broken.
    Failed,
    /// The connection (TCP, and TLS for a TLS peer) could not be made.
    Unreachable,
    /// The proxy could not make the probe for reasons of its own.
    Unknown,
}

impl Checked {
    /// A probe whose connect failed with `e`: unknown when the failure was the proxy's own.
    fn unreachable(e: &pingora_error::Error) -> Self {
        match crate::FailureKind::from_connect(e) {
            crate::FailureKind::Local => Self::Unknown,
            _ => Self::Unreachable,
        }
    }
}

/// Pingora's default connectors, for probes of an engine not yet checked against a server's
/// configuration.
static TRANSPORT: OnceLock<TransportConnector> = OnceLock::new();
static HTTP: OnceLock<Connector> = OnceLock::new();

/// The status `GET path` gets from `target` with `Host: host`; `connected` is set to when the
/// connection was made.
async fn http_status(
    connector: &Connector,
    target: &pingora_core::upstreams::peer::HttpPeer,
    path: &str,
    host: &str,
    connected: &mut Option<std::time::Instant>,
) -> pingora_error::Result<u16> {
    use pingora_error::{ErrorType, OkOrErr};
    let (mut session, _) = connector.get_http_session(target).await?;
    *connected = Some(std::time::Instant::now());
    // The connector applies the connect timeouts only.
    session.set_write_timeout(target.options.write_timeout);
    session.set_read_timeout(target.options.read_timeout);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header("host", host)?;
    req.insert_header("user-agent", "pingora-failover recovery probe")?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    session
        .response_header()
        .map(|r| r.status.as_u16())
        .or_err(ErrorType::InvalidHTTPHeader, "no response header")
}
