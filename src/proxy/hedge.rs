//! Hedged requests: when a safe request's first attempt has no response header after a delay,
//! a second attempt goes to another peer, and the first header to arrive is the answer (The
//! Tail at Scale's hedged requests; Envoy's `hedge_on_per_try_timeout`, gRPC's
//! `hedgingPolicy`).
//!
//! Pingora 0.9 runs one upstream session per request, so the two attempts are pingora
//! subrequests of the client's request, each run through the same proxy with a [`Leg`] that
//! pins its first peer; the client's request forwards the winner's response.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_core::protocols::http::subrequest::server::SubrequestHandle;
use pingora_core::protocols::http::HttpTask;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::subrequest::Ctx as SubrequestCtx;
use pingora_proxy::Session;
use tokio::task::JoinHandle;

use super::engine::Failover;
use super::walk::client_ip;
use crate::ctx::{AttemptRecord, FailoverCtx};
use crate::error::{check_timeout, ConfigError};
use crate::peer::Peer;
use crate::retry::{RetryPolicy, Withdrawn};
use crate::select::{Attempt, PeerSelector};

/// The longest hedge delay.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// When a request is hedged ([`FailoverBuilder::with_hedging`](crate::FailoverBuilder::with_hedging)).
///
/// A safe request (`GET`, `HEAD`, `OPTIONS`) without a body, that is not an upgrade, from an
/// HTTP/1 client, whose first attempt has no response header after the delay, is sent to a
/// second peer (chosen as a retry
/// would be: not the first, healthy, below its limit), and the first header to arrive answers
/// the client; the other attempt is abandoned (its connection closed, as when a client leaves;
/// it teaches its peer nothing). A 5xx answer waits for the other attempt while it runs. The second attempt is an extra request on the pool: it takes a
/// retry from the retry budget, and without one it is not made.
///
/// Pick the delay from the latency you want to cut: the 95th percentile of the peers' answers
/// hedges one request in twenty (The Tail at Scale). Each attempt keeps its own failover: a
/// refused connect still moves on at once.
///
/// Requires the proxy to allow pingora subrequests: [`FailoverProxy`](crate::FailoverProxy)
/// does when hedging is on; an embedding `ProxyHttp` returns
/// [`Failover::allows_subrequests`] from `allow_spawning_subrequest` and calls
/// [`Failover::request_filter`] from `request_filter`.
///
/// What it costs: the client's own request makes no attempt (its record holds the winner's
/// attempts, and [`FailoverCtx::hedged`] names the other peer); each attempt runs pingora's
/// hooks as a request of its own, so `logging` runs for each (the engine's `on_request_done`
/// only for the client's request).
#[derive(Debug, Clone, Copy)]
pub struct Hedging {
    delay: Duration,
}

impl Hedging {
    /// Hedges a request whose first attempt has no header after `delay` (1 ms to 60 s).
    ///
    /// # Errors
    ///
    /// A timeout error for a zero delay or one over 60 s.
    pub fn after(delay: Duration) -> Result<Self, ConfigError> {
        check_timeout("hedge delay", delay, MAX_DELAY)?;
        Ok(Self { delay })
    }

    /// The delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

/// What an attempt run as a subrequest carries: the peer its first attempt goes to, and where
/// it leaves its records when it ends.
#[derive(Debug)]
pub(crate) struct Leg {
    pub(crate) peer: Peer,
    pub(crate) probe: bool,
    /// For the second attempt (the hedge), the first attempt's peer as tried, not to be chosen
    /// again if this one's is full.
    pub(crate) avoid: Option<AttemptRecord>,
    pub(crate) records: Arc<Mutex<Vec<AttemptRecord>>>,
}

impl Leg {
    /// Whether this is the second attempt: the client's request was counted by the first.
    pub(crate) fn is_hedge(&self) -> bool {
        self.avoid.is_some()
    }

