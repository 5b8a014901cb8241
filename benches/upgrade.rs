//! WebSocket upgrades through the proxy and through bare pingora, in one run: how many tunnels
//! end before they carry their first message, with an upstream that answers its 101 at once,
//! echoes what it gets, and never closes first.
//!
//! Pingora 0.9.1 tears an HTTP/1 tunnel down when it reads the upstream's 101 before the upgrade
//! request's own empty body (cloudflare/pingora#946): both halves of its proxy loop are ready,
//! and `tokio::select!` picks one at random. A fast upstream makes the race likely. This bench
//! shows whether the crate adds to it.
//!
//! ```text
//! cargo build --release --example failover_proxy --example bare_proxy
//! cargo bench --bench upgrade
//! ```

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{bench_runtime, free_port, spawn_proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upgrades per proxy.
const UPGRADES: usize = 300;

/// Reads until the end of an HTTP head; `None` when the connection ends first.
async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// An upstream that switches protocols and echoes; `early`: its 101 goes out as soon as the
/// connection is accepted, so that it is already waiting when pingora starts its proxy loop (the
/// fastest upstream there can be, and the ordering that loses the race).
async fn upstream(early: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                               connection: upgrade\r\n\r\n";
                if early && s.write_all(switch).await.is_err() {
                    return;
                }
                if read_head(&mut s).await.is_none() {
                    return;
                }
                if !early && s.write_all(switch).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One upgrade through `proxy`: whether its tunnel carried a message there and back.
async fn one(proxy: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(proxy).await else {
        return false;
    };
    let request = b"GET /chat HTTP/1.1\r\nhost: chat\r\nupgrade: websocket\r\n\
                    connection: upgrade\r\nsec-websocket-version: 13\r\n\
                    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    if s.write_all(request).await.is_err() {
        return false;
    }
    let Ok(Some(head)) = tokio::time::timeout(Duration::from_secs(2), read_head(&mut s)).await
    else {
        return false;
    };
    if !head.starts_with(b"HTTP/1.1 101") || s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut echo = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut echo)).await,
        Ok(Ok(4)) if &echo == b"ping"
    )
}

fn main() {
    let Some(runtime) = bench_runtime("upgrade") else {
        return;
    };
    runtime.block_on(async {
        println!("| upstream's 101 | proxy | upgrades | ended before their first message | time |");
        println!("|---|---|---|---|---|");
        for (when, early) in [("after the request", false), ("on accept", true)] {
            let up = upstream(early).await.to_string();
            for (label, name, extra) in [
                ("bare pingora", "bare_proxy", None),
                ("failover", "failover_proxy", None),
                (
                    "failover, no stall cut",
                    "failover_proxy",
                    Some("--no-stall-cut"),
                ),
            ] {
                let listen = free_port();
                let l = listen.to_string();
                let mut args = vec!["--listen", &l, "--peer", &up, "--threads", "1"];
                if name == "failover_proxy" {
                    args.push("--quiet");
                }
                args.extend(extra);
                let _proxy = spawn_proxy(name, &args, listen).await;
                let started = Instant::now();
                let mut ended = 0;
                for _ in 0..UPGRADES {
                    if !one(listen).await {
                        ended += 1;
                    }
                }
                println!(
                    "| {when} | {label} | {UPGRADES} | {ended} ({:.1} %) | {:.1} s |",
                    ended as f64 * 100.0 / UPGRADES as f64,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    });
}
