//! Real servers for the end-to-end tests and examples: upstreams on `127.0.0.1:0` whose behaviour
//! can be switched while they run (HTTP/1.1, h2c, or HTTP/1.1 over TLS), a port that refuses
//! connections, a blackholed listener, and a pingora proxy served in-process.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "dns")]
pub mod dns;
mod protocols;

#[allow(unused_imports)]
pub use protocols::Proto;
#[cfg(feature = "rustls")]
#[allow(unused_imports)]
pub use protocols::TestCa;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::l4::stream::Stream;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How an upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 at once, body = the upstream's name.
    Ok,
    /// 200 after this delay.
    Slow(Duration),
    /// Accepts, reads the request, never answers.
    Hang,
    /// This status at once, body = "<name> <status>".
    Status(u16),
    /// Fails `k` of every `n` requests with `status`, spread evenly (the others: 200 at once).
    FailSome { status: u16, k: usize, n: usize },
    /// This status at once, with `Retry-After: <seconds>`.
    StatusRetryAfter(u16, u32),
    /// 200 header and a first body chunk, then the body stalls forever.
    StallBody,
    /// A gRPC trailers-only answer: 200, `content-type: application/grpc`, this `grpc-status`.
    Grpc(u8),
    /// h2 only: every stream is reset with `REFUSED_STREAM` before it is processed.
    Refuse,
    /// h2 only: a new connection gets a GOAWAY (`NO_ERROR`, last stream 0) at once; a stream
    /// already received on an open connection is answered, and the connection shut down
    /// gracefully after it.
    GoAway,
    /// h2 only: every stream is reset with `HTTP_1_1_REQUIRED`.
    Http11Required,
}

#[derive(Default)]
struct State {
    hits: AtomicUsize,
    /// h2 streams refused (never processed).
    refused: AtomicUsize,
    /// Requests seen per `x-request-id`.
    ids: Mutex<HashMap<String, usize>>,
    /// Bodies received, in order.
    bodies: Mutex<Vec<Bytes>>,
    /// Every request as it arrived, in order.
    seen: Mutex<Vec<Seen>>,
    /// Works on one request at a time, its probes included (a server of one worker, or a pool
    /// whose workers are all busy): the others wait for `worker`.
    one_at_a_time: std::sync::atomic::AtomicBool,
    worker: tokio::sync::Mutex<()>,
}

/// One request as it arrived at an upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
}

impl Seen {
    /// Whether it is a probe, by its `User-Agent`: a background recovery probe, a liveness
    /// check of the stall cut, or the warm-up's check.
    pub fn is_probe(&self) -> bool {
        self.user_agent
            .as_deref()
            .is_some_and(|ua| ua.contains("recovery probe"))
    }
}

