//! An upstream for the end-to-end benchmark (`bench/e2e.py`): answers 200 (optionally after a
//! delay), or plays a blackhole (a loopback listener whose connects hang). Binds `127.0.0.1:0`,
//! prints its address on the first line, and serves until killed.
//!
//! ```text
//! cargo run --release --example bench_upstream -- [--delay-ms N | --blackhole]
//! ```
//!
//! Copy it into your project with `tokio` (features `rt`, `macros`, `net`, `time`) and `axum`
//! as dependencies.

use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let delay = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Duration::ZERO,
        ["--delay-ms", ms] => Duration::from_millis(ms.parse().expect("--delay-ms N")),
        ["--blackhole"] => {
            let (hole, _fillers) = blackhole().await;
            println!("{}", hole.local_addr().unwrap());
            return std::future::pending().await;
        }
        _ => panic!("usage: bench_upstream [--delay-ms N | --blackhole]"),
    };

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        "upstream"
    });
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.unwrap();
}

/// A listener with a backlog of 0 whose accept queue is filled by connects nobody accepts: the
/// kernel then drops every further SYN, so a connect hangs until the connector's own timeout, as
/// to a host that vanished. Both halves must be kept open.
async fn blackhole() -> (TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hole = socket.listen(0).unwrap();
    let addr = hole.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Connect until a connect hangs: the queue is then full.
    let connect = || tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr));
    while let Ok(filler) = connect().await {
        fillers.push(filler.unwrap());
    }
    (hole, fillers)
}
