//! A `PeerSelector` written outside the crate, as a user would: requests carrying
//! `x-tenant: NAME` go to that tenant's dedicated upstream, and fall back to the shared pool in
//! order when it fails. It starts the upstreams on loopback (the dedicated upstream of tenant
//! `globex` refuses connections), runs a pingora `Server` on 127.0.0.1:6192, sends three
//! requests through it and exits:
//!
//! ```text
//! cargo run --example custom_selector
//! ```
//!
//! Copy it into your project with `pingora-failover`, `tokio` (features `rt-multi-thread`,
//! `macros`, `net`, `time`), `axum` and `reqwest` as dependencies.

use std::collections::HashMap;
use std::time::Duration;

use pingora_failover::pingora::Server;
use pingora_failover::{Attempt, FailoverProxy, Peer, PeerSelector, StandardPolicy};

const LISTEN: &str = "127.0.0.1:6192";

/// Dedicated peers by tenant, then a shared pool.
struct TenantSelector {
    dedicated: HashMap<String, Peer>,
    shared: Vec<Peer>,
}

impl PeerSelector for TenantSelector {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let tenant = attempt
            .request()
            .and_then(|r| r.headers.get("x-tenant"))
            .and_then(|v| v.to_str().ok())
            .and_then(|t| self.dedicated.get(t));
        // The tenant's own peer first, then the pool: the first that is untried and healthy (or
        // this request's probe of an ejected peer), and if none is, the best untried one.
        let candidates = tenant.into_iter().chain(&self.shared);
        candidates
            .clone()
            .find(|p| attempt.admits(p))
            .or_else(|| attempt.best_untried(candidates))
            .cloned()
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

/// Sends a request per tenant through the proxy once it listens, then ends the process.
fn drive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        while tokio::net::TcpStream::connect(LISTEN).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (tenant, note) in [
            (Some("acme"), "dedicated upstream up"),
            (None, "no tenant"),
            (Some("globex"), "dedicated upstream down"),
        ] {
            let mut req = http.get(format!("http://{LISTEN}/"));
            if let Some(t) = tenant {
                req = req.header("x-tenant", t);
            }
            let body = req.send().await.unwrap().text().await.unwrap();
            let tenant = tenant.unwrap_or("-");
            println!("tenant {tenant:<6} ({note}): answered by {body}");
        }
    });
    std::process::exit(0);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let selector = TenantSelector {
        dedicated: HashMap::from([
            (
                "acme".to_owned(),
                Peer::new(&upstream("acme-dedicated").to_string())?,
            ),
            ("globex".to_owned(), Peer::new(&refusing().to_string())?),
        ]),
        shared: vec![Peer::new(&upstream("shared-pool").to_string())?],
    };
    let proxy = FailoverProxy::new(selector, StandardPolicy::default())?;

    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = proxy.into_service(&server.configuration)?;
    service.add_tcp(LISTEN);
    server.add_service(service);

    std::thread::spawn(drive);
    server.run_forever()
}
