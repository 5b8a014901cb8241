//! An existing `ProxyHttp` that adds failover by embedding the engine: its own `CTX` (here a
//! request id and the failover record), its own `request_filter` (here a health endpoint that
//! never reaches an upstream), its own access log. Runs in-process, then exits.
//!
//! ```text
//! cargo run --example embed
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{http_proxy, FailToProxy, ProxyHttp, Session};

use pingora_failover::{Failover, FailoverCtx, OrderedList, Peer, StandardPolicy};
use support::{client, refused_addr, server_conf, Mode, ProxyServer, Upstream};

/// The user's proxy, which had no failover before.
struct MyProxy {
    failover: Failover<OrderedList, StandardPolicy>,
}

/// The user's own per-request state, with the failover record inside it.
#[derive(Default)]
struct MyCtx {
    request_id: u64,
    failover: FailoverCtx,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = MyCtx;

    fn new_ctx(&self) -> MyCtx {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        MyCtx {
            request_id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..MyCtx::default()
        }
    }

    // The user's own logic, untouched by failover.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut MyCtx) -> Result<bool> {
        if session.req_header().uri.path() == "/healthz" {
            let mut resp = ResponseHeader::build(200, None)?;
            resp.insert_header("content-length", "2")?;
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some("ok".into()), true).await?;
            return Ok(true);
        }
        Ok(false)
    }

    // The six hooks below hand over to the engine.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut MyCtx) -> Result<Box<HttpPeer>> {
        self.failover
            .upstream_peer(session, &mut ctx.failover)
            .await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut MyCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.failover
            .fail_to_connect(session, peer, &mut ctx.failover, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut MyCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.failover
            .error_while_proxy(peer, session, e, &mut ctx.failover, client_reused)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut MyCtx,
    ) -> Result<()> {
        self.failover
            .upstream_response_filter(session, upstream_response, &mut ctx.failover)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut MyCtx,
    ) -> FailToProxy {
        self.failover
            .fail_to_proxy(session, e, &mut ctx.failover)
            .await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut MyCtx) {
        self.failover.logging(session, e, &mut ctx.failover);
        // The user's access log, now with the failover record.
        println!(
            "request {} {} -> {} [{}]",
            ctx.request_id,
            session.req_header().uri,
            session.response_written().map_or(0, |r| r.status.as_u16()),
            ctx.failover.summary()
        );
    }
}

#[tokio::main]
async fn main() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let selector = OrderedList::new(vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ])
    .unwrap();
    let failover = Failover::new(selector, StandardPolicy::default()).unwrap();
    let conf = server_conf();
    failover.check_server_conf(&conf).unwrap();
    let proxy = ProxyServer::start(http_proxy(&conf, MyProxy { failover })).await;

    let http = client();
    for path in ["/healthz", "/api", "/api"] {
        let body = http
            .get(proxy.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        println!("GET {path}: {body}");
    }
}