/// A real upstream on `127.0.0.1:0`: HTTP/1.1 (axum on hyper), h2c (the h2 crate, so that it
/// can refuse streams and send GOAWAY), or HTTP/1.1 over TLS (rustls).
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    proto: Proto,
    mode: Arc<Mutex<Mode>>,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// An HTTP/1.1 upstream.
    pub async fn start(name: &'static str, mode: Mode) -> Self {
        Self::start_with(name, mode, Proto::H1).await
    }

    /// An upstream speaking `proto`.
    pub async fn start_with(name: &'static str, mode: Mode, proto: Proto) -> Self {
        Self::start_at(name, mode, proto, "127.0.0.1:0".parse().unwrap()).await
    }

    /// An upstream listening on `addr` (another loopback address, or a port of choice).
    pub async fn start_at(name: &'static str, mode: Mode, proto: Proto, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, state) = (Arc::new(Mutex::new(mode)), Arc::<State>::default());
        let task = spawn_server(name, listener, proto.clone(), mode.clone(), state.clone());
        Self {
            name,
            addr,
            proto,
            mode,
            state,
            task,
        }
    }

    /// The address as `IP:PORT`, for `Peer::new`.
    pub fn peer_addr(&self) -> String {
        self.addr.to_string()
    }

    /// A peer builder set up for this upstream's protocol: h2c by prior knowledge, or TLS with
    /// SNI `localhost` and the test CA trusted.
    pub fn peer_builder(&self) -> pingora_failover::PeerBuilder {
        self.proto.peer_builder(self.peer_addr())
    }

    /// h2 streams this upstream refused unprocessed.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Requests received (counted when the request head arrives), probes excepted.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// From now on, works on one request at a time, its probes included, as a server of one
    /// worker does: a request that arrives while another is worked on waits for it.
    pub fn one_at_a_time(&self) {
        self.state.one_at_a_time.store(true, Ordering::SeqCst);
    }

    /// How many times each `x-request-id` arrived.
    pub fn ids(&self) -> HashMap<String, usize> {
        self.state.ids.lock().unwrap().clone()
    }

    /// The bodies of the requests received so far, probes excepted.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.state.bodies.lock().unwrap().clone()
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Probes received so far (recovery probes, liveness checks, the warm-up's checks).
    pub fn probes(&self) -> usize {
        self.seen().iter().filter(|s| s.is_probe()).count()
    }

    /// Stops listening: new connections are refused. Connections already open are closed too.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Stops listening, as [`stop`](Self::stop) does, and returns once connects are refused
    /// (the abort takes effect at the task's next poll).
    pub async fn stop_and_wait(&self) {
        self.stop();
        while TcpStream::connect(self.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    }

    /// Listens again on the same port, with the same counters.
    pub async fn restart(&mut self) {
        self.task.abort();
        let listener = loop {
            // The aborted task drops its listener asynchronously.
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        self.task = spawn_server(
            self.name,
            listener,
            self.proto.clone(),
            self.mode.clone(),
            self.state.clone(),
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_server(
    name: &'static str,
    listener: TcpListener,
    proto: Proto,
    mode: Arc<Mutex<Mode>>,
    state: Arc<State>,
) -> JoinHandle<()> {
    let app = axum::Router::new().fallback({
        let (mode, state) = (mode.clone(), state.clone());
        move |method, uri, headers, body| {
            handle(
                name,
                mode.clone(),
                state.clone(),
                method,
                uri,
                headers,
                body,
            )
        }
    });
    // Each connection is served inside a JoinSet owned by this task, so that aborting the task
    // closes open keep-alive connections too, as a killed server would.
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            let (proto, mode, state) = (proto.clone(), mode.clone(), state.clone());
            conns.spawn(async move {
                match proto {
                    Proto::H1 => serve_h1(tcp, svc).await,
                    Proto::H2c => protocols::serve_h2(tcp, name, mode, state).await,
                    #[cfg(feature = "rustls")]
                    Proto::Tls(ref ca) | Proto::MutualTls(ref ca) => {
                        if let Ok(tls) = ca.acceptor(&proto).accept(tcp).await {
                            serve_h1(tls, svc).await;
                        }
                    }
                    #[cfg(feature = "rustls")]
                    Proto::H2Tls(ref ca) => {
                        if let Ok(tls) = ca.acceptor(&proto).accept(tcp).await {
                            protocols::serve_h2(tls, name, mode, state).await;
                        }
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
    })
}

async fn serve_h1<T>(io: T, svc: hyper_util::service::TowerToHyperService<axum::Router>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

async fn handle(
    name: &'static str,
    mode: Arc<Mutex<Mode>>,
    state: Arc<State>,
    _method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The mode is read before the hit is counted: a test that sees the hit and then switches
    // the mode knows this request was answered in the old one.
    let mode = *mode.lock().unwrap();
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        path: uri.path().to_owned(),
        host: header("host"),
        user_agent: header("user-agent"),
    };
    // A probe (a recovery probe, a liveness check, the warm-up's check) is no request.
    let probe = seen.is_probe();
    let hit = if probe {
        state.hits.load(Ordering::SeqCst)
    } else {
        state.hits.fetch_add(1, Ordering::SeqCst)
    };
    state.seen.lock().unwrap().push(seen);
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        *state.ids.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    }
    let _worker = if state.one_at_a_time.load(Ordering::SeqCst) {
        Some(state.worker.lock().await)
    } else {
        None
    };
    // A request can ask to be answered late, whatever the mode: a legitimately slow request.
    if let Some(ms) = headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Or to pause its body this long after the header and a first part (a stream, a long poll).
    if let Some(ms) = headers
        .get("x-pause-body-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        let first = futures_util::stream::once(async move {
            Ok::<_, Infallible>(Bytes::from(format!("{name} first ")))
        });
        let rest = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(Bytes::from("rest"))
        });
        return Response::builder()
            .header("x-upstream", name)
            .body(Body::from_stream(futures_util::StreamExt::chain(
                first, rest,
            )))
            .unwrap();
    }
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let len = body.len();
    if !probe {
        state.bodies.lock().unwrap().push(body);
    }
    let reply = |status: StatusCode, text: String| {
        Response::builder()
            .status(status)
            .header("x-upstream", name)
            .header("x-body-len", len)
            .body(Body::from(text))
            .unwrap()
    };
    match mode {
        Mode::Ok => reply(StatusCode::OK, name.to_owned()),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            reply(StatusCode::OK, name.to_owned())
        }
        Mode::Hang => std::future::pending().await,
        Mode::Status(s) => reply(StatusCode::from_u16(s).unwrap(), format!("{name} {s}")),
        Mode::FailSome { status, k, n } => {
            if (hit + 1) * k / n > hit * k / n {
                reply(
                    StatusCode::from_u16(status).unwrap(),
                    format!("{name} {status}"),
                )
            } else {
                reply(StatusCode::OK, name.to_owned())
            }
        }
        Mode::StatusRetryAfter(s, secs) => {
            let mut r = reply(StatusCode::from_u16(s).unwrap(), format!("{name} {s}"));
            r.headers_mut().insert("retry-after", secs.into());
            r
        }
        Mode::Grpc(code) => Response::builder()
            .header("x-upstream", name)
            .header("content-type", "application/grpc")
            .header("grpc-status", code.to_string())
            .body(Body::empty())
            .unwrap(),
        // The h2 server acts on these before a stream is processed; a stream it already took
        // (or an HTTP/1.1 request) is answered.
        Mode::Refuse | Mode::GoAway | Mode::Http11Required => {
            reply(StatusCode::OK, name.to_owned())
        }
        Mode::StallBody => {
            let first = futures_util::stream::once(async move {
                Ok::<_, Infallible>(Bytes::from(format!("{name} partial ")))
            });
            let stall =
                futures_util::stream::once(std::future::pending::<Result<Bytes, Infallible>>());
            Response::builder()
                .header("x-upstream", name)
                .header("content-length", "1000")
                .body(Body::from_stream(futures_util::StreamExt::chain(
                    first, stall,
                )))
                .unwrap()
        }
    }
}

/// `n` distinct addresses on which nothing listens.
pub fn refused_addrs<const N: usize>() -> [String; N] {
    std::array::from_fn(|_| refused_addr())
}

/// An address on which nothing listens: connecting is refused at once. Its port stays bound (a
/// socket that never listens) for the life of the test process, so that no server started
/// later, in this test or another, can take it.
pub fn refused_addr() -> String {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    HELD.lock().unwrap().push(socket);
    addr
}

/// An address that was free a moment ago, for a server to listen on (a proxy process told
/// where to listen).
#[allow(dead_code)]
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A loopback listener whose accept queue is full: SYNs to it are dropped, so a connect hangs
/// until the connector's own timeout. Nothing is ever accepted.
///
/// With one connection established in the queue and the probing connect closed, every further
/// connect attempt drops exactly one SYN (no retransmit comes before 1 s), which the kernel counts
/// in `TcpExt: ListenOverflows`: [`connection_attempts`](Self::connection_attempts) reads it.
pub struct Blackhole {
    pub addr: SocketAddr,
    baseline: u64,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn start() -> Self {
        Self::on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A blackhole on `addr`, for instance the port of an upstream that was just stopped.
    pub async fn on(addr: SocketAddr) -> Self {
        // A stopped upstream on `addr` drops its listener asynchronously: retry until it did.
        let listener = loop {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            match socket.bind(addr).and_then(|()| socket.listen(0)) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("blackhole on {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Connect until one connect cannot complete: the queue is then full. The timeout is
        // the test of that condition, not a wait for it.
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(e)) => panic!("blackhole filler failed: {e}"),
                Err(_) => {
                    return Self {
                        addr,
                        baseline: listen_overflows(),
                        _listener: listener,
                        _fillers: fillers,
                    }
                }
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    pub fn peer_addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connection attempts dropped by full accept queues since this blackhole was made. The
    /// kernel's counter is for the whole machine: only meaningful in a test binary whose other
    /// tests make no blackhole, and attempts of under 1 s (one SYN each).
    pub fn connection_attempts(&self) -> u64 {
        listen_overflows() - self.baseline
    }
}

/// The kernel's count of SYNs dropped because an accept queue was full.
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let i = names
                .split_whitespace()
                .position(|n| n == "ListenOverflows");
            return values
                .split_whitespace()
                .nth(i.unwrap())
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    panic!("no TcpExt ListenOverflows in /proc/net/netstat");
}

/// Health events in the order they happened, fed by `on_health_change`.
#[derive(Clone, Default)]
pub struct Events {
    seen: Arc<Mutex<Vec<(String, pingora_failover::HealthChange)>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Events {
    pub fn observer(&self) -> impl Fn(&pingora_failover::HealthEvent) + Send + Sync + 'static {
        let events = self.clone();
        move |e| {
            events
                .seen
                .lock()
                .unwrap()
                .push((e.peer.name().to_owned(), e.change));
            events.changed.notify_waiters();
        }
    }

    /// Every event so far: the peer's name (`IP:PORT` for an address) and the change.
    pub fn all(&self) -> Vec<(String, pingora_failover::HealthChange)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until an event satisfies `pred`.
    pub async fn wait_until(
        &self,
        pred: impl Fn(&(String, pingora_failover::HealthChange)) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.changed.notified();
                if self.seen.lock().unwrap().iter().any(&pred) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the health event never came")
    }
}

/// A pingora proxy app served in-process on `127.0.0.1:0`, without a `Server`.
pub struct ProxyServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    _shutdown: watch::Sender<bool>,
}

impl ProxyServer {
    pub async fn start<A>(app: A) -> Self
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let app = Arc::new(app);
        // Connections are served inside a JoinSet owned by the accept task: dropping the server
        // closes them all and releases the app (and pingora's upstream connection pool in it).
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (app, rx) = (app.clone(), rx.clone());
                conns.spawn(async move {
                    let stream: pingora_core::protocols::Stream = Box::new(Stream::from(tcp));
                    let mut stream = Some(stream);
                    while let Some(s) = stream.take() {
                        stream = app.process_new(s, &rx).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            task,
            _shutdown: tx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The statuses of `n` GETs of `/` sent at once, sorted.
    pub async fn concurrent_statuses(&self, n: usize) -> Vec<u16> {
        concurrent_statuses(&self.url("/"), n).await
    }

    /// GETs `/` until upstream `want` answers (at most 10 s); how long that took.
    pub async fn until_answered_by(&self, want: &str) -> Duration {
        self.poll_until(want, |_| ()).await
    }

    /// As [`until_answered_by`](Self::until_answered_by), with every answer meanwhile a 200:
    /// no gap while a change takes effect.
    pub async fn until_answered_without_gap_by(&self, want: &str) -> Duration {
        self.poll_until(want, |status| {
            assert_eq!(status, 200, "a gap before {want} answered")
        })
        .await
    }

    async fn poll_until(&self, want: &str, check: impl Fn(reqwest::StatusCode)) -> Duration {
        let http = client();
        let started = std::time::Instant::now();
        loop {
            let resp = http.get(self.url("/")).send().await.unwrap();
            check(resp.status());
            if resp.text().await.unwrap() == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{want} never answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// POSTs an order with `x-request-id: id` to `path`, so that upstreams count its arrivals.
    pub async fn post_order(&self, path: &str, id: &str) -> reqwest::Response {
        client()
            .post(self.url(path))
            .header("x-request-id", id)
            .body("one order")
            .send()
            .await
            .unwrap()
    }

    /// GETs `path` through the proxy and returns the body (the answering upstream's name).
    pub async fn get_text(&self, http: &reqwest::Client, path: &str) -> String {
        let resp = http.get(self.url(path)).send().await.unwrap();
        resp.text().await.unwrap()
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real HTTP client that talks to loopback only, with a bound on every request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The default pingora server configuration, as an `Arc` for `into_app`.
pub fn server_conf() -> Arc<pingora_core::server::configuration::ServerConf> {
    Arc::new(pingora_core::server::configuration::ServerConf::default())
}

/// The attempt records of every finished request, filled by `FailoverProxy::on_request_done`.
#[derive(Clone, Default)]
pub struct RequestLog {
    done: Arc<Mutex<Vec<Vec<pingora_failover::AttemptRecord>>>>,
    /// Each finished request's final error, as text.
    errors: Arc<Mutex<Vec<Option<String>>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl RequestLog {
    /// A callback for `FailoverProxy::on_request_done` that records into this log.
    pub fn recorder(
        &self,
    ) -> impl Fn(
        &pingora_proxy::Session,
        Option<&pingora_error::Error>,
        &pingora_failover::FailoverCtx,
    ) + Send
           + Sync
           + 'static {
        let log = self.clone();
        move |_, e, ctx| {
            // In the order the requests began, not the order pingora got round to logging them:
            // a request answered first may be logged after the next one.
            let attempts = ctx.attempts().to_vec();
            let began = attempts
                .first()
                .map(pingora_failover::AttemptRecord::started);
            let mut done = log.done.lock().unwrap();
            let at = match began {
                Some(t) => done.partition_point(|r| r.first().is_none_or(|a| a.started() <= t)),
                None => done.len(),
            };
            done.insert(at, attempts);
            log.errors
                .lock()
                .unwrap()
                .insert(at, e.map(ToString::to_string));
            drop(done);
            log.changed.notify_waiters();
        }
    }

    /// The final errors of the requests finished so far, in the order they began (`None`: no
    /// error).
    pub fn errors(&self) -> Vec<Option<String>> {
        self.errors.lock().unwrap().clone()
    }

    /// The outcome of the first attempt of each of the first `n` requests to finish, in the
    /// order they began.
    pub async fn first_outcomes(&self, n: usize) -> Vec<pingora_failover::Outcome> {
        self.wait_for(n)
            .await
            .iter()
            .map(|r| r[0].outcome())
            .collect()
    }

    /// Waits until `n` requests have finished (pingora logs after the response is sent), then
    /// returns all records so far, in the order the requests began.
    pub async fn wait_for(&self, n: usize) -> Vec<Vec<pingora_failover::AttemptRecord>> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.changed.notified();
                {
                    let done = self.done.lock().unwrap();
                    if done.len() >= n {
                        return done.clone();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("requests did not finish")
    }
}

/// Starts a `FailoverProxy` over `selector` and `policy` in-process, recording every request.
pub async fn start_failover<S, R>(selector: S, policy: R) -> (ProxyServer, RequestLog)
where
    S: pingora_failover::PeerSelector,
    R: pingora_failover::RetryPolicy,
{
    let proxy = pingora_failover::FailoverProxy::new(selector, policy).unwrap();
    start_proxy(proxy).await
}

/// Serves `proxy` in-process, recording every request.
pub async fn start_proxy<S, R>(
    proxy: pingora_failover::FailoverProxy<S, R>,
) -> (ProxyServer, RequestLog)
where
    S: pingora_failover::PeerSelector,
    R: pingora_failover::RetryPolicy,
{
    let log = RequestLog::default();
    let app = proxy
        .on_request_done(log.recorder())
        .into_app(&server_conf())
        .unwrap();
    (ProxyServer::start(app).await, log)
}

/// The statuses of `n` GETs of `url` sent at once, sorted.
pub async fn concurrent_statuses(url: &str, n: usize) -> Vec<u16> {
    let http = client();
    let mut statuses: Vec<u16> =
        futures_util::future::join_all((0..n).map(|_| http.get(url).send()))
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
    statuses.sort_unstable();
    statuses
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A small seedable random stream (SplitMix64), so that a failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An ordered list over `addrs`, each peer with `read_timeout`.
pub fn ordered(addrs: &[String], read_timeout: Duration) -> pingora_failover::OrderedList {
    let peers = addrs.iter().map(|a| {
        pingora_failover::Peer::builder(a.as_str())
            .with_read_timeout(read_timeout)
            .build()
            .unwrap()
    });
    pingora_failover::OrderedList::new(peers.collect()).unwrap()
}

/// A primary in `mode` and a healthy backup (named so), in that order behind a proxy with
/// `policy` and a read timeout of `read_timeout`.
pub async fn primary_and_backup<R: pingora_failover::RetryPolicy>(
    mode: Mode,
    policy: R,
    read_timeout: Duration,
) -> (Upstream, Upstream, ProxyServer, RequestLog) {
    let primary = Upstream::start("primary", mode).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let list = ordered(&[primary.peer_addr(), backup.peer_addr()], read_timeout);
    let (proxy, log) = start_failover(list, policy).await;
    (primary, backup, proxy, log)
}

/// The outcome of an attempt that failed with `kind`, followed by `verdict`.
pub fn failed(
    kind: pingora_failover::FailureKind,
    verdict: pingora_failover::Verdict,
) -> pingora_failover::Outcome {
    pingora_failover::Outcome::Failed { kind, verdict }
}

/// The outcome of an attempt that failed with `kind`, after which the proxy stopped for `reason`.
pub fn stopped(
    kind: pingora_failover::FailureKind,
    reason: pingora_failover::StopReason,
) -> pingora_failover::Outcome {
    failed(kind, pingora_failover::Verdict::Stopped(reason))
}

/// What a prometheus registry would serve, as text.
#[cfg(feature = "metrics")]
pub fn metrics_text(registry: &prometheus::Registry) -> String {
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    String::from_utf8(text).unwrap()
}

/// Waits until `done` holds, checking every 10 ms for at most 10 s; `what` names it in the panic.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh path in the temp directory, removed when dropped.
pub struct TempPath(pub std::path::PathBuf);

impl TempPath {
    pub fn new(what: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("pf-{}-{n}-{what}", std::process::id())))
    }

    /// A fresh file holding `text`.
    pub fn with_text(what: &str, text: &str) -> Self {
        let path = Self::new(what);
        std::fs::write(&path.0, text).unwrap();
        path
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An upstream that answers `ok` to plain requests and accepts WebSocket upgrades; a tunnel then
/// stays quiet, for `hello_after` before it says `hello` (and closes a second later), or until
/// the client leaves. The count of plain requests it answered comes with its address.
#[allow(dead_code)]
pub async fn upgrading_upstream(hello_after: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = Arc::new(AtomicUsize::new(0));
    let answered = plain.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    head.extend_from_slice(&buf[..n]);
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let request = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                    head.drain(..end + 4);
                    if request.contains("upgrade: websocket") {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\n\r\n",
                            )
                            .await;
                        match hello_after {
                            Some(quiet) => {
                                tokio::time::sleep(quiet).await;
                                let _ = s.write_all(b"hello").await;
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            None => while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {},
                        }
                        return;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    (addr, plain)
}