    /// The leg a subrequest carries, when `session` is one.
    pub(crate) fn of(session: &Session) -> Option<&Leg> {
        session
            .subrequest_ctx
            .as_ref()?
            .user_ctx()?
            .downcast_ref::<Leg>()
    }
}

/// A leg running.
struct Running {
    peer: Peer,
    handle: SubrequestHandle,
    task: JoinHandle<()>,
    records: Arc<Mutex<Vec<AttemptRecord>>>,
}

/// Whether `session`'s request may be sent twice: safe, without a body, not an upgrade, and
/// from an HTTP/1 client. Pingora 0.9.1 builds a subrequest from the HTTP/1 form of its
/// request (`to_h1_raw`), and an HTTP/2 request's (`GET / HTTP/2.0`) is answered 400 there.
fn hedgeable(session: &mut Session) -> bool {
    hedgeable_head(session) && session.is_body_empty()
}

/// What of [`hedgeable`] the request's head says (the body takes a mutable session to ask).
fn hedgeable_head(session: &Session) -> bool {
    let req = session.req_header();
    let safe = matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    safe && !session.is_http2() && !session.is_upgrade_req()
}

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    /// For `ProxyHttp::allow_spawning_subrequest`: whether the engine may need pingora's
    /// subrequests for `session`'s request (a hedgeable client request, when hedging is on).
    /// Pingora gives every request it is allowed for a handle on the proxy: a request that
    /// cannot be hedged, or an attempt that is itself a subrequest, gets none.
    pub fn allows_subrequests(&self, session: &Session) -> bool {
        self.hedging.is_some() && session.subrequest_ctx.is_none() && hedgeable_head(session)
    }

    /// For `ProxyHttp::request_filter`: hedges the request when [`Hedging`] is on and the
    /// request is hedgeable, answering it; `Ok(true)` when it did (pingora then sends nothing
    /// upstream for it). `Ok(false)` leaves the request to the usual path.
    ///
    /// # Errors
    ///
    /// The error of the client's connection, or of the winning attempt's response, while it was
    /// forwarded.
    pub async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut FailoverCtx,
    ) -> Result<bool> {
        let Some(hedging) = self.hedging else {
            return Ok(false);
        };
        if session.subrequest_ctx.is_some()
            || session.subrequest_spawner.is_none()
            || !hedgeable(session)
        {
            return Ok(false);
        }
        // Boxed: a request that is not hedged does not carry the hedge's state.
        Box::pin(self.hedge(session, ctx, hedging)).await
    }

    /// Runs a hedgeable request as one or two attempts and forwards the winner's answer.
    async fn hedge(
        &self,
        session: &mut Session,
        ctx: &mut FailoverCtx,
        hedging: Hedging,
    ) -> Result<bool> {
        let attempt =
            Attempt::new(&[], Some(session.req_header())).with_client_ip(client_ip(session));
        let Some((first, probe)) = self.choose(&attempt) else {
            return Ok(false);
        };
        ctx.begin();
        let mut legs = vec![start(session, first, probe, None)];
        let mut held: Option<(usize, Box<ResponseHeader>)> = None;
        let winner = match tokio::time::timeout(hedging.delay, next_header(&mut legs[0])).await {
            Ok(header) => header.map(|h| (0, h)),
            Err(_) => {
                let tried = AttemptRecord::new(legs[0].peer.clone());
                if let Some((second, probe)) = self.second(session, &tried) {
                    legs.push(start(session, second, probe, Some(tried)));
                }
                Self::race(&mut legs, &mut held).await
            }
        };
        let (index, header) = match (winner, held) {
            (Some(w), _) | (None, Some(w)) => w,
            (None, None) => {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "hedged request: no attempt answered",
                ))
            }
        };
        let leg = legs.swap_remove(index);
        // The other attempt is abandoned: it would go on failing over, or wait out its
        // timeout, for an answer no one reads. Its place in flight is given back as it ends.
        if let Some(other) = legs.pop() {
            other.task.abort();
            ctx.hedged = Some(other.peer);
        }
        let Running {
            handle,
            task,
            records,
            ..
        } = leg;
        // The handle goes with the forwarding: a client that left mid-answer closes the
        // attempt's channel, so that its subrequest ends rather than wait to send.
        let forwarded = forward(session, handle, header).await;
        // The winner's records are left when its subrequest ends (its `logging`).
        let _ = task.await;
        ctx.adopt(std::mem::take(&mut *records.lock().expect("records")));
        forwarded.map(|()| true)
    }

    /// The peer for the hedge after the first attempt, `tried`, and the retry it takes from the
    /// budget; `None` when there is none, or no retry left.
    fn second(&self, session: &Session, tried: &AttemptRecord) -> Option<(Peer, bool)> {
        let paid = Withdrawn::from(self.budget.as_ref())?;
        let attempt = Attempt::new(std::slice::from_ref(tried), Some(session.req_header()))
            .with_client_ip(client_ip(session));
        let second = self.choose(&attempt)?;
        paid.spend();
        self.feed.signals.hedge();
        Some(second)
    }

    /// Waits for the first usable header of the one or two legs: a header under 500 wins at
    /// once; a 5xx is held while the other leg may still answer. The winner, or `None` when
    /// every leg ended.
    async fn race(
        legs: &mut [Running],
        held: &mut Option<(usize, Box<ResponseHeader>)>,
    ) -> Option<(usize, Box<ResponseHeader>)> {
        let [first, second] = legs else {
            return next_header(&mut legs[0]).await.map(|h| (0, h));
        };
        let mut open = [true, true];
        while open != [false, false] {
            let (index, header) = tokio::select! {
                header = next_header(first), if open[0] => (0, header),
                header = next_header(second), if open[1] => (1, header),
            };
            open[index] = false;
            if let Some(w) = settle(held, index, header) {
                return Some(w);
            }
        }
        None
    }
}

