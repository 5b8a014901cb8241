//! Failover metrics served by pingora's own prometheus service (`pingora-prometheus`), with
//! health events printed as they happen. It starts a backup upstream on loopback, lists a
//! primary that refuses connections before it, runs a pingora `Server` with the proxy on
//! 127.0.0.1:6193 and the metrics on 127.0.0.1:6194, sends five requests, prints this crate's
//! lines of `/metrics` and exits:
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```
//!
//! Copy it into your project with `pingora-failover` (feature `metrics`), `pingora-prometheus`,
//! `tokio` (features `rt-multi-thread`, `macros`, `net`, `time`, `sync`), `axum` and `reqwest` as
//! dependencies.

use std::time::Duration;

use pingora_failover::pingora::Server;
use pingora_failover::{Failover, FailoverProxy, Metrics, OrderedList, Peer, StandardPolicy};
use tokio::sync::mpsc;

const LISTEN: &str = "127.0.0.1:6193";
const METRICS: &str = "127.0.0.1:6194";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let selector = OrderedList::new(vec![
        Peer::new(&refusing().to_string())?,
        Peer::new(&upstream("backup").to_string())?,
    ])?;
    // pingora's prometheus service serves the default registry of the prometheus crate it was
    // built with, which `pingora_failover::prometheus` is.
    let metrics = Metrics::register(pingora_failover::prometheus::default_registry())?;
    let engine = Failover::builder(selector, StandardPolicy::default())
        .with_metrics(metrics)
        .on_health_change(|e| println!("health: {} {}", e.peer, e.change));
    let (done, finished) = mpsc::unbounded_channel();
    let proxy = FailoverProxy::from_builder(engine)?.on_request_done(move |_, _, ctx| {
        println!("request done: {}", ctx.summary());
        let _ = done.send(());
    });

    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = proxy.into_service(&server.configuration)?;
    service.add_tcp(LISTEN);
    server.add_service(service);
    let mut prometheus = pingora_prometheus::prometheus_http_service();
    prometheus.add_tcp(METRICS);
    server.add_service(prometheus);

    std::thread::spawn(move || drive(finished));
    server.run_forever()
}

/// Sends five requests through the proxy once it listens, prints the failover metrics, then ends
/// the process.
fn drive(mut finished: mpsc::UnboundedReceiver<()>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        while tokio::net::TcpStream::connect(LISTEN).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..5 {
            http.get(format!("http://{LISTEN}/")).send().await.unwrap();
            // The request's metrics are complete once pingora has logged it.
            finished.recv().await;
        }
        let url = format!("http://{METRICS}/metrics");
        let page = http.get(&url).send().await.unwrap().text().await.unwrap();
        println!("GET {url} (failover lines):");
        for line in page.lines().filter(|l| l.starts_with("failover_")) {
            println!("  {line}");
        }
    });
    std::process::exit(0);
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
