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
    /// For the second attempt (the hedge), the first attempt's peer, not to be chosen again if
    /// this one's is full.
    pub(crate) avoid: Option<Peer>,
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
    let req = session.req_header();
    let safe = matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    safe && !session.is_http2() && session.is_body_empty() && !session.is_upgrade_req()
}

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    /// For `ProxyHttp::allow_spawning_subrequest`: whether the engine needs pingora's
    /// subrequests (it does when hedging is on).
    pub fn allows_subrequests(&self) -> bool {
        self.hedging.is_some()
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
        let attempt =
            Attempt::new(&[], Some(session.req_header())).with_client_ip(client_ip(session));
        let Some((first, probe)) = self.choose(&attempt) else {
            return Ok(false);
        };
        ctx.begin();
        let mut legs = vec![start(session, first, probe, None)];
        let mut held: Option<(usize, Box<ResponseHeader>)> = None;
        let winner = match tokio::time::timeout(hedging.delay, next_header(&mut legs[0])).await {
            Ok(header) => settle(legs.len(), &mut held, 0, header),
            Err(_) => {
                let first = legs[0].peer.clone();
                if let Some(second) = self.second(session, &first) {
                    legs.push(start(session, second.0, second.1, Some(&first)));
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
        if let Some(other) = legs.first() {
            ctx.hedged = Some(other.peer.clone());
        }
        // The other attempt is abandoned: it would go on failing over, or wait out its
        // timeout, for an answer no one reads. Its place in flight is given back as it ends.
        for other in legs {
            other.task.abort();
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

    /// The peer for the hedge, and the retry it takes from the budget; `None` when there is
    /// none, or no retry left.
    fn second(&self, session: &Session, first: &Peer) -> Option<(Peer, bool)> {
        let paid = Withdrawn::from(self.budget.as_ref())?;
        let tried = [AttemptRecord::new(first.clone())];
        let attempt =
            Attempt::new(&tried, Some(session.req_header())).with_client_ip(client_ip(session));
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
            return settle(1, held, 0, next_header(&mut legs[0]).await);
        };
        let mut open = [true, true];
        while open != [false, false] {
            let (index, header) = tokio::select! {
                header = next_header(first), if open[0] => (0, header),
                header = next_header(second), if open[1] => (1, header),
            };
            open[index] = false;
            if let Some(w) = settle(2, held, index, header) {
                return Some(w);
            }
        }
        None
    }
}

/// What the first header of leg `index` of `legs` (or its end, `None`) means: the answer, or
/// (a 5xx while another leg runs, or nothing) wait for the others, holding the first 5xx.
fn settle(
    legs: usize,
    held: &mut Option<(usize, Box<ResponseHeader>)>,
    index: usize,
    header: Option<Box<ResponseHeader>>,
) -> Option<(usize, Box<ResponseHeader>)> {
    let header = header?;
    if header.status.as_u16() < 500 || legs == 1 {
        return Some((index, header));
    }
    held.get_or_insert((index, header));
    None
}

/// Starts a leg to `peer` as a subrequest of `session`'s request; a hedge `avoid`s the first
/// attempt's peer.
fn start(session: &Session, peer: Peer, probe: bool, avoid: Option<&Peer>) -> Running {
    let records = Arc::new(Mutex::new(Vec::new()));
    let leg = Leg {
        peer: peer.clone(),
        probe,
        avoid: avoid.cloned(),
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
