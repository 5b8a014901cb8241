//! The reference failover proxy: a pingora `Server` configured from a TOML file and flags, with
//! an access log line per request and prometheus metrics. It runs until interrupted; SIGINT
//! (Ctrl-C) stops it at once, SIGTERM drains for a second.
//!
//! ```text
//! cargo run --release --example failover_proxy -- \
//!     --listen 127.0.0.1:6188 --peer 127.0.0.1:8080 --peer 127.0.0.1:8081 \
//!     --selector ordered --connect-timeout-ms 400 --read-timeout-ms 300 --max-attempts 3
//! cargo run --release --example failover_proxy -- --config examples/failover_proxy/sample.toml
//! cargo run --release --example failover_proxy --features metrics -- --config FILE --metrics 127.0.0.1:9091
//! cargo run --example failover_proxy -- --config FILE --check   # validate and exit
//! ```
//! `--peer` repeats, in priority order, and takes `IP:PORT`, `host:PORT` (every address of the
//! name, followed as its DNS records change), an SRV name or `unix:/path`. Or `--peers-file
//! PATH`: one peer per line as `ADDR [weight=N]`, read again when it changes and on SIGHUP.
//! Flags override the file. `examples/failover_proxy/sample.toml` documents every key.
//!
//! The binary allocates through mimalloc: BENCHMARKS.md has the measurement behind the choice.
//!
//! Copy it (this directory) into your project with `pingora-failover` (feature `metrics` for
//! `--metrics`, and a TLS feature for HTTPS peers), `clap` (feature `derive`), `serde` (feature
//! `derive`), `toml`, `thiserror` and `mimalloc` as dependencies, plus `pingora-prometheus` for
//! `--metrics`.

mod config;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Parser;
use pingora_failover::pingora::{Error, Server, ServerConf, Session};
use pingora_failover::{
    FailoverCtx, FailoverProxy, HashRing, LeastRequest, OrderedList, Outcome, PeakEwma,
    PeerSelector, RoundRobin, SourceService,
};

use config::{Config, Invalid, PeerEntry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags; each overrides the file's key of the same meaning.
#[derive(Debug, Parser)]
#[command(
    name = "failover_proxy",
    about = "An HTTP proxy that fails over between upstreams"
)]
struct Flags {
    /// A TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Check the configuration, print the address it listens on and its peers, and exit.
    #[arg(long)]
    check: bool,
    /// Where to listen, IP:PORT [default: 127.0.0.1:6188].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// An upstream, in priority order; repeat for more. Replaces the file's peers.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// A peers file, read again on change and on SIGHUP.
    #[arg(long, value_name = "PATH", conflicts_with = "peers")]
    peers_file: Option<String>,
    /// Peers from etcd: http://HOST:PORT, comma-separated for more (feature `etcd`).
    #[arg(long, value_name = "URL", conflicts_with_all = ["peers", "peers_file"])]
    etcd: Option<String>,
    /// The key prefix of the peers in etcd, one key per peer.
    #[arg(long, value_name = "PREFIX")]
    etcd_prefix: Option<String>,
    /// ordered | round-robin | least-request | ewma | hash [default: ordered].
    #[arg(long)]
    selector: Option<String>,
    /// For `--selector hash`: header:NAME | path | uri | client-ip [default: path].
    #[arg(long, value_name = "KEY")]
    hash_key: Option<String>,
    /// For `--selector hash`: bounded loads, a peer taking at most this factor (1.0 to 10.0)
    /// times the average of requests in flight [default: unbounded].
    #[arg(long, value_name = "FACTOR")]
    hash_balance_factor: Option<f64>,
    /// The least wait before a safe request's attempt whose header is late (10 times what the
    /// peer typically takes) is cut while the peer answers nothing else, and retried elsewhere
    /// [default: 50].
    #[arg(long, value_name = "MS", conflicts_with = "no_stall_cut")]
    stall_cut_ms: Option<u64>,
    /// Response headers always get the read timeout: no stall cut.
    #[arg(long)]
    no_stall_cut: bool,
    /// No timeout is learned: connects get the connect timeout and headers the read timeout,
    /// and no wait is watched (no stall cut, no suspicion from a silent wait, no warm-up).
    #[arg(long, conflicts_with_all = ["no_stall_cut", "stall_cut_ms", "undelivered_retry"])]
    fixed_timeouts: bool,
    /// The stall cut also moves a POST (or any request) its peer never received: none of it
    /// acknowledged after a retransmission. Off by default: a copy delayed in the network could
    /// still arrive.
    #[arg(long, conflicts_with = "no_stall_cut")]
    undelivered_retry: bool,
    /// For round-robin, least-request and ewma: a peer that joins traffic (added, or
    /// re-admitted) ramps up over this many milliseconds [default: none].
    #[arg(long, value_name = "MS")]
    slow_start_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    connect_timeout_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    read_timeout_ms: Option<u64>,
    /// Attempts per request, the first included [default: 3].
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// The most requests each peer may have in flight; past it the next peer takes the
    /// request, and with every peer full it gets a 503 at once [default: no limit].
    #[arg(long, value_name = "N")]
    max_requests_per_peer: Option<u32>,
    /// With every peer full, up to N new requests wait for a place, each for up to
    /// --queue-timeout-ms [default: no queue, a 503 at once].
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// How long a queued request waits for a place [default: 1000].
    #[arg(long, value_name = "MS")]
    queue_timeout_ms: Option<u64>,
    /// Worker threads [default: 1].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Run in the background as a daemon, writing its process id to PID_FILE.
    #[arg(long, value_name = "PID_FILE")]
    daemon: Option<PathBuf>,
    /// Hedges a safe request without a body whose first attempt has no response header after
    /// MS: a second peer gets it too, and the first answer wins [default: off].
    #[arg(long, value_name = "MS")]
    hedge_after_ms: Option<u64>,
    /// A status that fails over (repeatable). Replaces the file's list.
    #[arg(long = "retry-status", value_name = "CODE")]
    retry_statuses: Vec<u16>,
    /// Serve prometheus metrics on IP:PORT (needs the `metrics` feature).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// No access log.
    #[arg(long)]
    quiet: bool,
}

