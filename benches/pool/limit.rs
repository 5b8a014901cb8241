//! Failover under a limit of requests in flight per peer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{free_port, Client, Mode, Upstream};

/// What the clients of the limit rows saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) ok: u64,
    pub(crate) unavailable: u64,
    pub(crate) other: u64,
    /// The first other answer, or error, for the report.
    pub(crate) first_other: Option<String>,
    pub(crate) slowest: Duration,
}

pub(crate) async fn limited(limit: bool, seconds: u64) -> (u64, u64, Seen) {
    let primary = Upstream::start("primary", Mode::Slow(Duration::from_millis(20))).await;
    let backup = Upstream::start("backup", Mode::Slow(Duration::from_millis(20))).await;
    let third = Upstream::start("third", Mode::Slow(Duration::from_millis(20))).await;
    let listen = free_port();
    let mut args = vec![
        "--listen".to_owned(),
        listen.to_string(),
        "--quiet".to_owned(),
        "--connect-timeout-ms".to_owned(),
        "400".to_owned(),
        "--read-timeout-ms".to_owned(),
        "2000".to_owned(),
    ];
    for u in [&primary, &backup, &third] {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    if limit {
        args.push("--max-requests-per-peer".to_owned());
        args.push("16".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _proxy = crate::common::spawn_proxy("failover_proxy", &args, listen).await;
    let end = Instant::now() + Duration::from_secs(seconds);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut client = Client::new(listen, b"backup");
                let mut id = c << 32;
                while Instant::now() < end {
                    id += 1;
                    let t = Instant::now();
                    let status = client.get("/item", id, 0).await.map(|(s, _)| s);
                    let took = t.elapsed();
                    let mut seen = seen.lock().unwrap();
                    seen.slowest = seen.slowest.max(took);
                    match status {
                        Ok(200) => seen.ok += 1,
                        Ok(503) => seen.unavailable += 1,
                        other => {
                            seen.other += 1;
                            seen.first_other.get_or_insert(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    primary.mode.send(Mode::Crash).unwrap();
    for c in clients {
        let _ = c.await;
    }
    let most = |u: &Upstream| u.load.most.load(std::sync::atomic::Ordering::Relaxed);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (most(&backup), most(&third), seen)
}
