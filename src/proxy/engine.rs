//! The failover engine: pingora's hooks translated into the crate's decisions.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::{Digest, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, Session};

use super::builder::FailoverBuilder;
use super::feed::Feed;
use super::hedge::{Hedging, Leg};
use super::queue::{self, Queue};
use super::rules;
use super::walk::client_ip;
use crate::classify::{self, FailureKind};
use crate::ctx::{AttemptRecord, FailoverCtx, Next, Outcome, StopReason, Verdict};
use crate::cut::{AdaptiveTimeouts, Armed, Cut, MayCut, Pool, Unarmed, Watchdog};
use crate::error::ConfigError;
use crate::retry::{RetryBudget, RetryPolicy};
use crate::select::{Attempt, PeerSelector};

/// The error of an attempt the stall cut ended.
const STALL_CUT: &str = "response header stalled: cut";
/// The error of an attempt the stall cut ended before its peer received any of it.
const UNDELIVERED_CUT: &str = "request never acknowledged by the upstream: cut and aborted";
/// The longest `Retry-After` honoured by default when a retry returns to a peer already tried.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3);

/// The failover engine: a [`PeerSelector`], a [`RetryPolicy`] and the safety rules between them.
///
/// [`FailoverProxy`](crate::FailoverProxy) is a complete `ProxyHttp` built on it. A proxy that
/// already has its own `ProxyHttp` embeds the engine instead: keep a [`FailoverCtx`] in its
/// `CTX` and call the engine's method of the same name from each of these hooks:
/// [`upstream_peer`](Self::upstream_peer), [`fail_to_connect`](Self::fail_to_connect),
/// [`connected_to_upstream`](Self::connected_to_upstream),
/// [`upstream_request_filter`](Self::upstream_request_filter),
/// [`error_while_proxy`](Self::error_while_proxy),
/// [`upstream_response_filter`](Self::upstream_response_filter),
/// [`fail_to_proxy`](Self::fail_to_proxy) and [`logging`](Self::logging); for hedging
/// ([`Hedging`]), [`request_filter`](Self::request_filter) too, and `allow_spawning_subrequest`
/// returning [`allows_subrequests`](Self::allows_subrequests). The `embed` example shows it.
///
/// # Safety rules
///
/// Whatever the policy says, the engine does not retry:
/// 1. once anything was written to the client;
/// 2. a non-idempotent request that may have reached the upstream, unless the policy opts in
///    with [`RetryPolicy::replay_non_idempotent`];
/// 3. a request whose body outgrew pingora's 64 KiB replay buffer, once it was sent;
/// 4. past the policy's attempt cap, the overall deadline, or the retry budget.
///
/// It resolves pingora's `RetryType::ReusedOnly` before anything reads the retry flag.
#[derive(Debug)]
pub struct Failover<S, R> {
    pub(super) selector: S,
    pub(super) policy: R,
    pub(super) deadline: Option<Duration>,
    pub(super) budget: Option<Arc<RetryBudget>>,
    pub(super) max_retry_after: Duration,
    pub(super) adaptive: Option<AdaptiveTimeouts>,
    /// What each finished attempt teaches its peer; reports health events and metrics.
    pub(super) feed: Feed,
    /// Watches each attempt's wait for its header ([`AdaptiveTimeouts`]' stall cut).
    pub(super) watchdog: Watchdog,
    /// New requests waiting for a place when every peer is full.
    pub(super) queue: Option<Arc<Queue>>,
    /// When a safe request is sent to a second peer too.
    pub(super) hedging: Option<Hedging>,
    /// The [`WarmUp`](super::WarmUp) was made (or began).
    pub(super) warmed: Arc<AtomicBool>,
}

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    /// An engine with the default settings (see [`FailoverBuilder`]), for a pingora server
    /// with configuration `conf`.
    ///
    /// # Errors
    ///
    /// As [`FailoverBuilder::build`].
    pub fn new(selector: S, policy: R, conf: &ServerConf) -> Result<Self, ConfigError> {
        Self::builder(selector, policy).build(conf)
    }

    /// A builder for an engine.
    pub fn builder(selector: S, policy: R) -> FailoverBuilder<S, R> {
        FailoverBuilder::new(selector, policy)
    }

    /// The selector.
    pub fn selector(&self) -> &S {
        &self.selector
    }

    /// The retry policy.
    pub fn policy(&self) -> &R {
        &self.policy
    }

    /// The retry budget, if one is set.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_deref()
    }

    /// Checks that pingora's own attempt cap, `ServerConf::max_retries`, does not cut the
    /// policy short. Pingora counts attempts there, not retries. Background recovery probes
    /// take their connection settings (`ca_file`, source addresses) from `conf` here.
    ///
    /// # Errors
    ///
    /// [`ConfigError::PingoraRetryCapTooLow`] when `conf.max_retries` is below the policy's
    /// maximum attempts.
    pub fn check_server_conf(&self, conf: &ServerConf) -> Result<(), ConfigError> {
        self.feed
            .outliers
            .iter()
            .for_each(|o| o.use_server_conf(conf));
        self.watchdog.liveness().use_server_conf(conf);
        let policy = self.policy.max_attempts();
        if conf.max_retries < policy as usize {
            return Err(ConfigError::PingoraRetryCapTooLow {
                pingora: conf.max_retries,
                policy,
            });
        }
        Ok(())
    }

    /// For `ProxyHttp::upstream_peer`: the peer for this attempt. A retry that returns to a
    /// peer this request already tried (every peer has failed) waits its backoff first, or the
    /// upstream's `Retry-After`; a retry to a peer not yet tried goes at once.
    ///
    /// # Errors
    ///
    /// A 503 error when the selector has no peer to offer.
    pub async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut FailoverCtx,
    ) -> Result<Box<HttpPeer>> {
        self.warm_up_once();
        let next = match ctx.next.take() {
            Some(next) => Some(next),
            None => {
                if let Some(rec) = ctx.attempts().last() {
                    if matches!(rec.outcome(), Outcome::Pending) {
                        return Err(unwired(ctx));
                    }
                }
                let attempt = Attempt::new(ctx.attempts(), Some(session.req_header()))
                    .with_client_ip(client_ip(session));
                // An attempt of a hedged request goes first to the peer chosen for it.
                let leg = Leg::of(session)
                    .filter(|_| ctx.attempts().is_empty())
                    .map(|leg| (leg.peer.clone(), leg.probe));
                leg.or_else(|| self.choose(&attempt))
                    .map(|(peer, probe)| Next::to(peer, probe))
            }
        };
        let hedge = Leg::of(session).is_some_and(Leg::is_hedge);
        // A request counts once towards the budget: a hedge is not a request of its own.
        if ctx.attempts().is_empty() && !hedge {
            if let Some(budget) = &self.budget {
                budget.deposit();
            }
        }
        if let Some(wait) = next.as_ref().map(|n| n.wait).filter(|w| !w.is_zero()) {
            // Boxed, as the queue's wait in `place`: the future of every attempt stays small.
            Box::pin(tokio::time::sleep(wait)).await;
        }
        if let Some(queue) = &self.queue {
            ctx.queue.get_or_insert_with(|| queue.clone());
        }
        let mut next = self.place(session, ctx, next).await?;
        if next.probe {
            self.feed.signals.probing(&next.peer);
        }
        if let Some(paid) = next.paid.take() {
            paid.spend();
        }
        let mut http_peer = match next.peer.connect_target() {
            Ok(target) => Box::new(target.clone()),
            Err(e) => {
                queue::give_back(next.peer.health(), self.queue.as_deref());
                return Err(e);
            }
        };
        let cut = match &self.adaptive {
            Some(adaptive) => {
                let route = *ctx
                    .route
                    .get_or_insert_with(|| self.feed.routes.key(session.req_header()));
                let body_empty = session.is_body_empty();
                let safe = session.req_header().method.is_safe() && body_empty;
                // The budget is read last, and once for both cuts: it reads the clock.
                let budget_left = std::cell::OnceCell::new();
                let attempt = ctx.attempts().len() as u32 + 1;
                // A hedge is the request's second run already: its stall cut's retry pays.
                let free_cut = rules::cut_retry_may_be_free(attempt) && !hedge;
                let retried = |kind: FailureKind, configured, limit| {
                    self.cut_is_retried(session, body_empty, ctx, kind, configured, limit)
                        && (rules::retry_is_free(attempt, kind)
                            || free_cut
                            || *budget_left.get_or_init(|| {
                                self.budget.as_ref().is_none_or(|b| b.remaining() > 0)
                            }))
                };
                let routes = &self.feed.routes;
                let pool = Pool {
                    connect: routes.typical_connect(),
                    check: routes.typical_check(),
                };
                let typical = routes.typical(route);
                let mut cut =
                    adaptive.apply(&next.peer, typical, pool, safe, &mut http_peer, retried);
                cut.free = free_cut;
                if cut.may_cut == MayCut::Always && !rules::may_cut_on_check(ctx.attempts()) {
                    cut.may_cut = MayCut::IfUnreachable;
                }
                cut
            }
            None => Cut::default(),
        };
        ctx.start_attempt(next.peer, next.probe);
        if let Some(rec) = ctx.current_mut() {
            rec.cut = cut;
        }
        if let Some(left) = self.time_left(ctx) {
            clamp_timeouts(&mut http_peer, left.max(Duration::from_millis(1)));
        }
        Ok(http_peer)
    }

    /// For `ProxyHttp::connected_to_upstream`, with the hook's arguments: the peer learns its
    /// connect time from a new connection (`reused == false`), and the attempt's wait for its
    /// header is watched on the connection, for [`AdaptiveTimeouts`]. Without this call,
    /// connects and headers always get the configured timeouts. (The stall cut also needs
    /// `upstream_response_filter`, from which peers learn how long they take to answer.)
    pub fn connected_to_upstream(
        &self,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut FailoverCtx,
    ) {
        let Some(rec) = ctx.current_mut() else {
            return;
        };
        if !reused {
            let took = rec.started().elapsed();
            rec.peer().health().learn_connect(took);
            self.feed.routes.learn_connect(took);
        }
        #[cfg(unix)]
        if self.adaptive.is_some() {
            // The connection's two ends, which name it while it is open.
            let ends = digest
                .and_then(|d| d.socket_digest.as_ref())
                .and_then(|socket| {
                    Some((
                        *socket.local_addr()?.as_inet()?,
                        *socket.peer_addr()?.as_inet()?,
                    ))
                });
            // An HTTP/2 connection carries other requests at the same time only when the
            // peer allows more than one stream on it (pingora's default is one).
            let many_streams = peer.options.max_h2_streams > 1;
            match peer.options.alpn {
                ALPN::H1 => self.arm(rec, fd, ends, false, false),
                ALPN::H2 => self.arm(rec, fd, ends, true, many_streams),
                // Which one the connection speaks shows in the request header.
                ALPN::H2H1 => {
                    rec.cut.unarmed = Some(Unarmed {
                        fd,
                        ends,
                        many_streams,
                    })
                }
                _ => {}
            }
        }
        #[cfg(windows)]
        let _ = (peer, digest);
    }

    /// For `ProxyHttp::upstream_request_filter`, with the request as it goes upstream: for a
    /// peer that speaks HTTP/2 or HTTP/1 (`Http2OrHttp1`), the attempt's wait for its header is
    /// watched ([`AdaptiveTimeouts`]) once the request shows which one the connection speaks.
    /// Without this call, such peers keep their configured read timeout.
    pub fn upstream_request_filter(&self, request: &RequestHeader, ctx: &mut FailoverCtx) {
        let Some(rec) = ctx.current_mut() else {
            return;
        };
        if let Some(c) = rec.cut.unarmed.take() {
            let h2 = request.version == pingora_http::Version::HTTP_2;
            self.arm(rec, c.fd, c.ends, h2, h2 && c.many_streams);
        }
    }

    /// Hands connection `fd` to the attempt `rec`, watched when it has a limit and the
    /// connection's two `ends` are known. `h2`: the connection speaks HTTP/2; `shared`: it
    /// carries other requests at the same time.
    fn arm(
        &self,
        rec: &mut AttemptRecord,
        fd: i32,
        ends: Option<(SocketAddr, SocketAddr)>,
        h2: bool,
        shared: bool,
    ) {
        let armed = rec.cut.header.zip(ends).map(|(limit, ends)| Armed {
            ends,
            peer: rec.peer(),
            limit,
            may_cut: rec.cut.may_cut,
            free: rec.cut.free,
            check_floor: rec.cut.check_floor,
            h2,
            shared,
        });
        // A connection that carries many requests hands no wait over from one to the next.
        if armed.is_none() && shared {
            return;
        }
        rec.cut.watch = self.watchdog.handed(fd, armed);
    }

    /// For `ProxyHttp::fail_to_connect`: classifies the failure and marks the error for retry
    /// or not. Nothing was sent upstream, so any request may go elsewhere.
    pub fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut FailoverCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.retry.decide_reuse(false);
        let kind = FailureKind::from_connect(&e);
        self.after_failure(session, ctx, e, kind)
    }

    /// For `ProxyHttp::error_while_proxy`: resolves `ReusedOnly`, classifies the failure and
    /// marks the error for retry or not.
    pub fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut FailoverCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // Rule: ReusedOnly is resolved before anything can read the retry flag.
        let reused_only = matches!(e.retry, RetryType::ReusedOnly);
        e.retry.decide_reuse(client_reused);
        // The stall cut shut the connection down: the attempt timed out waiting for its header
        // (unless the client side failed at that moment).
        if let Some(rec) = ctx.attempts().last() {
            if rec.end_wait() && *e.esource() != ErrorSource::Downstream {
                if rec.cut.undelivered() {
                    // The peer never received it: nothing was processed, whatever the method.
                    let kind = FailureKind::Unprocessed;
                    e = Error::because(ErrorType::ConnectionClosed, UNDELIVERED_CUT, e).into_up();
                    return self.after_failure(session, ctx, e, kind);
                }
                e = Error::because(ErrorType::ReadTimedout, STALL_CUT, e).into_up();
            }
        }

        // A retriable status whose retry upstream_response_filter already decided.
        if let (ErrorType::HTTPStatus(_), Some(rec)) = (e.etype(), ctx.attempts().last()) {
            if matches!(
                rec.outcome(),
                Outcome::Failed {
                    kind: FailureKind::Status(_) | FailureKind::GrpcStatus(_),
                    verdict: Verdict::Retried
                }
            ) {
                e.set_retry(true);
                return e;
            }
        }
        let started = session.response_written().is_some();
        let kind = classify::proxy_error(&e, started, reused_only && client_reused);
        self.after_failure(session, ctx, e, kind)
    }

    /// For `ProxyHttp::upstream_response_filter`: records the response, and turns a retriable
    /// status (or a retriable gRPC status in a trailers-only response) into a retry when the
    /// rules allow one. Otherwise, the last attempt included, the upstream's own response goes
    /// to the client unchanged.
    ///
    /// # Errors
    ///
    /// An `HTTPStatus` error marked for retry, which pingora hands to `error_while_proxy` and
    /// then to another attempt.
    pub fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &ResponseHeader,
        ctx: &mut FailoverCtx,
    ) -> Result<()> {
        let status = response.status.as_u16();
        // Any header ends the wait the stall cut watches, a 101 (the connection is now a
        // tunnel, however quiet) or a 100 included.
        if ctx.attempts().last().is_some_and(AttemptRecord::end_wait) {
            // The header came as the stall cut shut its connection down: the body is lost.
            // `error_while_proxy` judges it.
            return Err(Error::explain(ErrorType::ReadTimedout, STALL_CUT).into_up());
        }
        // A 100 is followed by the real header; a 101 is the answer (the connection is now a
        // tunnel, and no longer waits for anything).
        if (status < 200 && status != 101) || ctx.attempts().is_empty() {
            return Ok(());
        }
        self.feed.blame_cuts(ctx);
        let kind = if self.policy.is_retriable_status(status) {
            Some(FailureKind::Status(status))
        } else {
            classify::grpc_status(response)
                .filter(|c| self.policy.is_retriable_grpc_status(*c))
                .map(FailureKind::GrpcStatus)
        };
        // Read only where it is used: a retry's wait, and the cost floor of a 503's peer.
        if kind.is_some() || status == 503 {
            ctx.retry_after = classify::retry_after(response);
        }
        if let Some(kind) = kind {
            self.feed.failed(ctx, kind);
            match self.judge(session, ctx, kind, false, None) {
                Ok(next) => {
                    self.finish(ctx, kind, Verdict::Retried);
                    ctx.next = Some(next);
                    let mut e = Error::explain(
                        ErrorType::HTTPStatus(status),
                        "retriable status from upstream",
                    );
                    e.set_retry(true);
                    return Err(e.into_up());
                }
                Err(reason) => {
                    self.finish(ctx, kind, Verdict::Stopped(reason));
                    return Ok(());
                }
            }
        }
        self.feed.answered(ctx, status);
        Ok(())
    }

    /// For `ProxyHttp::fail_to_proxy`: answers the client when the request failed for good, with
    /// **504** for an upstream timeout and **502** for any other upstream failure (see
    /// [`classify::error_status`]). Pingora's default answers 502 for timeouts too.
    pub async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut FailoverCtx,
    ) -> FailToProxy {
        let shed = ctx.attempts().last().is_some_and(|a| {
            matches!(
                a.outcome(),
                Outcome::Failed {
                    verdict: Verdict::Stopped(StopReason::Full),
                    ..
                }
            )
        });
        let code = if shed { 503 } else { classify::error_status(e) };
        if code > 0 {
            // The client may be gone already; nothing is left to do about that.
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// For `ProxyHttp::logging`: completes the record. When pingora's loop ended although a
    /// retry was decided, the last attempt says so ([`StopReason::PingoraRetryCap`]) rather
    /// than claiming a retry that never happened. Call it before reading the record in your own
    /// `logging`. (The retry goes back to the budget when the context is dropped, with or
    /// without this call.)
    ///
    /// `true` when the request was an attempt of a hedged request: its records went to the
    /// client's request, and it should not be reported on its own.
    pub fn logging(
        &self,
        session: &mut Session,
        _e: Option<&Error>,
        ctx: &mut FailoverCtx,
    ) -> bool {
        if ctx.next.take().is_some() {
            if let Some(rec) = ctx.current_mut() {
                rec.set_verdict(Verdict::Stopped(StopReason::PingoraRetryCap));
            }
        }
        match Leg::of(session) {
            Some(leg) => {
                *leg.records.lock().expect("records") = ctx.attempts().to_vec();
                true
            }
            None => false,
        }
    }
}

/// The error when the selector has no peer to offer: every one is tried, out, or full.
pub(super) fn no_peer(ctx: &FailoverCtx) -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(503),
        format!(
            "no upstream peer available: every one is tried or at its limit of requests in \
             flight ({})",
            ctx.summary()
        ),
    )
}

/// The error for a retry that pingora started after a failure no engine hook saw: the
/// embedding `ProxyHttp` does not hand `fail_to_connect` or `error_while_proxy` to the engine, so
/// its retries bypass every safety rule. Loud, so that the first failover test finds it.
fn unwired(ctx: &FailoverCtx) -> Box<Error> {
    Error::explain(
        ErrorType::InternalError,
        format!(
            "failover hooks not wired: pingora retried after a failure that neither \
             fail_to_connect nor error_while_proxy handed to the engine ({})",
            ctx.summary()
        ),
    )
}

/// Shortens each timeout of `peer` to at most `left`.
fn clamp_timeouts(peer: &mut HttpPeer, left: Duration) {
    let o = &mut peer.options;
    for t in [
        &mut o.connection_timeout,
        &mut o.total_connection_timeout,
        &mut o.read_timeout,
        &mut o.write_timeout,
    ] {
        *t = Some(t.map_or(left, |t| t.min(left)));
    }
}
