//! The failover engine: pingora's hooks translated into the crate's decisions.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::{Digest, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

use crate::classify::{self, FailureKind};
use crate::ctx::{AttemptRecord, FailoverCtx, Next, Outcome, StopReason, Verdict};
use crate::error::{check_timeout, ConfigError};
use crate::health::{Admission, HealthEvent, HealthState, OutlierDetection};
use crate::peer::Peer;
use crate::proxy::adaptive::{AdaptiveTimeouts, Cut};
use crate::proxy::signals::Signals;
use crate::proxy::stall::{Armed, Watchdog};
use crate::retry::{Failure, RetryBudget, RetryDecision, RetryPolicy, Withdrawn, MAX_ATTEMPTS};
use crate::select::{Attempt, PeerSelector};

/// How many times a selection is made when the half-open peers it returns lose their probe slot
/// to other requests, before the last one is sent as it is.
const CLAIM_ROUNDS: usize = 3;
/// The error of an attempt the stall cut ended.
const STALL_CUT: &str = "response header stalled: cut";
/// Longest overall deadline accepted.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// The longest `Retry-After` honoured by default when a retry returns to a peer already tried.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3);

/// The failover engine: a [`PeerSelector`], a [`RetryPolicy`] and the safety rules between them.
///
/// [`FailoverProxy`](crate::FailoverProxy) is a complete `ProxyHttp` built on it. A proxy that
/// already has its own `ProxyHttp` embeds the engine instead: keep a [`FailoverCtx`] in its
/// `CTX` and call the engine's method of the same name from each of these hooks:
/// [`upstream_peer`](Self::upstream_peer), [`fail_to_connect`](Self::fail_to_connect),
/// [`connected_to_upstream`](Self::connected_to_upstream),
/// [`error_while_proxy`](Self::error_while_proxy),
/// [`upstream_response_filter`](Self::upstream_response_filter),
/// [`fail_to_proxy`](Self::fail_to_proxy) and [`logging`](Self::logging). The `embed` example
/// shows it.
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
    selector: S,
    policy: R,
    deadline: Option<Duration>,
    budget: Option<Arc<RetryBudget>>,
    outliers: Option<OutlierDetection>,
    max_retry_after: Duration,
    adaptive: Option<AdaptiveTimeouts>,
    /// Shared with the background probers of ejected peers.
    signals: Arc<Signals>,
    /// Cuts the attempts whose header stalls ([`AdaptiveTimeouts`]' stall cut).
    watchdog: Watchdog,
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
        FailoverBuilder {
            selector,
            policy,
            deadline: None,
            budget: Some(RetryBudget::default()),
            outliers: Some(OutlierDetection::default()),
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            adaptive: Some(AdaptiveTimeouts::default()),
            signals: Signals::default(),
        }
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
        self.outliers.iter().for_each(|o| o.use_server_conf(conf));
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
        let next = match ctx.next.take() {
            Some(next) => next,
            None => {
                if let Some(rec) = ctx.attempts().last() {
                    if matches!(rec.outcome(), Outcome::Pending) {
                        return Err(unwired(ctx));
                    }
                }
                let attempt = Attempt::new(ctx.attempts(), Some(session.req_header()))
                    .with_client_ip(client_ip(session));
                let (peer, probe) = self.choose(&attempt).ok_or_else(|| {
                    Error::explain(
                        ErrorType::HTTPStatus(503),
                        format!("no upstream peer available ({})", ctx.summary()),
                    )
                })?;
                Next {
                    peer,
                    probe,
                    wait: Duration::ZERO,
                    paid: None,
                }
            }
        };
        if next.probe {
            self.signals.probing(&next.peer);
        }
        if ctx.attempts().is_empty() {
            if let Some(budget) = &self.budget {
                budget.deposit();
            }
        }
        if !next.wait.is_zero() {
            tokio::time::sleep(next.wait).await;
        }
        if let Some(paid) = next.paid {
            paid.spend();
        }
        let mut http_peer = Box::new(next.peer.connect_target()?.clone());
        let cut = match &self.adaptive {
            Some(adaptive) => {
                let body_empty = session.is_body_empty();
                let retry_after = |kind, configured, limit| {
                    let peer = &next.peer;
                    self.retry_after(session, body_empty, ctx, peer, kind, configured, limit)
                };
                adaptive.apply(&next.peer, &mut http_peer, retry_after)
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
            rec.peer().health().learn_connect(rec.started().elapsed());
        }
        // One request at a time on the connection: an HTTP/2 one carries others.
        #[cfg(unix)]
        if matches!(peer.options.alpn, ALPN::H1)
            && self
                .adaptive
                .as_ref()
                .is_some_and(AdaptiveTimeouts::cuts_stalls)
        {
            let armed = rec.cut.header.and_then(|limit| {
                let socket = digest?.socket_digest.as_ref()?;
                let ends = (
                    *socket.local_addr()?.as_inet()?,
                    *socket.peer_addr()?.as_inet()?,
                );
                Some(Armed {
                    ends,
                    peer: rec.peer(),
                    limit,
                })
            });
            let watch = self.watchdog.handed(fd, armed);
            rec.cut.watch = watch;
        }
        #[cfg(windows)]
        let _ = (peer, digest);
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
        let kind = FailureKind::from_connect_error(e.etype());
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
        if ctx.attempts().last().is_some_and(AttemptRecord::end_wait)
            && *e.esource() != ErrorSource::Downstream
        {
            e = Error::because(ErrorType::ReadTimedout, STALL_CUT, e).into_up();
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
        if status < 200 || ctx.attempts().is_empty() {
            return Ok(());
        }
        self.blame_cuts(ctx);
        let kind = if self.policy.is_retriable_status(status) {
            Some(FailureKind::Status(status))
        } else {
            classify::grpc_status(response)
                .filter(|c| self.policy.is_retriable_grpc_status(*c))
                .map(FailureKind::GrpcStatus)
        };
        if let Some(kind) = kind {
            self.record_health(ctx, kind);
            ctx.retry_after = classify::retry_after(response);
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
        // Health judges the response on its own terms: a 5xx counts against the peer even when
        // the policy does not retry it (and a probe answered with one fails).
        if self
            .outliers
            .as_ref()
            .is_some_and(|rules| rules.counts_status(status))
        {
            self.record_health(ctx, FailureKind::Status(status));
            if let Some(rec) = ctx.current_mut() {
                rec.finish(Outcome::Responded { status });
                self.signals.attempt(rec.peer(), &rec.outcome());
            }
            return Ok(());
        }
        if let Some(rec) = ctx.current_mut() {
            rec.finish(Outcome::Responded { status });
            self.signals.attempt(rec.peer(), &rec.outcome());
            // A success re-admits an ejected peer only when the attempt was sent knowing it was
            // ejected (its probe, or panic mode): a request already in flight when the peer was
            // ejected proves nothing about it now.
            let readmit = rec.is_probe() || rec.started_ejected;
            if self.outliers.is_some()
                && rec
                    .peer()
                    .health()
                    .record_success_counted(readmit, &*self.signals)
            {
                self.signals.readmitted(rec.peer());
            }
        }
        Ok(())
    }

    /// For `ProxyHttp::fail_to_proxy`: answers the client when the request failed for good, with
    /// **504** for an upstream timeout and **502** for any other upstream failure (see
    /// [`classify::error_status`]). Pingora's default answers 502 for timeouts too.
    pub async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut FailoverCtx,
    ) -> FailToProxy {
        let code = classify::error_status(e);
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
    pub fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut FailoverCtx) {
        if ctx.next.take().is_some() {
            if let Some(rec) = ctx.current_mut() {
                rec.set_verdict(Verdict::Stopped(StopReason::PingoraRetryCap));
            }
        }
    }

    fn after_failure(
        &self,
        session: &Session,
        ctx: &mut FailoverCtx,
        mut e: Box<Error>,
        kind: FailureKind,
    ) -> Box<Error> {
        if ctx.attempts().is_empty() {
            // Not an attempt this engine started: leave pingora's decision alone.
            return e;
        }
        self.record_health(ctx, kind);
        // Read only after `decide_reuse`, which every caller has done.
        let pingora_retriable = e.retry();
        match self.judge(session, ctx, kind, pingora_retriable, Some(&e)) {
            Ok(next) => {
                self.finish(ctx, kind, Verdict::Retried);
                ctx.next = Some(next);
                e.set_retry(true);
                e
            }
            Err(reason) => {
                self.finish(ctx, kind, Verdict::Stopped(reason));
                e.set_retry(false);
                e.more_context(format!(
                    "failover stopped ({reason}) after {} attempt(s): {}",
                    ctx.attempts().len(),
                    ctx.summary()
                ))
            }
        }
    }

    /// The next attempt when a retry is allowed, or why not.
    fn judge(
        &self,
        session: &Session,
        ctx: &FailoverCtx,
        kind: FailureKind,
        pingora_retriable: bool,
        error: Option<&Error>,
    ) -> std::result::Result<Next, StopReason> {
        let attempts = ctx.attempts();
        let rec = attempts.last().ok_or(StopReason::NoPeerLeft)?;
        let failure = Failure {
            kind,
            attempt: attempts.len() as u32,
            elapsed: ctx.elapsed(),
            request: session.req_header(),
            peer: rec.peer(),
            sent_upstream: !kind.is_connect(),
            body_replayable: !session.retry_buffer_truncated(),
            pingora_retriable,
            error,
        };
        if kind == FailureKind::Downstream {
            return Err(StopReason::ClientGone);
        }
        if session.response_written().is_some() {
            return Err(StopReason::ResponseStarted);
        }
        if failure.may_have_processed()
            && !failure.is_idempotent()
            && !self.policy.replay_non_idempotent(&failure)
        {
            return Err(StopReason::NotIdempotent);
        }
        if failure.sent_upstream && !failure.body_replayable {
            return Err(StopReason::BodyNotReplayable);
        }
        if self.policy.decide(&failure) != RetryDecision::Retry {
            return Err(StopReason::Policy);
        }
        if failure.attempt >= self.policy.max_attempts() {
            return Err(StopReason::MaxAttempts);
        }
        let left = self.time_left(ctx);
        if left.is_some_and(|left| left.is_zero()) {
            return Err(StopReason::Deadline);
        }
        // A stall cut took its retry from the budget when it cut.
        let paid = rec.cut.watch.as_ref().and_then(|w| w.take_paid());
        let Some(paid) = paid.or_else(|| Withdrawn::from(self.budget.as_ref())) else {
            self.signals.budget_refused();
            return Err(StopReason::Budget);
        };
        // Without a peer, `paid` is dropped here and the retry goes back to the budget.
        let mut next = self.next_peer(ctx, session, failure.attempt, left)?;
        next.paid = Some(paid);
        self.signals.retry();
        Ok(next)
    }

    /// The peer for the retry after attempt number `attempt`, and how long to wait for it.
    fn next_peer(
        &self,
        ctx: &FailoverCtx,
        session: &Session,
        attempt: u32,
        left: Option<Duration>,
    ) -> std::result::Result<Next, StopReason> {
        let attempts = ctx.attempts();
        let query =
            Attempt::new(attempts, Some(session.req_header())).with_client_ip(client_ip(session));
        if let Some((peer, probe)) = self.choose(&query) {
            return Ok(Next {
                peer,
                probe,
                wait: Duration::ZERO,
                paid: None,
            });
        }
        // Every peer has been tried: return to the one that will be healthy first, after a
        // backoff, or after the wait the upstream asked for.
        let peer = revisit(attempts).ok_or(StopReason::NoPeerLeft)?;
        let mut wait = self.policy.backoff(attempt);
        if let Some(left) = left {
            wait = wait.min(left / 2);
        }
        // The wait the upstream asked for holds for a return to that same upstream only.
        let asked = ctx
            .retry_after
            .filter(|_| attempts.last().is_some_and(|r| r.peer().same(&peer)));
        if let Some(asked) = asked {
            if asked > self.max_retry_after || left.is_some_and(|l| asked >= l) {
                return Err(StopReason::RetryAfter);
            }
            wait = wait.max(asked);
        }
        Ok(Next {
            peer,
            probe: false,
            wait,
            paid: None,
        })
    }

    /// Asks the selector for a peer and claims it for the request about to be sent; `true`
    /// with the peer when this request took its probe slot. Selectors only query health, so
    /// the claim is made here. A half-open peer whose slot another request took in between is
    /// asked about again (the selector now sees it refused); a peer health holds out for any
    /// other reason (ejected, failing its check) was the selector's deliberate choice (panic
    /// mode) and is sent as it is.
    fn choose(&self, attempt: &Attempt<'_>) -> Option<(Peer, bool)> {
        let mut lost = None;
        for _ in 0..CLAIM_ROUNDS {
            let peer = self.selector.select(attempt)?;
            match peer.health().claim(peer.probe_window()) {
                Admission::Probe => return Some((peer, true)),
                Admission::Refused if peer.health().state() == HealthState::HalfOpen => {
                    lost = Some(peer);
                }
                _ => return Some((peer, false)),
            }
        }
        lost.map(|peer| (peer, false))
    }

    /// Whether a failure of `kind` of the attempt about to go to `peer`, cutting its
    /// `configured` timeout short at `limit`, would be retried: never on the last attempt, with
    /// the budget spent, when the deadline would leave the retry less than `configured`, or when
    /// the policy would not. A header is cut only for a safe request (GET, HEAD, OPTIONS, TRACE)
    /// without a body (`body_empty`): the cut attempt may run on upstream beside its retry, and
    /// the wait would count the time a body takes to send.
    #[allow(clippy::too_many_arguments)]
    fn retry_after(
        &self,
        session: &Session,
        body_empty: bool,
        ctx: &FailoverCtx,
        peer: &Peer,
        kind: FailureKind,
        configured: Duration,
        limit: Duration,
    ) -> bool {
        let attempt = ctx.attempts().len() as u32 + 1;
        let request = session.req_header();
        attempt < self.policy.max_attempts()
            && (kind.is_connect() || (request.method.is_safe() && body_empty))
            && self
                .time_left(ctx)
                .is_none_or(|left| left > configured + limit)
            && self
                .policy
                .decide(&Failure::new(kind, attempt, request, peer))
                == RetryDecision::Retry
            // Last: it reads the clock.
            && self.budget.as_ref().is_none_or(|b| b.remaining() > 0)
    }

    /// Counts a failure of the current attempt against its peer's health. An abandoned connect
    /// ([`AdaptiveTimeouts`]) counts as any failure, not as a connect failure: the peer may
    /// only be slower than it was.
    fn record_health(&self, ctx: &FailoverCtx, kind: FailureKind) {
        if let Some(rec) = ctx.attempts().last() {
            // A cut wait is judged by the retry that follows it (`blame_cuts`).
            if !rec.stall_cut(kind) {
                self.record_failure(rec, kind);
            }
        }
    }

    /// Counts the stall cuts of this request against their peers, now that its last attempt
    /// answered: a cut whose limit was longer than that answer took stalled on a peer where
    /// another answered in time. A request slow everywhere blames no one.
    fn blame_cuts(&self, ctx: &FailoverCtx) {
        let Some((last, earlier)) = ctx.attempts().split_last() else {
            return;
        };
        let took = last.started().elapsed();
        for rec in earlier {
            if rec.cut.header_cut() && rec.cut.header.is_some_and(|limit| took < limit) {
                self.record_failure(rec, FailureKind::HeaderTimeout);
            }
        }
    }

    fn record_failure(&self, rec: &AttemptRecord, kind: FailureKind) {
        let Some(rules) = &self.outliers else {
            return;
        };
        if !kind.counts_against_peer() {
            return;
        }
        let peer = rec.peer();
        let connect =
            kind.is_connect() && !(kind == FailureKind::ConnectTimeout && rec.cut.connect);
        if let Some(ejection) = peer
            .health()
            .record_failure_as(connect, rules, &*self.signals)
        {
            self.signals.ejected(peer, ejection, kind);
            if let Some(probe) = rules.recovery() {
                let give_up = rules.max_ejection();
                crate::health::recovery::start(peer, probe, give_up, &self.signals);
            }
        }
    }

    fn finish(&self, ctx: &mut FailoverCtx, kind: FailureKind, verdict: Verdict) {
        if let Some(rec) = ctx.current_mut() {
            rec.finish(Outcome::Failed { kind, verdict });
            self.signals.attempt(rec.peer(), &rec.outcome());
        }
        ctx.end_in_flight();
    }

    fn time_left(&self, ctx: &FailoverCtx) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_sub(ctx.elapsed()))
    }
}

