//! Failover, watched request by request: two upstreams in-process, a proxy in front, then the
//! primary refuses connections, is blackholed (connect hangs), is slow, and comes back. Each time
//! one request pays for finding out; the primary is then ejected and skipped, and once the
//! ejection (1 s here) is over, one request probes it.
//!
//! Needs nothing else running and exits on its own:
//! ```text
//! cargo run --example demo
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use pingora_failover::{
    Failover, FailoverProxy, HealthState, OrderedList, Outcome, OutlierDetection, Peer,
    StandardPolicy,
};
use support::{client, start_proxy, Blackhole, Mode, ProxyServer, RequestLog, Upstream};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
const READ_TIMEOUT: Duration = Duration::from_millis(300);
const EJECTION: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() {
    let mut primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peer = |addr: String| {
        Peer::builder(addr)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_read_timeout(READ_TIMEOUT)
            .build()
            .unwrap()
    };
    let primary_peer = peer(primary.peer_addr());
    let selector = OrderedList::new(vec![primary_peer.clone(), peer(backup.peer_addr())]);
    let engine = Failover::builder(selector.unwrap(), StandardPolicy::default())
        .with_outlier_detection(
            OutlierDetection::new()
                .with_base_ejection(EJECTION)
                .with_max_ejection(EJECTION),
        )
        .on_health_change(|e| println!("  * health: {} {}", e.peer, e.change));
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    println!(
        "proxy {} -> primary {}, backup {} (connect timeout {:?}, read timeout {:?})",
        proxy.addr, primary.addr, backup.addr, CONNECT_TIMEOUT, READ_TIMEOUT
    );
    let mut done = 0;

    phase("1. all healthy");
    requests(&proxy, &log, &mut done, 3).await;

    phase("2. the primary refuses connections (port closed)");
    primary.stop();
    requests(&proxy, &log, &mut done, 3).await;

    phase("3. the primary is blackholed (connect hangs until the timeout)");
    let hole = Blackhole::on(primary.addr).await;
    ejection_over(&primary_peer).await;
    requests(&proxy, &log, &mut done, 3).await;
    drop(hole);

    phase("4. the primary is slow (answers after 1 s)");
    primary.set_mode(Mode::Slow(Duration::from_secs(1)));
    primary.restart().await;
    ejection_over(&primary_peer).await;
    requests(&proxy, &log, &mut done, 3).await;

    phase("5. the primary is back");
    primary.set_mode(Mode::Ok);
    ejection_over(&primary_peer).await;
    requests(&proxy, &log, &mut done, 3).await;

    println!(
        "\nprimary served {}, backup served {}",
        primary.hits(),
        backup.hits()
    );
}

fn phase(title: &str) {
    println!("\n{title}");
}

/// Waits until the primary's ejection is over, so that the next request probes it.
async fn ejection_over(peer: &Peer) {
    while matches!(peer.health().state(), HealthState::Ejected { .. }) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("  (ejection over: the next request probes the primary)");
}

async fn requests(proxy: &ProxyServer, log: &RequestLog, done: &mut usize, n: usize) {
    let http = client();
    for _ in 0..n {
        let started = Instant::now();
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let took = started.elapsed();
        *done += 1;
        let attempts = log.wait_for(*done).await.pop().unwrap();
        let path: Vec<String> = attempts
            .iter()
            .map(|a| {
                let probe = if a.is_probe() { " (probe)" } else { "" };
                match a.outcome() {
                    Outcome::Responded { status } => format!("{}{probe} -> {status}", a.peer()),
                    Outcome::Failed { kind, .. } => format!("{}{probe} -> {kind}", a.peer()),
                    _ => format!("{}{probe} -> ?", a.peer()),
                }
            })
            .collect();
        println!(
            "  {status} from {body:<8} in {:>5} ms   [{}]",
            took.as_millis(),
            path.join(", then ")
        );
    }
}
