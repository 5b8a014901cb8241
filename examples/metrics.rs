//! Failover metrics served by pingora's own prometheus service (`pingora-prometheus`), with
//! health events printed as they happen. Runs in-process against a refusing primary and a
//! backup, then prints the `/metrics` lines of this crate and exits.
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```
//! In a real `Server`, add `pingora_prometheus::prometheus_http_service()` next to the proxy
//! service; the metrics are on prometheus's default registry.

#[path = "../tests/support/mod.rs"]
mod support;

use pingora_failover::{Failover, FailoverProxy, Metrics, OrderedList, Peer, StandardPolicy};
use support::{client, refused_addr, start_proxy, Mode, ProxyServer, Upstream};

#[tokio::main]
async fn main() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = OrderedList::new(vec![
        Peer::new(&refused_addr()).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ])
    .unwrap();
    let metrics = Metrics::register(prometheus::default_registry()).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default())
        .with_metrics(metrics)
        .on_health_change(|e| println!("health: {} {}", e.peer, e.change));
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let prometheus = ProxyServer::start(pingora_prometheus::new_prometheus_server()).await;

    let http = client();
    for _ in 0..5 {
        http.get(proxy.url("/")).send().await.unwrap();
    }
    log.wait_for(5).await;

    let page = http.get(prometheus.url("/metrics")).send().await.unwrap();
    let page = page.text().await.unwrap();
    println!("GET http://{}/metrics (failover lines):", prometheus.addr);
    for line in page.lines().filter(|l| l.starts_with("failover_")) {
        println!("  {line}");
    }
}
