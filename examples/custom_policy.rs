//! A `RetryPolicy` written outside the crate, as a user would: a POST that carries an
//! `idempotency-key` header is safe to replay (the upstream deduplicates by key), so it fails
//! over like a GET; any other POST that reached an upstream is never sent again. It starts the
//! upstreams on loopback (the primary reads each request and hangs up without answering, as a
//! crashing process does), runs a pingora `Server` on 127.0.0.1:6193, sends three requests
//! through it and exits:
//!
//! ```text
//! cargo run --example custom_policy
//! ```
//!
//! Copy it into your project with `pingora-failover`, `tokio` (features `rt-multi-thread`,
//! `macros`, `net`, `time`, `io-util`), `axum` and `reqwest` as dependencies.

use std::time::Duration;

use pingora_failover::pingora::{RequestHeader, Server};
use pingora_failover::{
    FailoverProxy, Failure, FailureKind, OrderedList, Peer, RetryDecision, RetryPolicy,
};
use tokio::io::AsyncReadExt;

const LISTEN: &str = "127.0.0.1:6193";

/// Retries connect failures and failures after the request was sent, up to three attempts, and
/// replays a non-idempotent request only when it carries an idempotency key.
struct KeyedReplay;

impl KeyedReplay {
    /// The failures worth another peer: everything that says the peer, not the request, failed.
    fn retries(kind: FailureKind) -> bool {
        kind.is_connect()
            || matches!(
                kind,
                FailureKind::Unprocessed
                    | FailureKind::HeaderTimeout
                    | FailureKind::ReusedConnectionClosed
                    | FailureKind::Io
            )
    }
}

impl RetryPolicy for KeyedReplay {
    fn decide(&self, failure: &Failure<'_>) -> RetryDecision {
        // The proxy's safety rules apply after this: never once the response started, never a
        // body past the replay buffer, never past the attempts, deadline or budget.
        if Self::retries(failure.kind()) {
            RetryDecision::Retry
        } else {
            RetryDecision::Stop
        }
    }

    /// Asked before an attempt, where a cut of a stalled attempt would end in `kind`: the same
    /// answer as `decide`, from the rules alone (no counting, no clock).
    fn would_retry(&self, kind: FailureKind, _request: &RequestHeader) -> bool {
        Self::retries(kind)
    }

    fn max_attempts(&self) -> u32 {
        3
    }

    fn replay_non_idempotent(&self, failure: &Failure<'_>) -> bool {
        failure.request().headers.contains_key("idempotency-key")
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

/// A loopback upstream that reads each request and hangs up without answering.
fn crashing() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
            }
        });
    });
    addr
}

/// Sends the requests through the proxy once it listens, then ends the process.
fn drive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        while tokio::net::TcpStream::connect(LISTEN).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = format!("http://{LISTEN}/pay");
        let get = http.get(&url).send().await.unwrap();
        println!(
            "GET:                       {} {}",
            get.status(),
            get.text().await.unwrap()
        );
        let keyed = http
            .post(&url)
            .header("idempotency-key", "order-42")
            .body("{}")
            .send()
            .await
            .unwrap();
        println!(
            "POST with idempotency-key: {} {}",
            keyed.status(),
            keyed.text().await.unwrap()
        );
        let plain = http.post(&url).body("{}").send().await.unwrap();
        println!(
            "POST without a key:        {} (not replayed)",
            plain.status()
        );
    });
    std::process::exit(0);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let selector = OrderedList::new(vec![
        Peer::new(&crashing().to_string())?,
        Peer::new(&upstream("backup").to_string())?,
    ])?;
    let proxy = FailoverProxy::new(selector, KeyedReplay)?;

    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = proxy.into_service(&server.configuration)?;
    service.add_tcp(LISTEN);
    server.add_service(service);

    std::thread::spawn(drive);
    server.run_forever()
}