impl Flags {
    /// The file's configuration with the flags laid over it.
    fn config(&self) -> Result<Config, Invalid> {
        let mut c = match &self.config {
            Some(path) => Config::read(path)?,
            None => Config::default(),
        };
        macro_rules! over {
            ($flag:expr => $key:expr) => {
                if let Some(v) = $flag.clone() {
                    $key = Some(v);
                }
            };
        }
        over!(self.listen => c.listen);
        over!(self.selector => c.selector);
        over!(self.hash_key => c.hash_key);
        over!(self.hash_balance_factor => c.hash_balance_factor);
        over!(self.slow_start_ms => c.slow_start_ms);
        over!(self.stall_cut_ms => c.timeouts.stall_cut_ms);
        if self.no_stall_cut {
            c.timeouts.stall_cut = Some(false);
            c.timeouts.stall_cut_ms = None;
        } else if self.stall_cut_ms.is_some() {
            c.timeouts.stall_cut = Some(true);
        }
        if self.undelivered_retry {
            c.timeouts.undelivered_retry = Some(true);
        }
        if self.fixed_timeouts {
            c.timeouts.adaptive = Some(false);
            c.timeouts.adaptive_connect = None;
            c.timeouts.stall_cut = None;
            c.timeouts.stall_cut_ms = None;
            c.timeouts.undelivered_retry = None;
        }
        over!(self.connect_timeout_ms => c.timeouts.connect_ms);
        over!(self.read_timeout_ms => c.timeouts.read_ms);
        over!(self.max_attempts => c.policy.max_attempts);
        over!(self.hedge_after_ms => c.policy.hedge_after_ms);
        over!(self.max_requests_per_peer => c.limits.max_requests_per_peer);
        over!(self.queue => c.limits.queue);
        over!(self.queue_timeout_ms => c.limits.queue_timeout_ms);
        over!(self.threads => c.threads);
        over!(self.daemon => c.daemon_pid_file);
        over!(self.metrics => c.metrics.listen);
        if !self.peers.is_empty() {
            c.peers = self.peers.iter().cloned().map(PeerEntry::Addr).collect();
            (c.peers_file, c.etcd) = (None, None);
        }
        if let Some(path) = &self.peers_file {
            c.peers.clear();
            (c.peers_file, c.etcd) = (Some(path.into()), None);
        }
        if let Some(urls) = &self.etcd {
            c.peers.clear();
            (c.peers_file, c.etcd) = (None, Some(urls.clone()));
        }
        over!(self.etcd_prefix => c.etcd_prefix);
        if !self.retry_statuses.is_empty() {
            c.policy.retry_statuses = self.retry_statuses.clone();
        }
        if self.quiet {
            c.log.access = Some(false);
        }
        Ok(c)
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover_proxy: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(flags: &Flags) -> Result<(), Invalid> {
    let config = flags.config()?;
    let (set, source) = config.peer_set()?;
    let names: Vec<_> = set.snapshot().iter().map(|p| p.name().to_owned()).collect();
    let slow = config.slow_start()?;
    macro_rules! ramped {
        ($selector:expr) => {
            match slow {
                Some(slow) => $selector.with_slow_start(slow),
                None => $selector,
            }
        };
    }
    match config.selector.as_deref().unwrap_or("ordered") {
        "ordered" => serve(
            &config,
            flags.check,
            names,
            source,
            OrderedList::from_set(set),
        ),
        "round-robin" => serve(
            &config,
            flags.check,
            names,
            source,
            ramped!(RoundRobin::from_set(set)),
        ),
        "least-request" => serve(
            &config,
            flags.check,
            names,
            source,
            ramped!(LeastRequest::from_set(set)),
        ),
        "ewma" => serve(
            &config,
            flags.check,
            names,
            source,
            ramped!(PeakEwma::from_set(set)),
        ),
        "hash" => serve(
            &config,
            flags.check,
            names,
            source,
            match config.hash_balance_factor {
                Some(factor) => HashRing::from_set(set, config.hash_key()?)
                    .with_bounded_load(factor)
                    .map_err(|e| Invalid::Value {
                        key: "hash_balance_factor",
                        reason: e.to_string(),
                    })?,
                None => HashRing::from_set(set, config.hash_key()?),
            },
        ),
        other => Err(Invalid::Value {
            key: "selector",
            reason: format!("{other:?}: use ordered, round-robin, least-request, ewma or hash"),
        }),
    }
}

fn serve<S: PeerSelector>(
    config: &Config,
    check: bool,
    names: Vec<String>,
    source: Option<SourceService>,
    selector: S,
) -> Result<(), Invalid> {
    let listen = config.listen()?;
    let metrics = config.metrics_listen()?;
    let conf = ServerConf {
        threads: config.threads()?,
        // Pingora counts attempts here; never below the policy's.
        max_retries: config.max_attempts() as usize,
        // SIGTERM drains for a second instead of pingora's default five minutes: it stops
        // taking connections, and requests in flight have that long to end (pingora waits
        // out the whole grace period, then shuts its runtimes down, dropping what still runs;
        // the second below bounds only blocking work).
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        daemon: config.daemon_pid_file.is_some(),
        pid_file: config.daemon_pid_file.as_ref().map_or_else(
            || ServerConf::default().pid_file,
            |p| p.display().to_string(),
        ),
        ..ServerConf::default()
    };
    let engine = config.engine(pingora_failover::Failover::builder(
        selector,
        config.policy()?,
    ))?;
    let engine = with_metrics(engine, metrics.is_some())?
        // Every change of a peer's health, on stderr: ejected (and why), probing, re-admitted.
        .on_health_change(|e| eprintln!("failover_proxy: peer {} {}", e.peer.name(), e.change));
    let mut proxy = FailoverProxy::from_builder(engine)?;
    if config.access_log() {
        proxy = proxy.on_request_done(access_log);
    }
    let mut server = Server::new_with_opt_and_conf(None, conf);
    // Three connects and three liveness checks of each peer as the server starts: a peer down or
    // hung from the start costs the first requests the connect or stall cut, not a timeout.
    let warm_up =
        pingora_core::services::background::background_service("warm-up", proxy.engine().warm_up());
    let mut service = proxy.into_service(&server.configuration)?;
    if check {
        println!("configuration ok: listen {listen}, peers {names:?}");
        return Ok(());
    }
    server.bootstrap();
    service.add_tcp(&listen);
    server.add_service(service);
    server.add_service(warm_up);
    // The peers file or etcd, followed in the process that serves.
    if let Some(source) = source {
        server.add_service(source.into_service());
    }
    if let Some(addr) = &metrics {
        add_metrics_service(&mut server, addr);
    }
    eprintln!("failover_proxy: listening on {listen}, peers {names:?}");
    server.run_forever()
}

#[cfg(feature = "metrics")]
fn with_metrics<S: PeerSelector, R: pingora_failover::RetryPolicy>(
    engine: pingora_failover::FailoverBuilder<S, R>,
    on: bool,
) -> Result<pingora_failover::FailoverBuilder<S, R>, Invalid> {
    if !on {
        return Ok(engine);
    }
    // pingora-prometheus serves the default registry.
    let metrics =
        pingora_failover::Metrics::register(pingora_failover::prometheus::default_registry())
            .map_err(|e| Invalid::Value {
                key: "metrics",
                reason: e.to_string(),
            })?;
    Ok(engine.with_metrics(metrics))
}

#[cfg(not(feature = "metrics"))]
fn with_metrics<S, R>(
    engine: pingora_failover::FailoverBuilder<S, R>,
    on: bool,
) -> Result<pingora_failover::FailoverBuilder<S, R>, Invalid> {
    if on {
        return Err(Invalid::Value {
            key: "metrics",
            reason: "built without metrics: run with --features metrics".into(),
        });
    }
    Ok(engine)
}

#[cfg(feature = "metrics")]
fn add_metrics_service(server: &mut Server, addr: &str) {
    let mut service = pingora_prometheus::prometheus_http_service();
    service.add_tcp(addr);
    server.add_service(service);
}

#[cfg(not(feature = "metrics"))]
fn add_metrics_service(_: &mut Server, _: &str) {}

/// One line per request in nginx's combined log format, with the failover fields added:
/// `client - - [26/Nov/2026:07:21:33 +0000] "METHOD uri HTTP/x" status bytes "referer" "agent"
/// rt=SECONDS upstream=PEER attempts=N outcome=ok|retried|failed failover="#1 ...; #2 ..."`.
/// Quotes and backslashes inside quoted fields are escaped, as nginx does (`\x22`).
fn access_log(session: &Session, error: Option<&Error>, ctx: &FailoverCtx) {
    let req = session.req_header();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let client = session
        .client_addr()
        .map_or("-".to_owned(), |a| a.to_string());
    let attempts = ctx.attempts();
    let upstream = attempts.last().map_or("-", |a| a.peer().name());
    let outcome = match (error, attempts.len()) {
        (Some(_), _) => "failed",
        (None, 0 | 1) => "ok",
        (None, _) => "retried",
    };
    let answered = attempts
        .last()
        .is_some_and(|a| matches!(a.outcome(), Outcome::Responded { .. }));
    let mut line = String::with_capacity(256);
    let _ = write!(
        line,
        "{client} - - [{}] \"{} {} {:?}\" {status} {} \"{}\" \"{}\" rt={:.3} upstream={upstream} \
         attempts={} outcome={outcome}",
        utc_now(),
        req.method,
        Escaped(&req.uri.to_string()),
        req.version,
        session.body_bytes_sent(),
        Escaped(header("referer")),
        Escaped(header("user-agent")),
        ctx.elapsed().as_secs_f64(),
        attempts.len(),
    );
    if let Some(other) = ctx.hedged() {
        let _ = write!(line, " hedged={}", other.name());
    }
    if attempts.len() > 1 || !answered {
        let _ = write!(
            line,
            " failover=\"{}\"",
            Escaped(&ctx.summary().to_string())
        );
    }
    println!("{line}");
}

/// A field inside quotes: `"` and `\` written as nginx writes them (`\x22`, `\x5C`), so a
/// log parser never sees the field end early.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\x22")?,
                '\\' => f.write_str("\\x5C")?,
                c if c.is_control() => write!(f, "\\x{:02X}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The time now as nginx's `$time_local` writes it, in UTC: `26/Nov/2026:07:21:33 +0000`.
fn utc_now() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
