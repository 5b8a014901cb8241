//! What the end-to-end benchmarks share: an HTTP/1.1 upstream that can break in several ways,
//! closed-loop clients that record every request, and the proxies under test as processes.

#![allow(dead_code)]

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Crash,
    Blackhole,
    /// Answers after this long.
    Slow(Duration),
    Unavailable,
    /// Answers 503 to `k` of every `n` requests, spread evenly; 200 to the others.
    FailSome(u64, u64),
    /// Answers after the first time, except `k` of every `n` requests (spread evenly), after
    /// the second.
    SlowSome(Duration, Duration, u64, u64),
}

/// An HTTP/1.1 upstream that answers with its name, and can break in each of the modes.
pub struct Upstream {
    pub addr: SocketAddr,
    pub mode: watch::Sender<Mode>,
    /// Request ids (`x-id`) answered, and how many times.
    pub posts: Arc<Mutex<HashMap<u64, u32>>>,
    /// Requests being answered now, and the most at once.
    pub load: Arc<Load>,
}

/// Requests an upstream is answering, and what it answered.
#[derive(Default)]
pub struct Load {
    pub now: std::sync::atomic::AtomicU64,
    pub most: std::sync::atomic::AtomicU64,
    /// Requests answered.
    pub hits: AtomicU64,
    /// Requests seen by `SlowSome` (counted on arrival).
    slow_hits: AtomicU64,
    /// Requests answered per path.
    pub paths: Mutex<HashMap<String, u64>>,
}

impl Load {
    fn begin(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now.fetch_add(1, Relaxed) + 1;
        self.most.fetch_max(now, Relaxed);
    }

    fn end(&self) {
        self.now.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Upstream {
    /// The requests for `path` it answered.
    pub fn answered(&self, path: &str) -> u64 {
        let paths = self.load.paths.lock().unwrap();
        paths.get(path).copied().unwrap_or(0)
    }

    pub async fn start(name: &'static str, mode: Mode) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(mode);
        let posts = Arc::new(Mutex::new(HashMap::new()));
        let load = Arc::new(Load::default());
        tokio::spawn(serve(name, listener, rx, posts.clone(), load.clone()));
        Self {
            addr,
            mode,
            posts,
            load,
        }
    }
}

impl Upstream {
    /// A primary and a backup, both up, in HTTP/2 (h2c) when `h2`, else in HTTP/1.1.
    pub async fn pair(h2: bool) -> (Self, Self) {
        if h2 {
            (
                Self::start_h2("primary").await,
                Self::start_h2("backup").await,
            )
        } else {
            (
                Self::start("primary", Mode::Up).await,
                Self::start("backup", Mode::Up).await,
            )
        }
    }

    /// An HTTP/2 upstream in clear text (h2c, by prior knowledge) that answers every request
    /// with its name, on each stream at once (after `x-delay-ms`, when asked). Its modes play no part: its faults are the
    /// network's (`iptables`).
    pub async fn start_h2(name: &'static str) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Up);
        let posts = Arc::new(Mutex::new(HashMap::new()));
        let load = Arc::new(Load::default());
        let (p, l) = (posts.clone(), load.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_h2(name, stream, p.clone(), l.clone()));
            }
        });
        Self {
            addr,
            mode,
            posts,
            load,
        }
    }
}

