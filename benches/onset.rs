//! Failover at the moment of failure, not after a warm-up that hides it.
//!
//! Under closed-loop load (32 connections, one request at a time each, one in eight a POST), a
//! healthy primary breaks 2 s into the run and heals at 8 s; the run ends at 14 s. Every
//! request's latency is recorded. The faults, played by an upstream in this process:
//! - crash: the listener closes (connects refused) and every open connection is reset;
//! - blackhole: connects hang (a listener with a full backlog) and open connections stall;
//! - slow: the primary answers after 1 s;
//! - 503: the primary answers 503.
//!
//! Each fault is run against `failover_proxy` (ordered list: primary, then backup) with its
//! defaults, again with `--stall-cut-ms 20` (`failover-cut`), and against bare pingora with the
//! usual hand-written failover (a try counter in `CTX`, one retry of a connect failure on the
//! backup), all with one worker thread, a 400 ms connect timeout and a 1 s read timeout (300 ms
//! for slow). Reported per run:
//! - failed GETs and POSTs (an error or a 5xx), and POSTs that reached the upstreams twice;
//! - requests slower than 50 ms, and the slowest;
//! - onset: from the fault until the last GET slower than 50 ms ended (within the fault
//!   window): how long clients kept waiting on the primary (a POST, once sent, waits for its
//!   answer or its timeout whatever a proxy does);
//! - p99 in the fault window, corrected for coordinated omission as wrk does (each stall adds the
//!   requests its connection would have sent meanwhile, at the healthy interval);
//! - throughput in the fault window;
//! - back: after the heal, until the first 100 ms in which 90 % of requests went to the primary.
//!
//! ```text
//! make bench   # or:
//! cargo build --release --example failover_proxy --example bare_proxy
//! cargo bench --bench onset
//! ```
//!
//! `ONSET_FAULTS=crash,blackhole,slow,503` chooses faults;
//! `ONSET_PROXIES=bare,failover,failover-cut` proxies.
//! Loopback only; every process it starts is killed when it ends.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

const CLIENTS: usize = 32;
const FAULT_AT: Duration = Duration::from_secs(2);
const HEAL_AT: Duration = Duration::from_secs(8);
const END_AT: Duration = Duration::from_secs(14);
const SLOW_ANSWER: Duration = Duration::from_secs(1);
const STALL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Crash,
    Blackhole,
    Slow,
    Unavailable,
}

const FAULTS: [(&str, Mode); 4] = [
    ("crash", Mode::Crash),
    ("blackhole", Mode::Blackhole),
    ("slow", Mode::Slow),
    ("503", Mode::Unavailable),
];

/// An HTTP/1.1 upstream that answers with its name, and can break in each of the modes.
struct Upstream {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// POST ids received, and how many times.
    posts: Arc<Mutex<HashMap<u64, u32>>>,
}

impl Upstream {
    async fn start(name: &'static str) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(Mode::Up);
        let posts = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(serve(name, listener, rx, posts.clone()));
        Self { addr, mode, posts }
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts while the mode lets it: no listener while crashed, a full backlog while blackholed.
async fn serve(
    name: &'static str,
    first: TcpListener,
    mut mode: watch::Receiver<Mode>,
    posts: Arc<Mutex<HashMap<u64, u32>>>,
) {
    let addr = first.local_addr().unwrap();
    let mut listener = Some(first);
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Crash => listener = None,
            Mode::Blackhole => {
                listener = None;
                let _hole = blackhole(addr).await;
                let _ = mode.changed().await;
                continue;
            }
            _ => {
                if listener.is_none() {
                    listener = Some(bind(addr, 1024).expect("the port is ours again"));
                }
            }
        }
        let Some(l) = &listener else {
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    // Dropped in a crash: reset, not closed. (A zero linger does not block on
                    // drop, which is what the deprecation warns of.)
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    tokio::spawn(connection(name, stream, mode.clone(), posts.clone()));
                }
            }
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

/// A listener on `addr` whose backlog is full: further connects hang. Both halves must be kept.
async fn blackhole(addr: SocketAddr) -> (TcpListener, Vec<TcpStream>) {
    let hole = bind(addr, 0).expect("the port is ours again");
    let mut fillers = Vec::new();
    let connect = || tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr));
    while let Ok(Ok(filler)) = connect().await {
        fillers.push(filler);
    }
    (hole, fillers)
}