/// The peer a retry returns to once every peer was tried: one that health admits now if any,
/// and of those the one tried longest ago, so that repeated retries take turns.
fn revisit(attempts: &[crate::ctx::AttemptRecord]) -> Option<Peer> {
    attempts
        .iter()
        .map(AttemptRecord::peer)
        .min_by_key(|p| {
            let last = attempts.iter().rposition(|r| r.peer().same(p));
            (p.health().wait_ms() > 0, last)
        })
        .cloned()
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

/// The client's IP address, for selectors that hash by it.
fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
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

/// Builds a [`Failover`] engine.
///
/// # Default
///
/// - overall deadline: none (each attempt is bounded by its peer's timeouts, and the number of
///   attempts by the policy)
/// - retry budget: [`RetryBudget::default`] (20 % of requests plus 10 per second, over 10 s)
/// - outlier ejection: [`OutlierDetection::default`] (1 connect failure or 5 failures in a row;
///   out for 1 s, then probed in the background until a probe passes)
/// - adaptive timeouts: [`AdaptiveTimeouts::default`] (a connect is abandoned after 10 times the
///   peer's learned connect time, at least 50 ms; a safe request's response header, after 10
///   times what the peer typically takes, at least 50 ms, while the peer answers nothing else;
///   never on a request's last attempt)
/// - longest `Retry-After` honoured: [`DEFAULT_MAX_RETRY_AFTER`] (3 s)
/// - health observer and metrics: none
#[derive(Debug)]
#[must_use]
pub struct FailoverBuilder<S, R> {
    selector: S,
    policy: R,
    deadline: Option<Duration>,
    budget: Option<RetryBudget>,
    outliers: Option<OutlierDetection>,
    max_retry_after: Duration,
    adaptive: Option<AdaptiveTimeouts>,
    signals: Signals,
}

impl<S: PeerSelector, R: RetryPolicy> FailoverBuilder<S, R> {
    /// Timeouts learned per peer ([`AdaptiveTimeouts`]).
    pub fn with_adaptive_timeouts(mut self, adaptive: AdaptiveTimeouts) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// Every attempt gets the configured timeouts.
    pub fn without_adaptive_timeouts(mut self) -> Self {
        self.adaptive = None;
        self
    }

    /// An overall deadline across all attempts of a request, backoff included. No retry starts
    /// after it, and each attempt's timeouts are shortened to what is left of it.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The retry budget shared by all requests through this engine.
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only the attempt cap limits retries.
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The longest `Retry-After` (in seconds) the engine waits for when a retriable status
    /// carries one and the retry would return to a peer already tried. A longer wait, or one that
    /// would pass the overall deadline, stops the retries and passes the upstream's answer, with
    /// its `Retry-After`, to the client.
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The rules for ejecting failing peers.
    pub fn with_outlier_detection(mut self, rules: OutlierDetection) -> Self {
        self.outliers = Some(rules);
        self
    }

    /// No outlier ejection: attempts do not change peer health (active checks still do).
    pub fn without_outlier_detection(mut self) -> Self {
        self.outliers = None;
        self
    }

    /// Calls `f` on every health change this engine causes: ejected, probing, re-admitted.
    pub fn on_health_change(mut self, f: impl Fn(&HealthEvent) + Send + Sync + 'static) -> Self {
        self.signals.observer = Some(Arc::new(f));
        self
    }

    /// Reports attempts, retries, budget refusals and ejections to `metrics`.
    #[cfg(feature = "metrics")]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.signals.metrics = Some(metrics);
        self
    }

    /// Checks the settings against each other and against the configuration of the pingora
    /// server the engine will run in, and builds the engine. The server's configuration is
    /// required here so that its check cannot be forgotten: pingora stops retrying at
    /// `ServerConf::max_retries` attempts whatever the engine decides.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroAttempts`] or [`ConfigError::TooManyAttempts`] for the policy's attempt
    /// cap; [`ConfigError::ZeroTimeout`] or [`ConfigError::TimeoutTooLong`] for the deadline;
    /// [`ConfigError::PingoraRetryCapTooLow`] when `conf.max_retries` would cut the policy short.
    pub fn build(self, conf: &ServerConf) -> Result<Failover<S, R>, ConfigError> {
        let engine = self.validate()?;
        engine.check_server_conf(conf)?;
        Ok(engine)
    }

    /// Checks the settings and builds the engine, leaving the server's configuration to be
    /// checked by [`FailoverProxy`](crate::FailoverProxy) when it becomes a service.
    pub(crate) fn validate(self) -> Result<Failover<S, R>, ConfigError> {
        match self.policy.max_attempts() {
            0 => return Err(ConfigError::ZeroAttempts),
            n if n > MAX_ATTEMPTS => {
                return Err(ConfigError::TooManyAttempts {
                    value: n,
                    max: MAX_ATTEMPTS,
                })
            }
            _ => {}
        }
        if let Some(d) = self.deadline {
            check_timeout("overall deadline", d, MAX_DEADLINE)?;
        }
        let outliers = self.outliers.map(OutlierDetection::validate).transpose()?;
        let budget = self.budget.map(Arc::new);
        Ok(Failover {
            selector: self.selector,
            policy: self.policy,
            deadline: self.deadline,
            budget: budget.clone(),
            outliers,
            max_retry_after: self.max_retry_after,
            adaptive: self.adaptive,
            signals: Arc::new(self.signals),
            watchdog: Watchdog::new(budget),
        })
    }
}