/// What the first header of leg `index` of two (or its end, `None`) means: the answer, or (a
/// 5xx while the other leg may run, or nothing) wait for the other, holding the first 5xx.
fn settle(
    held: &mut Option<(usize, Box<ResponseHeader>)>,
    index: usize,
    header: Option<Box<ResponseHeader>>,
) -> Option<(usize, Box<ResponseHeader>)> {
    let header = header?;
    if header.status.as_u16() < 500 {
        return Some((index, header));
    }
    held.get_or_insert((index, header));
    None
}

/// Starts a leg to `peer` as a subrequest of `session`'s request; a hedge `avoid`s the first
/// attempt's peer.
fn start(session: &Session, peer: Peer, probe: bool, avoid: Option<AttemptRecord>) -> Running {
    let records = Arc::new(Mutex::new(Vec::new()));
    let leg = Leg {
        peer: peer.clone(),
        probe,
        avoid,
        records: records.clone(),
    };
    let spawner = session
        .subrequest_spawner
        .as_ref()
        .expect("checked by the caller");
    let (prepared, handle) = spawner.create_subrequest(
        session.as_downstream(),
        SubrequestCtx::builder().user_ctx(Box::new(leg)).build(),
    );
    Running {
        peer,
        handle,
        task: tokio::spawn(prepared.run()),
        records,
    }
}

/// The leg's response header, or `None` when it ended without one.
async fn next_header(leg: &mut Running) -> Option<Box<ResponseHeader>> {
    loop {
        match leg.handle.rx.recv().await? {
            HttpTask::Header(header, _) => {
                if header.status.is_informational() && header.status != 101 {
                    continue;
                }
                return Some(header);
            }
            HttpTask::Failed(_) | HttpTask::Done => return None,
            // Nothing else comes before the header.
            _ => continue,
        }
    }
}

/// Forwards the winning leg's response to the client: its header, then every task until the
/// end. An attempt that ends without saying its response did (its upstream broke mid-body) is
/// an error, so that the client's response is not finished as if whole.
async fn forward(
    session: &mut Session,
    mut handle: SubrequestHandle,
    header: Box<ResponseHeader>,
) -> Result<()> {
    session
        .write_response_tasks(vec![HttpTask::Header(header, false)])
        .await?;
    while let Some(task) = handle.rx.recv().await {
        if let HttpTask::Failed(e) = task {
            return Err(e);
        }
        let end = task.is_end();
        session.write_response_tasks(vec![task]).await?;
        if end {
            return Ok(());
        }
    }
    Err(handle.subreq_proxy_error.try_recv().unwrap_or_else(|_| {
        Error::explain(
            ErrorType::ReadError,
            "hedged request: the answering attempt ended before its response did",
        )
    }))
}