async fn connection(
    name: &'static str,
    stream: TcpStream,
    mut mode: watch::Receiver<Mode>,
    posts: Arc<Mutex<HashMap<u64, u32>>>,
) {
    let serving = answer_all(name, stream, mode.clone(), posts);
    let crash = async {
        let _ = mode.wait_for(|m| *m == Mode::Crash).await;
    };
    tokio::select! {
        _ = serving => {}
        _ = crash => {}
    }
}

async fn answer_all(
    name: &'static str,
    stream: TcpStream,
    mut mode: watch::Receiver<Mode>,
    posts: Arc<Mutex<HashMap<u64, u32>>>,
) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let head = read_head(&mut stream).await?;
        let mut body = vec![0; head.length];
        stream.read_exact(&mut body).await?;
        let now = *mode.borrow_and_update();
        let status = match now {
            Mode::Blackhole => {
                // Stall until healed, then hang up without answering.
                let _ = mode.wait_for(|m| *m == Mode::Up).await;
                return Ok(());
            }
            Mode::Slow => {
                tokio::time::sleep(SLOW_ANSWER).await;
                200
            }
            Mode::Unavailable => 503,
            Mode::Up | Mode::Crash => 200,
        };
        if status == 200 {
            if let Some(id) = head.id {
                *posts.lock().unwrap().entry(id).or_default() += 1;
            }
        }
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        stream.get_mut().write_all(reply.as_bytes()).await?;
    }
}

struct Head {
    status: u16,
    length: usize,
    id: Option<u64>,
    close: bool,
}

