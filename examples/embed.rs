//! An existing `ProxyHttp` that gains failover by embedding the engine. It keeps its own `CTX`
//! (a request id, with the failover record inside), its own `request_filter` (a `/healthz` that
//! never reaches an upstream) and its own access log, and hands its hooks to the engine.
//!
//! It starts a backup upstream on loopback, lists a primary that refuses connections before it,
//! runs a pingora `Server` on 127.0.0.1:6190, sends three requests through it and exits:
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! Copy it into your project with `pingora-failover`, `tokio` (features `rt-multi-thread`,
//! `macros`, `net`), `axum` and `reqwest` as dependencies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pingora_failover::pingora::{
    async_trait, http_proxy_service, Digest, Error, FailToProxy, HttpPeer, ProxyHttp,
    RequestHeader, ResponseHeader, Result, Server, Session,
};
use pingora_failover::{Failover, FailoverCtx, OrderedList, Peer, StandardPolicy};

const LISTEN: &str = "127.0.0.1:6190";

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
        static NEXT: AtomicU64 = AtomicU64::new(1);
        MyCtx {
            request_id: NEXT.fetch_add(1, Ordering::Relaxed),
            ..MyCtx::default()
        }
    }

    // The user's own logic first, untouched by failover; then the engine's, which answers a
    // hedged request (`FailoverBuilder::with_hedging`; it does nothing otherwise).
    async fn request_filter(&self, session: &mut Session, ctx: &mut MyCtx) -> Result<bool> {
        if session.req_header().uri.path() == "/healthz" {
            let mut resp = ResponseHeader::build(200, None)?;
            resp.insert_header("content-length", "2")?;
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some("ok".into()), true).await?;
            return Ok(true);
        }
        self.failover
            .request_filter(session, &mut ctx.failover)
            .await
    }

    // A hedged request runs its attempts as pingora subrequests.
    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &MyCtx) -> bool {
        self.failover.allows_subrequests(session)
    }

    // The hooks below hand over to the engine. Leaving out `fail_to_connect` or
    // `error_while_proxy` fails the first retried request with an error that names them.
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

    // Learns connect times, and watches the wait for the response header (the stall cut).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut MyCtx,
    ) -> Result<()> {
        #[cfg(unix)]
        self.failover
            .connected_to_upstream(reused, peer, fd, digest, &mut ctx.failover);
        #[cfg(windows)]
        self.failover
            .connected_to_upstream(reused, peer, sock, digest, &mut ctx.failover);
        Ok(())
    }

    // For a peer that speaks HTTP/2 or HTTP/1, the request shows which one, for the stall cut.
    // The engine reads the version pingora set for the connection's protocol: hand it the
    // request before any filter of yours that changes the version.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut MyCtx,
    ) -> Result<()> {
        self.failover
            .upstream_request_filter(upstream_request, &mut ctx.failover);
        Ok(())
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
        // Completes the failover record before the access log reads it. An attempt of a hedged
        // request is reported with the client's request, not on its own.
        if self.failover.logging(session, e, &mut ctx.failover) {
            return;
        }
        println!(
            "request {} {} -> {} [{}]",
            ctx.request_id,
            session.req_header().uri,
            session.response_written().map_or(0, |r| r.status.as_u16()),
            ctx.failover.summary()
        );
    }
}

/// A loopback upstream answering `name` to everything, on its own thread.
fn upstream(name: &'static str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(move || async move { name });
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// A loopback address that refuses connections: a port that was free a moment ago.
fn refusing() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Sends a few requests through the proxy once it listens, then ends the process.
fn drive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = |path: &str| format!("http://{LISTEN}{path}");
        while http.get(url("/healthz")).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for path in ["/healthz", "/api", "/api"] {
            let body = http.get(url(path)).send().await.unwrap().text().await;
            println!("GET {path}: {}", body.unwrap());
        }
    });
    std::process::exit(0);
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let selector = OrderedList::new(vec![
        Peer::new(&refusing().to_string())?,
        Peer::new(&upstream("backup").to_string())?,
    ])?;

    let mut server = Server::new(None)?;
    server.bootstrap();
    // The engine is built against the server's configuration: pingora's own retry cap
    // (`max_retries`) is checked against the policy here, and cannot be forgotten.
    let failover = Failover::new(selector, StandardPolicy::default(), &server.configuration)?;
    let mut proxy = http_proxy_service(&server.configuration, MyProxy { failover });
    proxy.add_tcp(LISTEN);
    server.add_service(proxy);

    std::thread::spawn(drive);
    server.run_forever()
}