/// Serves one h2c connection: each stream's body is read, its `x-id` counted, and the name
/// sent back.
async fn serve_h2(
    name: &'static str,
    stream: TcpStream,
    posts: Arc<Mutex<HashMap<u64, u32>>>,
    load: Arc<Load>,
) {
    let Ok(mut conn) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let (posts, load) = (posts.clone(), load.clone());
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            load.hits.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = header("x-id") {
                *posts.lock().unwrap().entry(id).or_default() += 1;
            }
            // A request can ask to be answered late (a legitimately slow endpoint).
            if let Some(ms) = header("x-delay-ms").filter(|ms| *ms > 0) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let head = axum::http::Response::builder()
                .status(200)
                .header("content-length", name.len())
                .body(())
                .unwrap();
            if let Ok(mut send) = respond.send_response(head, false) {
                let _ = send.send_data(axum::body::Bytes::from_static(name.as_bytes()), true);
            }
        });
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
    load: Arc<Load>,
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
                // The upstream was dropped: so is its blackhole.
                if mode.changed().await.is_err() {
                    return;
                }
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
                    tokio::spawn(connection(name, stream, mode.clone(), posts.clone(), load.clone()));
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
    load: Arc<Load>,
) {
    let serving = answer_all(name, stream, mode.clone(), posts, &load);
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
    load: &Load,
) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let head = read_head(&mut stream).await?;
        let mut body = vec![0; head.length];
        stream.read_exact(&mut body).await?;
        // Counted until the answer is written (or the connection ends).
        load.begin();
        struct Done<'a>(&'a Load);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.end();
            }
        }
        let _done = Done(load);
        let now = *mode.borrow_and_update();
        if head.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(head.delay_ms)).await;
        }
        let status = match now {
            Mode::Blackhole => {
                // Stall until healed, then hang up without answering.
                let _ = mode.wait_for(|m| *m == Mode::Up).await;
                return Ok(());
            }
            Mode::Slow(delay) => {
                tokio::time::sleep(delay).await;
                200
            }
            Mode::Unavailable => 503,
            Mode::SlowSome(base, slow, k, n) => {
                let hit = load.slow_hits.fetch_add(1, Ordering::Relaxed);
                let late = (hit + 1) * k / n > hit * k / n;
                tokio::time::sleep(if late { slow } else { base }).await;
                200
            }
            Mode::FailSome(k, n) => {
                let hit = load.hits.load(Ordering::Relaxed);
                if (hit + 1) * k / n > hit * k / n {
                    503
                } else {
                    200
                }
            }
            Mode::Up | Mode::Crash => 200,
        };
        load.hits.fetch_add(1, Ordering::Relaxed);
        *load.paths.lock().unwrap().entry(head.path).or_default() += 1;
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
    /// The path of a request.
    path: String,
    length: usize,
    id: Option<u64>,
    close: bool,
    /// How long the request asks to be answered late (a legitimately slow endpoint).
    delay_ms: u64,
}

/// Reads a request or response head: the status of a response, the body length, an `x-id`.
async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Head> {
    let mut head = Head {
        status: 0,
        path: String::new(),
        length: 0,
        id: None,
        close: false,
        delay_ms: 0,
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
            } else if let Some(path) = l.split(' ').nth(1) {
                head.path = path.to_owned();
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
            "x-delay-ms" => head.delay_ms = v.parse().unwrap_or(0),
            _ => {}
        }
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When it was sent, from the start of the run.
    pub start: Duration,
    pub latency: Duration,
    /// 0 when it failed without a response.
    pub status: u16,
    /// Answered by the upstream the load marks (its name is the body).
    pub marked: bool,
    pub post: bool,
}

impl Record {
    pub fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// A keep-alive client connection that sends one request at a time.
pub struct Client {
    proxy: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// The body of the upstream whose answers are marked.
    mark: &'static [u8],
}

impl Client {
    /// A client of `proxy` that marks the answers whose body is `mark`.
    pub fn new(proxy: SocketAddr, mark: &'static [u8]) -> Self {
        Self {
            proxy,
            conn: None,
            mark,
        }
    }

    async fn send(&mut self, post: Option<u64>) -> io::Result<(u16, bool)> {
        let request = match post {
            Some(id) => format!(
                "POST /order HTTP/1.1\r\nhost: bench\r\nx-id: {id}\r\ncontent-length: 2\r\n\r\n{{}}"
            ),
            None => "GET /item HTTP/1.1\r\nhost: bench\r\n\r\n".to_owned(),
        };
        self.request(&request).await
    }