/// Reads a request or response head: the status of a response, the body length, an `x-id`.
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Head> {
    let mut head = Head {
        status: 0,
        length: 0,
        id: None,
        close: false,
    };
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if first {
            first = false;
            if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
                head.status = rest.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
            continue;
        }
        if l.is_empty() {
            return Ok(head);
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let v = v.trim();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => head.length = v.parse().unwrap_or(0),
            "x-id" => head.id = v.parse().ok(),
            "connection" => head.close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// When it was sent, from the start of the run.
    start: Duration,
    latency: Duration,
    /// 0 when it failed without a response.
    status: u16,
    by_primary: bool,
    post: bool,
}

impl Record {
    fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// A keep-alive client connection that sends one request at a time.
struct Client {
    proxy: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    async fn send(&mut self, post: Option<u64>) -> io::Result<(u16, bool)> {
        // A connection the proxy closed while idle fails before any byte comes back: that
        // request was not taken, so it is sent again on a new connection, as browsers do.
        let reused = self.conn.is_some();
        match self.try_send(post).await {
            Err(e) if reused && e.kind() == io::ErrorKind::UnexpectedEof => {
                self.try_send(post).await
            }
            other => other,
        }
    }

    async fn try_send(&mut self, post: Option<u64>) -> io::Result<(u16, bool)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.proxy).await?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
        let request = match post {
            Some(id) => format!(
                "POST /order HTTP/1.1\r\nhost: bench\r\nx-id: {id}\r\ncontent-length: 2\r\n\r\n{{}}"
            ),
            None => "GET /item HTTP/1.1\r\nhost: bench\r\n\r\n".to_owned(),
        };
        let result = async {
            conn.get_mut().write_all(request.as_bytes()).await?;
            let head = read_head(conn).await?;
            let mut body = vec![0; head.length];
            conn.read_exact(&mut body).await?;
            Ok::<_, io::Error>((head, body))
        }
        .await;
        match result {
            Ok((head, body)) => {
                // An error page's framing is the proxy's: start afresh after one.
                if head.close || head.status >= 500 {
                    self.conn = None;
                }
                Ok((head.status, body == b"primary"))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

async fn load(proxy: SocketAddr, t0: Instant, ids: Arc<AtomicU64>) -> Vec<Record> {
    let mut client = Client { proxy, conn: None };
    let mut records = Vec::new();
    let mut n = 0u64;
    while t0.elapsed() < END_AT {
        n += 1;
        let post = (n % 8 == 0).then(|| ids.fetch_add(1, Ordering::Relaxed));
        let start = t0.elapsed();
        let sent = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), client.send(post)).await;
        let (status, by_primary) = match result {
            Ok(Ok(answer)) => answer,
            _ => {
                client.conn = None;
                (0, false)
            }
        };
        records.push(Record {
            start,
            latency: sent.elapsed(),
            status,
            by_primary,
            post: post.is_some(),
        });
    }
    records
}

/// A proxy process, killed on drop.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir.join("release").join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --example failover_proxy --example bare_proxy",
        path.display()
    );
    path
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start_proxy(
    kind: &str,
    primary: SocketAddr,
    backup: SocketAddr,
    slow: bool,
) -> (Proxy, SocketAddr) {
    let listen = free_port();
    let read_ms = if slow { "300" } else { "1000" };
    let (p, b, l) = (primary.to_string(), backup.to_string(), listen.to_string());
    let mut args: Vec<&str> = match kind {
        "failover" | "failover-cut" => vec![
            "--listen",
            &l,
            "--peer",
            &p,
            "--peer",
            &b,
            "--threads",
            "1",
            "--quiet",
            "--connect-timeout-ms",
            "400",
            "--read-timeout-ms",
            read_ms,
            "--retry-status",
            "502",
            "--retry-status",
            "503",
            "--retry-status",
            "504",
        ],
        _ => vec![
            "--listen",
            &l,
            "--peer",
            &p,
            "--backup",
            &b,
            "--threads",
            "1",
            "--connect-timeout-ms",
            "400",
            "--read-timeout-ms",
            read_ms,
        ],
    };
    if kind == "failover-cut" {
        args.extend(["--stall-cut-ms", "20"]);
    }
    let name = if kind == "bare" {
        "bare_proxy"
    } else {
        "failover_proxy"
    };
    let child = Command::new(binary(name))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the proxy starts");
    let proxy = Proxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_err() {
        assert!(Instant::now() < deadline, "{name} never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (proxy, listen)
}

struct Row {
    failed_get: usize,
    failed_post: usize,
    twice: usize,
    stalled: usize,
    max: Duration,
    onset: Duration,
    p99: Duration,
    rps: f64,
    back: Option<Duration>,
}

fn analyse(records: &[Record], twice: usize) -> Row {
    let healthy: Vec<&Record> = records
        .iter()
        .filter(|r| r.start + r.latency < FAULT_AT)
        .collect();
    let interval =
        healthy.iter().map(|r| r.latency.as_secs_f64()).sum::<f64>() / healthy.len().max(1) as f64;
    let in_window = |r: &&Record| r.start >= FAULT_AT && r.start < HEAL_AT;
    let mut window: Vec<f64> = Vec::new();
    for r in records.iter().filter(in_window) {
        let l = r.latency.as_secs_f64();
        window.push(l);
        // wrk's correction: the requests this connection did not send while it waited.
        let mut missing = l - interval;
        while interval > 0.0 && missing >= interval {
            window.push(missing);
            missing -= interval;
        }
    }
    window.sort_by(f64::total_cmp);
    let p99 = window
        .get(((window.len() as f64) * 0.99) as usize)
        .copied()
        .unwrap_or(0.0);
    // A POST sent to the primary cannot be moved once sent: it waits its answer or timeout
    // whatever the proxy does, so the onset is the GETs'.
    let onset = records
        .iter()
        .filter(|r| !r.post && (r.latency > STALL || r.failed()))
        .map(|r| r.start + r.latency)
        .filter(|end| *end > FAULT_AT && *end < HEAL_AT + STALL)
        .max()
        .map_or(Duration::ZERO, |end| end - FAULT_AT);
    let served = records.iter().filter(in_window).count();
    // After the heal, 100 ms buckets by when requests were sent.
    let mut back = None;
    let mut t = HEAL_AT;
    while t + Duration::from_millis(100) <= END_AT {
        let bucket: Vec<&Record> = records
            .iter()
            .filter(|r| r.start >= t && r.start < t + Duration::from_millis(100))
            .collect();
        let primary = bucket.iter().filter(|r| r.by_primary).count();
        if !bucket.is_empty() && primary * 10 >= bucket.len() * 9 {
            back = Some(t + Duration::from_millis(100) - HEAL_AT);
            break;
        }
        t += Duration::from_millis(100);
    }
    Row {
        failed_get: records.iter().filter(|r| !r.post && r.failed()).count(),
        failed_post: records.iter().filter(|r| r.post && r.failed()).count(),
        twice,
        stalled: records.iter().filter(|r| r.latency > STALL).count(),
        max: records.iter().map(|r| r.latency).max().unwrap_or_default(),
        onset,
        p99: Duration::from_secs_f64(p99),
        rps: served as f64 / (HEAL_AT - FAULT_AT).as_secs_f64(),
        back,
    }
}

async fn run(kind: &str, fault: Mode) -> Row {
    let primary = Upstream::start("primary").await;
    let backup = Upstream::start("backup").await;
    let (_proxy, addr) = start_proxy(kind, primary.addr, backup.addr, fault == Mode::Slow).await;
    let t0 = Instant::now();
    let ids = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(load(addr, t0, ids.clone())))
        .collect();
    tokio::time::sleep_until((t0 + FAULT_AT).into()).await;
    primary.mode.send_replace(fault);
    tokio::time::sleep_until((t0 + HEAL_AT).into()).await;
    primary.mode.send_replace(Mode::Up);
    let mut records = Vec::new();
    for c in clients {
        records.extend(c.await.unwrap());
    }
    let mut posts = primary.posts.lock().unwrap().clone();
    for (id, n) in backup.posts.lock().unwrap().iter() {
        *posts.entry(*id).or_default() += n;
    }
    let twice = posts.values().filter(|n| **n > 1).count();
    analyse(&records, twice)
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it, where a
    // two-minute benchmark against release binaries has no place.
    if !std::env::args().any(|a| a == "--bench") {
        println!("onset: run by cargo bench (make bench), not by cargo test");
        return;
    }
    let pick = |var: &str| std::env::var(var).ok();
    let faults: Vec<(&str, Mode)> = match pick("ONSET_FAULTS") {
        Some(list) => FAULTS
            .iter()
            .filter(|(n, _)| list.split(',').any(|w| w == *n))
            .copied()
            .collect(),
        None => FAULTS.to_vec(),
    };
    let proxies: Vec<String> = pick("ONSET_PROXIES")
        .map(|l| l.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| vec!["bare".into(), "failover".into(), "failover-cut".into()]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "onset: {CLIENTS} closed-loop connections; fault at {} s, heal at {} s, end at {} s",
        FAULT_AT.as_secs(),
        HEAL_AT.as_secs(),
        END_AT.as_secs()
    );
    println!();
    println!("| fault | proxy | failed GET / POST | POST twice | >50 ms | max ms | onset ms | p99 ms (corrected) | req/s in fault | back >=90 % |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, fault) in &faults {
        for kind in &proxies {
            let row = runtime.block_on(run(kind, *fault));
            let back = row.back.map_or_else(
                || format!("> {} ms", ms(END_AT - HEAL_AT)),
                |b| format!("{} ms", ms(b)),
            );
            println!(
                "| {name} | {kind} | {} / {} | {} | {} | {} | {} | {} | {:.0} | {back} |",
                row.failed_get,
                row.failed_post,
                row.twice,
                row.stalled,
                ms(row.max),
                ms(row.onset),
                ms(row.p99),
                row.rps,
            );
        }
    }
}
