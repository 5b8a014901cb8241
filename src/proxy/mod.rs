//! `FailoverProxy`: a complete `ProxyHttp`, and the engine it is built on.

mod builder;
mod engine;
mod feed;
mod hedge;
pub(crate) mod queue;
mod rules;
mod signals;
mod walk;
mod warm;

pub use builder::FailoverBuilder;
pub use engine::{Failover, DEFAULT_MAX_RETRY_AFTER};
pub use hedge::Hedging;
pub use warm::WarmUp;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{http_proxy, http_proxy_service, FailToProxy, HttpProxy, ProxyHttp, Session};

use crate::ctx::FailoverCtx;
use crate::error::ConfigError;
use crate::retry::RetryPolicy;
use crate::select::PeerSelector;

/// A complete pingora `ProxyHttp` that fails over between upstreams.
///
/// Build it with a selector and a policy, then turn it into a pingora service with
/// [`into_service`](Self::into_service), which also checks pingora's retry cap against the
/// policy. Its `CTX` is the [`FailoverCtx`] of each request.
pub struct FailoverProxy<S, R> {
    engine: Failover<S, R>,
    on_done: Option<OnDone>,
}

/// The callback run once per request after it ended; see [`FailoverProxy::on_request_done`].
type OnDone = Box<dyn Fn(&Session, Option<&Error>, &FailoverCtx) + Send + Sync>;

impl<S: fmt::Debug, R: fmt::Debug> fmt::Debug for FailoverProxy<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverProxy")
            .field("engine", &self.engine)
            .field("on_request_done", &self.on_done.is_some())
            .finish()
    }
}

impl<S: PeerSelector, R: RetryPolicy> FailoverProxy<S, R> {
    /// A proxy with the engine's default settings.
    ///
    /// # Errors
    ///
    /// As [`from_builder`](Self::from_builder).
    pub fn new(selector: S, policy: R) -> Result<Self, ConfigError> {
        Self::from_builder(Failover::builder(selector, policy))
    }

    /// A proxy around the engine `builder` describes. The server's configuration is checked
    /// when the proxy becomes a service ([`into_service`](Self::into_service)).
    ///
    /// # Errors
    ///
    /// As [`FailoverBuilder::build`], but for the server's configuration.
    pub fn from_builder(builder: FailoverBuilder<S, R>) -> Result<Self, ConfigError> {
        Ok(Self {
            engine: builder.validate()?,
            on_done: None,
        })
    }

    /// Runs `f` once per request after it ended (in pingora's `logging` phase), with the final
    /// error if any and the request's [`FailoverCtx`]: the place for access logs and metrics.
    #[must_use]
    pub fn on_request_done(
        mut self,
        f: impl Fn(&Session, Option<&Error>, &FailoverCtx) + Send + Sync + 'static,
    ) -> Self {
        self.on_done = Some(Box::new(f));
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Failover<S, R> {
        &self.engine
    }

    /// A pingora service for a `Server`, after [`Failover::check_server_conf`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::PingoraRetryCapTooLow`] when `conf.max_retries` would cut the policy
    /// short.
    pub fn into_service(
        self,
        conf: &Arc<ServerConf>,
    ) -> Result<Service<HttpProxy<Self>>, ConfigError> {
        self.engine.check_server_conf(conf)?;
        Ok(http_proxy_service(conf, self))
    }

    /// A pingora `HttpProxy` app for running without a `Server` (embedded, or in tests), after
    /// [`Failover::check_server_conf`].
    ///
    /// # Errors
    ///
    /// As [`into_service`](Self::into_service).
    pub fn into_app(self, conf: &Arc<ServerConf>) -> Result<HttpProxy<Self>, ConfigError> {
        self.engine.check_server_conf(conf)?;
        Ok(http_proxy(conf, self))
    }
}

#[async_trait]
impl<S: PeerSelector, R: RetryPolicy> ProxyHttp for FailoverProxy<S, R> {
    type CTX = FailoverCtx;

    fn new_ctx(&self) -> FailoverCtx {
        FailoverCtx::new()
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &FailoverCtx) -> bool {
        self.engine.allows_subrequests(session)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut FailoverCtx) -> Result<bool> {
        self.engine.request_filter(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut FailoverCtx,
    ) -> Result<Box<HttpPeer>> {
        self.engine.upstream_peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut FailoverCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.engine.fail_to_connect(session, peer, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut FailoverCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.engine
            .error_while_proxy(peer, session, e, ctx, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut FailoverCtx,
    ) -> Result<()> {
        self.engine.upstream_request_filter(upstream_request, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut FailoverCtx,
    ) -> Result<()> {
        self.engine
            .upstream_response_filter(session, upstream_response, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut FailoverCtx,
    ) -> FailToProxy {
        self.engine.fail_to_proxy(session, e, ctx).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut FailoverCtx,
    ) -> Result<()> {
        #[cfg(unix)]
        self.engine
            .connected_to_upstream(reused, peer, fd, digest, ctx);
        #[cfg(windows)]
        self.engine
            .connected_to_upstream(reused, peer, sock, digest, ctx);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut FailoverCtx) {
        // An attempt of a hedged request leaves its records to the client's request, which
        // is the one reported.
        if self.engine.logging(session, e, ctx) {
            return;
        }
        if let Some(f) = &self.on_done {
            f(session, e, ctx);
        }
    }
}
