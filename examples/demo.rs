//! Failover, watched request by request: two upstreams in-process, a pingora proxy in front on
//! 127.0.0.1:6191, then the primary crashes (refuses connections), is blackholed (connects
//! hang), turns slow, and is healed after each. A crash costs a request one refused connect; a
//! hanging connect or a late answer costs it about 50 ms (10 times what the primary has shown,
//! at least 50 ms), not the configured 400 ms and 300 ms timeouts. An ejected primary is probed
//! in the background, never with a request, and takes traffic again once a probe passes.
//!
//! Needs nothing else running and exits on its own:
//! ```text
//! cargo run --example demo
//! ```
//!
//! Copy it into your project with `pingora-failover`, `tokio` (features `rt-multi-thread`,
//! `macros`, `net`, `time`, `sync`), `axum` and `reqwest` as dependencies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_failover::pingora::Server;
use pingora_failover::{
    Failover, FailoverCtx, FailoverProxy, HealthState, OrderedList, Outcome, OutlierDetection,
    Peer, StandardPolicy,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

const LISTEN: &str = "127.0.0.1:6191";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
const READ_TIMEOUT: Duration = Duration::from_millis(300);
const EJECTION: Duration = Duration::from_secs(1);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The primary's port, served (and closed, and blackholed) by `drive`.
    let primary = std::net::TcpListener::bind("127.0.0.1:0")?;
    let backup = upstream("backup");
    let peer = |addr: SocketAddr| {
        Peer::builder(addr.to_string())
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_read_timeout(READ_TIMEOUT)
            .build()
    };
    let primary_peer = peer(primary.local_addr()?)?;
    let selector = OrderedList::new(vec![primary_peer.clone(), peer(backup)?])?;
    let engine = Failover::builder(selector, StandardPolicy::default())
        .with_outlier_detection(
            OutlierDetection::new()
                .with_base_ejection(EJECTION)
                .with_max_ejection(EJECTION),
        )
        .on_health_change(|e| println!("  * health: {} {}", e.peer, e.change));
    // Each finished request's attempts, for `drive` to print next to its response.
    let (done, attempts) = mpsc::unbounded_channel();
    let proxy = FailoverProxy::from_builder(engine)?.on_request_done(move |_, _, ctx| {
        let _ = done.send(attempt_path(ctx));
    });

    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = proxy.into_service(&server.configuration)?;
    service.add_tcp(LISTEN);
    server.add_service(service);

    println!(
        "proxy {LISTEN} -> primary {}, backup {backup} \
         (connect timeout {CONNECT_TIMEOUT:?}, read timeout {READ_TIMEOUT:?})",
        primary.local_addr()?
    );
    std::thread::spawn(move || drive(primary, primary_peer, attempts));
    server.run_forever()
}

/// Runs the story, then ends the process.
fn drive(
    primary: std::net::TcpListener,
    peer: Peer,
    mut attempts: mpsc::UnboundedReceiver<String>,
) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = primary.local_addr().unwrap();
        primary.set_nonblocking(true).unwrap();
        let slow = Arc::new(AtomicBool::new(false));
        let running = Primary::serve(TcpListener::from_std(primary).unwrap(), slow.clone());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        while TcpStream::connect(LISTEN).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        println!("\n1. all healthy");
        requests(&http, &mut attempts).await;

        println!("\n2. the primary crashes (connections refused)");
        running.stop().await;
        requests(&http, &mut attempts).await;
        let running = Primary::serve(TcpListener::bind(addr).await.unwrap(), slow.clone());
        healed(&peer).await;
        requests(&http, &mut attempts).await;

        println!("\n3. the primary is blackholed (connects hang; the connect timeout is 400 ms)");
        running.stop().await;
        let hole = blackhole(addr).await;
        requests(&http, &mut attempts).await;
        drop(hole);
        let _running = Primary::serve(TcpListener::bind(addr).await.unwrap(), slow.clone());
        healed(&peer).await;
        requests(&http, &mut attempts).await;

        println!("\n4. the primary turns slow (answers after 1 s; the read timeout is 300 ms)");
        slow.store(true, Ordering::Relaxed);
        requests(&http, &mut attempts).await;
        slow.store(false, Ordering::Relaxed);
        healed(&peer).await;
        requests(&http, &mut attempts).await;
    });
    std::process::exit(0);
}

/// Three requests through the proxy: status, who answered, how long it took, and the attempts.
async fn requests(http: &reqwest::Client, attempts: &mut mpsc::UnboundedReceiver<String>) {
    for _ in 0..3 {
        let started = Instant::now();
        let resp = http.get(format!("http://{LISTEN}/")).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let took = started.elapsed().as_millis();
        let path = attempts.recv().await.unwrap();
        println!("  {status} from {body:<8} in {took:>5} ms   [{path}]");
    }
}

/// A request's attempts in order, as `PEER -> STATUS` or `PEER -> FAILURE`.
fn attempt_path(ctx: &FailoverCtx) -> String {
    let path: Vec<String> = ctx
        .attempts()
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
    path.join(", then ")
}

/// Says the primary is healed, and waits until it takes traffic again (re-admitted by a
/// background probe if it was ejected).
async fn healed(peer: &Peer) {
    let healed = Instant::now();
    println!("  (healed)");
    while !matches!(peer.health().state(), HealthState::Healthy) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "  (taking traffic again {} ms after the heal)",
        healed.elapsed().as_millis()
    );
}

/// The primary: answers its name, after 1 s while `slow` is set.
struct Primary {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Primary {
    fn serve(listener: TcpListener, slow: Arc<AtomicBool>) -> Self {
        let app = axum::Router::new().fallback(move || {
            let slow = slow.load(Ordering::Relaxed);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                "primary"
            }
        });
        let (stop, stopped) = oneshot::channel();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        Self {
            stop,
            task: tokio::spawn(async move { serve.await }),
        }
    }

    /// Closes the listener and every connection (the proxy's idle pooled ones too): the port
    /// then refuses connects.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Blackholes `addr`: a listener with a backlog of 0 whose accept queue is filled by connects
/// nobody accepts, so that the kernel drops every further SYN and a connect hangs until the
/// connector's timeout, as to a host that vanished. Dropping it closes the port.
async fn blackhole(addr: SocketAddr) -> (TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let hole = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    // Connect until a connect hangs: the queue is then full.
    let connect = || tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr));
    while let Ok(filler) = connect().await {
        fillers.push(filler.unwrap());
    }
    (hole, fillers)
}

/// A loopback upstream answering `name` to everything, on its own thread.
fn upstream(name: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(move || async move { name });
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}
