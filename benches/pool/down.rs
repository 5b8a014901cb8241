//! Every peer down: attempts per request, second by second, with the budget and without.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::common::{binary, free_port, until_listening, Client, Mode, Upstream};
use crate::CLIENTS;

/// Attempts and requests per second of the run.
#[derive(Default)]
struct Seconds(Vec<(u64, u64)>);

impl Seconds {
    fn count(&mut self, second: usize, attempts: u64) {
        if self.0.len() <= second {
            self.0.resize(second + 1, (0, 0));
        }
        self.0[second].0 += attempts;
        self.0[second].1 += 1;
    }
}

/// How the peers are down.
#[derive(Clone, Copy)]
pub(crate) enum Down {
    /// Nothing listens.
    Refused,
    /// A full accept backlog: connects hang.
    Blackholed,
    /// They answer 503, which the proxy is told to fail over.
    Unavailable,
}

pub(crate) async fn run(down: Down, budget: bool, seconds: u64) -> (u64, f64, f64, Vec<f64>) {
    let mut upstreams = Vec::new();
    let mut peers = Vec::new();
    for name in ["a", "b", "c"] {
        match down {
            Down::Refused => peers.push(free_port()),
            Down::Blackholed | Down::Unavailable => {
                let u = Upstream::start(name, Mode::Up).await;
                peers.push(u.addr);
                upstreams.push(u);
            }
        }
    }
    for u in &upstreams {
        match down {
            Down::Blackholed => {
                u.mode.send(Mode::Blackhole).unwrap();
                // Until a connect hangs: the backlog is full.
                let hangs = || async {
                    tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(u.addr))
                        .await
                        .is_err()
                };
                while !hangs().await {}
            }
            _ => u.mode.send(Mode::Unavailable).unwrap(),
        }
    }
    let listen = free_port();
    let config = std::env::temp_dir().join(format!("pool-bench-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        if budget {
            "[budget]\nenabled = true\n"
        } else {
            "[budget]\nenabled = false\n"
        },
    )
    .unwrap();
    let mut args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--listen".to_owned(),
        listen.to_string(),
        "--connect-timeout-ms".to_owned(),
        "400".to_owned(),
        "--read-timeout-ms".to_owned(),
        "400".to_owned(),
    ];
    for p in &peers {
        args.push("--peer".to_owned());
        args.push(p.to_string());
    }
    if let Down::Unavailable = down {
        args.push("--retry-status".to_owned());
        args.push("503".to_owned());
    }
    let mut child = Command::new(binary("failover_proxy"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy starts");
    until_listening("the proxy", listen).await;
    let t0 = Instant::now();
    let counted = Arc::new(Mutex::new(Seconds::default()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let reader = {
        let counted = counted.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(n) = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("attempts="))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let second = t0.elapsed().as_secs() as usize;
                counted.lock().unwrap().count(second, n);
            }
        })
    };
    let end = t0 + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client_loop(listen, end, c as u64)))
        .collect();
    for c in clients {
        let _ = c.await;
    }
    // The last answers' log lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(child);
    let _ = reader.await;
    let _ = std::fs::remove_file(&config);
    let per_second: Vec<(u64, u64)> = counted.lock().unwrap().0.clone();
    let full = &per_second[..per_second.len().min(seconds as usize)];
    let ratio = |&(a, r): &(u64, u64)| if r == 0 { 0.0 } else { a as f64 / r as f64 };
    let requests: u64 = full.iter().map(|s| s.1).sum();
    let after: (u64, u64) = full[1.min(full.len())..]
        .iter()
        .fold((0, 0), |(a, r), s| (a + s.0, r + s.1));
    let series: Vec<f64> = full.iter().map(ratio).collect();
    let worst = series.iter().cloned().fold(0.0, f64::max);
    (requests, ratio(&after), worst, series)
}

async fn client_loop(proxy: SocketAddr, end: Instant, c: u64) {
    let mut client = Client::new(proxy, b"a");
    let mut id = c << 32;
    while Instant::now() < end {
        id += 1;
        if client.get("/item", id, 0).await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
