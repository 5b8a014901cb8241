//! Rows read from the proxy's health events: a partly failing peer, a shared overload.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::{binary, free_port, until_listening, Client, Mode, Upstream};
use crate::CLIENTS;

/// A `failover_proxy` (release) with `args` and the TOML `config`, listening on `listen`: its
/// health events (stderr), each with the time since it started listening, arrive on the
/// returned receiver.
pub(crate) async fn spawn_watched(
    args: &[String],
    config: &str,
    listen: SocketAddr,
) -> (
    tokio::process::Child,
    Instant,
    tokio::sync::mpsc::UnboundedReceiver<(Duration, String)>,
) {
    let path =
        std::env::temp_dir().join(format!("pool-bench-{}-{listen}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary("failover_proxy"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy starts");
    until_listening("the proxy", listen).await;
    let _ = std::fs::remove_file(&path);
    let t0 = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(event) = line.strip_prefix("failover_proxy: peer ") {
                let _ = tx.send((t0.elapsed(), event.to_owned()));
            }
        }
    });
    (child, t0, rx)
}

/// `CLIENTS` clients loop GETs of paths from `path` (given the client and a counter) until
/// `end`; the answers that were not 200.
pub(crate) async fn clients_on(
    listen: SocketAddr,
    end: Instant,
    path: impl Fn(u64, u64) -> String + Send + Sync + 'static,
) -> u64 {
    let path = Arc::new(path);
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|c| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut client = Client::new(listen, b"");
                let mut failed = 0;
                let mut n = 0;
                while Instant::now() < end {
                    n += 1;
                    match client.get(&path(c, n), (c << 32) + n, 0).await {
                        Ok((200, _)) => {}
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap_or(0);
    }
    failed
}

/// The requests for `/item` an upstream answered.
fn items(u: &Upstream) -> u64 {
    u.answered("/item")
}

/// What a row of partly failing peers showed.
pub(crate) struct Partly {
    /// When the peer failing 30 % was first ejected (s).
    pub(crate) first_ejection: Option<f64>,
    /// Its ejections, and the ejections of the peer failing 1 %.
    pub(crate) ejections: (usize, usize),
    /// Its share of the requests, and the share of the peer failing 1 %.
    pub(crate) shares: (f64, f64),
    /// Requests, and those answered other than 200.
    pub(crate) requests: u64,
    pub(crate) failed: u64,
}

/// Round-robin over a peer failing 30 % of its requests (503, never twice in a row), one failing
/// 1 % and one that never fails, 16 clients, 503 retried; with the failure-ratio rule (30 % of
/// at least 20 requests over 10 s) or without it.
pub(crate) async fn partly_failing(ratio: bool, seconds: u64) -> Partly {
    let partly = Upstream::start("partly", Mode::FailSome(3, 10)).await;
    let rarely = Upstream::start("rarely", Mode::FailSome(1, 100)).await;
    let fine = Upstream::start("fine", Mode::Up).await;
    let listen = free_port();
    let mut args = vec!["--selector".to_owned(), "round-robin".to_owned()];
    for u in [&partly, &rarely, &fine] {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    args.extend(["--retry-status".to_owned(), "503".to_owned()]);
    let config = if ratio {
        "[health]\nfailure_ratio_percent = 30\nfailure_ratio_min_requests = 20\n"
    } else {
        ""
    };
    let (child, t0, mut events) = spawn_watched(&args, config, listen).await;
    let failed = clients_on(listen, t0 + Duration::from_secs(seconds), |_, _| {
        "/item".into()
    })
    .await;
    drop(child);
    let (mut first, mut of_partly, mut of_rarely) = (None, 0, 0);
    while let Ok((at, event)) = events.try_recv() {
        if !event.contains(" ejected") {
            continue;
        }
        if event.starts_with(&partly.addr.to_string()) {
            of_partly += 1;
            first.get_or_insert(at.as_secs_f64());
        } else if event.starts_with(&rarely.addr.to_string()) {
            of_rarely += 1;
        }
    }
    let (p, r, f) = (items(&partly), items(&rarely), items(&fine));
    let all = (p + r + f).max(1) as f64;
    Partly {
        first_ejection: first,
        ejections: (of_partly, of_rarely),
        shares: (p as f64 / all, r as f64 / all),
        requests: p + r + f,
        failed,
    }
}

/// Four peers all answering 503 (a shared overload), round-robin, 16 clients; the most peers
/// ejected at once with a cap of `cap` percent (or none), and the requests each peer answered.
pub(crate) async fn storm(cap: Option<u8>, seconds: u64) -> (usize, Vec<u64>) {
    let mut ups = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ups.push(Upstream::start(name, Mode::Unavailable).await);
    }
    let listen = free_port();
    let mut args = vec!["--selector".to_owned(), "round-robin".to_owned()];
    for u in &ups {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    let config = match cap {
        Some(percent) => format!("[health]\nmax_ejection_percent = {percent}\n"),
        None => String::new(),
    };
    let (child, t0, mut events) = spawn_watched(&args, &config, listen).await;
    clients_on(listen, t0 + Duration::from_secs(seconds), |_, _| {
        "/item".into()
    })
    .await;
    drop(child);
    let mut out = std::collections::HashSet::new();
    let mut most = 0;
    while let Ok((_, event)) = events.try_recv() {
        let peer = event.split(' ').next().unwrap_or("").to_owned();
        if event.contains(" ejected") {
            out.insert(peer);
        } else if event.contains(" re-admitted") {
            out.remove(&peer);
        }
        most = most.max(out.len());
    }
    (most, ups.iter().map(items).collect())
}