    /// `GET path` carrying `id`, which the upstream answers after `delay_ms`: the status, and
    /// whether the marked upstream answered.
    pub async fn get(&mut self, path: &str, id: u64, delay_ms: u64) -> io::Result<(u16, bool)> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: bench\r\nx-id: {id}\r\nx-delay-ms: {delay_ms}\r\n\r\n"
        );
        self.request(&request).await
    }

    async fn request(&mut self, request: &str) -> io::Result<(u16, bool)> {
        // A connection the proxy closed while idle fails before any byte comes back: that
        // request was not taken, so it is sent again on a new connection, as browsers do.
        let reused = self.conn.is_some();
        match self.try_send(request).await {
            Err(e) if reused && e.kind() == io::ErrorKind::UnexpectedEof => {
                self.try_send(request).await
            }
            other => other,
        }
    }

    async fn try_send(&mut self, request: &str) -> io::Result<(u16, bool)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.proxy).await?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
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
                Ok((head.status, body == self.mark))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// One client's closed loop through `proxy` until `end` after `t0`: one request at a time, one
/// in eight a POST carrying a fresh id from `ids` (when `posts`). Answers from the upstream
/// whose body is `mark` are marked.
pub async fn load(
    proxy: SocketAddr,
    t0: Instant,
    end: Duration,
    posts: Option<Arc<AtomicU64>>,
    mark: &'static [u8],
) -> Vec<Record> {
    let mut client = Client::new(proxy, mark);
    let mut records = Vec::new();
    let mut n = 0u64;
    while t0.elapsed() < end {
        n += 1;
        let post = posts
            .as_ref()
            .filter(|_| n % 8 == 0)
            .map(|ids| ids.fetch_add(1, Ordering::Relaxed));
        let start = t0.elapsed();
        let sent = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), client.send(post)).await;
        let (status, marked) = match result {
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
            marked,
            post: post.is_some(),
        });
    }
    records
}

/// A proxy process, killed on drop.
pub struct Proxy(Child);

impl Proxy {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn binary(name: &str) -> PathBuf {
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

/// A configuration file for the reference proxy naming `primary` and `backup` as h2c peers;
/// its path.
pub fn h2_config(primary: SocketAddr, backup: SocketAddr, listen: SocketAddr) -> String {
    let path = std::env::temp_dir().join(format!("pf-bench-{}-{listen}.toml", std::process::id()));
    let toml = format!(
        "peers = [{{ addr = \"{primary}\", http = \"h2\" }}, {{ addr = \"{backup}\", http = \"h2\" }}]\n"
    );
    std::fs::write(&path, toml).expect("a temporary file");
    path.to_string_lossy().into_owned()
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts the release example `name` with `args` (which make it listen on `listen`), and waits
/// until it listens.
pub async fn spawn_proxy(name: &str, args: &[&str], listen: SocketAddr) -> Proxy {
    let child = Command::new(binary(name))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the proxy starts");
    let proxy = Proxy(child);
    until_listening(name, listen).await;
    proxy
}

/// Waits until something listens on `listen` (at most 10 s; `name` says what, if not).
pub async fn until_listening(name: &str, listen: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_err() {
        assert!(Instant::now() < deadline, "{name} never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `q` quantile of `sorted` (seconds).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64) * q) as usize)
        .copied()
        .unwrap_or(0.0)
}

/// The mean latency (seconds) of the requests that ended before `t`: a closed-loop
/// connection's interval between requests while all was well.
pub fn mean_latency_before(records: &[Record], t: Duration) -> f64 {
    let (sum, n) = records
        .iter()
        .filter(|r| r.start + r.latency < t)
        .fold((0.0, 0usize), |(sum, n), r| {
            (sum + r.latency.as_secs_f64(), n + 1)
        });
    sum / n.max(1) as f64
}

/// wrk's correction for coordinated omission: `latency`, and the requests its connection did not
/// send while it waited, at the healthy `interval` (all in seconds).
pub fn corrected(latency: f64, interval: f64, into: &mut Vec<f64>) {
    into.push(latency);
    let mut missing = latency - interval;
    while interval > 0.0 && missing >= interval {
        into.push(missing);
        missing -= interval;
    }
}

/// The runtime `name` runs on under `cargo bench`; `None` (after saying so) under
/// `cargo test --all-targets`, which runs benches without `--bench` and where a benchmark of
/// minutes against release binaries has no place.
pub fn bench_runtime(name: &str) -> Option<tokio::runtime::Runtime> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: run by cargo bench (make bench), not by cargo test");
        return None;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Some(runtime)
}

/// Milliseconds, rounded.
pub fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}
