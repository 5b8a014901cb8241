//! The reference proxy's configuration: a TOML file (`--config`), overridden by flags, checked
//! into the crate's types. Every key is optional except the peers; an unknown key is an error
//! that names it.

use std::path::PathBuf;
use std::time::Duration;

use pingora_failover::{
    AdaptiveTimeouts, ConfigError, FailoverBuilder, HashKey, Hedging, OutlierDetection, Peer,
    PeerBuilder, PeerSet, PeersFile, RecoveryProbe, RetryBudget, SlowStart, SourceService,
    StandardPolicy,
};
use serde::Deserialize;

/// The whole file. Field names are its keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the proxy listens, `IP:PORT`.
    pub listen: Option<String>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// Run in the background (pingora's daemon mode), writing the daemon's process id to this
    /// file.
    pub daemon_pid_file: Option<PathBuf>,
    /// `ordered` (primary, then backups), `round-robin` (weighted), `least-request` (power of
    /// two choices on requests in flight), `ewma` (power of two choices on learned latency) or
    /// `hash` (consistent).
    pub selector: Option<String>,
    /// For `hash`: `header:NAME`, `path`, `uri` or `client-ip`.
    pub hash_key: Option<String>,
    /// For `hash`: bounded loads, a peer taking at most this factor (1.0 to 10.0; 1.25 is
    /// usual) times the average of requests in flight; a hot key spills to the next peers.
    pub hash_balance_factor: Option<f64>,
    /// For `round-robin`, `least-request` and `ewma`: a peer that joins traffic ramps up over
    /// this many milliseconds.
    pub slow_start_ms: Option<u64>,
    /// The upstreams, in priority order.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// A peers file instead (`ADDR [weight=N]` per line), read again on change and on SIGHUP.
    pub peers_file: Option<PathBuf>,
    /// Or peers from etcd: one or more `http://HOST:PORT`, comma-separated (feature `etcd`).
    pub etcd: Option<String>,
    /// The key prefix of the peers in etcd, one key per peer.
    pub etcd_prefix: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub log: Log,
}

/// A peer: `"ADDR"`, or a table with its own settings.
#[derive(Debug, Clone)]
pub enum PeerEntry {
    Addr(String),
    Table(PeerTable),
}

// By hand rather than `#[serde(untagged)]`, which would hide a misspelt key in a peer's table
// behind "did not match any variant".
impl<'de> Deserialize<'de> for PeerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(addr) => Ok(Self::Addr(addr)),
            table @ toml::Value::Table(_) => {
                table.try_into().map(Self::Table).map_err(D::Error::custom)
            }
            other => Err(D::Error::custom(format!(
                "a peer is \"ADDR\" or a table {{ addr = \"ADDR\", ... }}, not a {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTable {
    pub addr: String,
    pub weight: Option<u32>,
    /// The most requests in flight to this peer (over `[limits] max_requests_per_peer`).
    pub max_requests: Option<u32>,
    /// Connect with TLS and send this server name.
    pub tls: Option<String>,
    /// A PEM file of CAs to trust for this peer instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// `h1` (default), `h2` (ALPN over TLS, h2c in clear) or `h2-or-h1` (TLS only).
    pub http: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect_ms: Option<u64>,
    pub read_ms: Option<u64>,
    pub write_ms: Option<u64>,
    /// An overall deadline across all attempts of a request.
    pub deadline_ms: Option<u64>,
    /// `false`: no timeout is learned: connects always get `connect_ms` and response headers
    /// `read_ms`, and waits are not watched (no stall cut, no suspicion from a silent wait, no
    /// warm-up). The keys below must then be left out.
    pub adaptive: Option<bool>,
    /// `false`: connects always get `connect_ms`, instead of being abandoned far past the
    /// peer's learned connect time.
    pub adaptive_connect: Option<bool>,
    /// `false`: response headers always get `read_ms`, instead of a safe request's attempt
    /// (GET, HEAD, OPTIONS, TRACE, without a body) being cut when its header is far later than
    /// the peer or the request typically takes, on evidence that the peer is stuck.
    pub stall_cut: Option<bool>,
    /// The least wait the stall cut allows a header (it also waits 10 times what the peer or
    /// the request typically takes) [default: 50].
    pub stall_cut_ms: Option<u64>,
    /// `true`: the stall cut also moves a request that is not safe to repeat (a POST) when its
    /// peer never received it [default: false].
    pub undelivered_retry: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub max_attempts: Option<u32>,
    /// Statuses that fail over (idempotent requests only, as every retry).
    #[serde(default)]
    pub retry_statuses: Vec<u16>,
    /// Hedges a safe request without a body whose first attempt has no response header after
    /// this many milliseconds: a second peer gets it too, and the first answer wins.
    pub hedge_after_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// `false` turns ejection off.
    pub eject: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub base_ejection_ms: Option<u64>,
    pub max_ejection_ms: Option<u64>,
    /// The largest share of the peers ejected at once, in percent.
    pub max_ejection_percent: Option<u8>,
    /// Ejects a peer failing this share of its requests (percent), once it had
    /// `failure_ratio_min_requests` (default 20) over `failure_ratio_window_ms` (default 10 s).
    pub failure_ratio_percent: Option<u8>,
    pub failure_ratio_min_requests: Option<u32>,
    pub failure_ratio_window_ms: Option<u64>,
    /// How an ejected peer is probed in the background: a path (`GET` it; 200 to 399 pass),
    /// `connect`, or `off` (the first request after the ejection time probes it instead).
    pub recovery_probe: Option<String>,
    pub probe_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The most requests each peer may have in flight; past it, the next peer takes the
    /// request, and with every peer full it gets a 503 at once.
    pub max_requests_per_peer: Option<u32>,
    /// With every peer full, up to this many new requests wait for a place (default: none, a
    /// 503 at once), each for up to `queue_timeout_ms` (default 1000).
    pub queue: Option<usize>,
    pub queue_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// `false` turns the retry budget off.
    pub enabled: Option<bool>,
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Serve prometheus metrics on this `IP:PORT`.
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// One line per request on stdout (default on).
    pub access: Option<bool>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{key}: {reason}")]
    Value { key: &'static str, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn value(key: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid::Value {
        key,
        reason: reason.into(),
    }
}

impl Config {
    pub fn read(path: &str) -> Result<Self, Invalid> {
        let text = std::fs::read_to_string(path).map_err(|source| Invalid::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| Invalid::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    pub fn listen(&self) -> Result<String, Invalid> {
        let listen = self.listen.clone().unwrap_or("127.0.0.1:6188".into());
        check_addr("listen", &listen)?;
        Ok(listen)
    }

    pub fn hash_key(&self) -> Result<HashKey, Invalid> {
        let key = self.hash_key.as_deref().unwrap_or("path");
        let bad = || {
            value(
                "hash_key",
                format!("{key:?}: use header:NAME, path, uri or client-ip"),
            )
        };
        match key {
            "path" => Ok(HashKey::path()),
            "uri" => Ok(HashKey::uri()),
            "client-ip" => Ok(HashKey::client_ip()),
            _ => match key.strip_prefix("header:") {
                Some(name) => HashKey::header(name).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }

    pub fn slow_start(&self) -> Result<Option<SlowStart>, Invalid> {
        let Some(ms) = self.slow_start_ms else {
            return Ok(None);
        };
        match self.selector.as_deref().unwrap_or("ordered") {
            "round-robin" | "least-request" | "ewma" => {
                Ok(Some(SlowStart::new(Duration::from_millis(ms))?))
            }
            other => Err(value(
                "slow_start_ms",
                format!("the {other} selector has no weights to ramp: use round-robin, least-request or ewma"),
            )),
        }
    }

    pub fn threads(&self) -> Result<usize, Invalid> {
        // Far more than is useful: each thread runs a runtime of its own.
        const MAX: usize = 1024;
        match self.threads.unwrap_or(1) {
            0 => Err(value("threads", "must be at least 1")),
            n if n > MAX => Err(value(
                "threads",
                format!("{n} is above the maximum of {MAX}"),
            )),
            n => Ok(n),
        }
    }

    pub fn metrics_listen(&self) -> Result<Option<String>, Invalid> {
        if let Some(addr) = &self.metrics.listen {
            check_addr("metrics.listen", addr)?;
        }
        Ok(self.metrics.listen.clone())
    }

    pub fn access_log(&self) -> bool {
        self.log.access.unwrap_or(true)
    }

    /// The settings every peer gets, then its own.
    fn peer_settings(&self) -> impl Fn(PeerBuilder) -> PeerBuilder + Send + Sync + 'static {
        let t = &self.timeouts;
        let (connect, read, write) = (t.connect_ms, t.read_ms, t.write_ms);
        let max_requests = self.limits.max_requests_per_peer;
        move |mut b| {
            if let Some(n) = max_requests {
                b = b.with_max_requests(n);
            }
            if let Some(ms) = connect {
                b = b.with_connect_timeout(Duration::from_millis(ms));
            }
            if let Some(ms) = read {
                b = b.with_read_timeout(Duration::from_millis(ms));
            }
            if let Some(ms) = write {
                b = b.with_write_timeout(Duration::from_millis(ms));
            }
            b
        }
    }

    /// The peer set, from the list, the peers file or etcd, and the source that keeps it in
    /// step (run by pingora as a background service, after its fork in daemon mode).
    pub fn peer_set(&self) -> Result<(PeerSet, Option<SourceService>), Invalid> {
        let settings = self.peer_settings();
        let given = [
            !self.peers.is_empty(),
            self.peers_file.is_some(),
            self.etcd.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(value("peers", "no peers: give peers, peers_file or etcd")),
            1 => {}
            _ => return Err(value("peers", "give one of peers, peers_file and etcd")),
        }
        if let Some(path) = &self.peers_file {
            let file = PeersFile::new(path)
                .with_peer_settings(settings)
                .reload_on_sighup()
                .on_reload(|result| match result {
                    Ok(n) => eprintln!(
                        "failover_proxy: peers file reloaded, {n} peer{}",
                        if *n == 1 { "" } else { "s" }
                    ),
                    Err(e) => eprintln!("failover_proxy: peers file kept as it was: {e}"),
                });
            let set = PeerSet::new(file.load()?)?;
            let source = SourceService::new("peers-file", file, &set);
            return Ok((set, Some(source)));
        }
        if let Some(urls) = &self.etcd {
            return self.etcd_set(urls, settings);
        }
        let peers = self
            .peers
            .iter()
            .map(|entry| peer(entry, &settings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((PeerSet::new(peers)?, None))
    }

    /// The peers under the etcd prefix now, read before pingora starts (on a runtime that
    /// ends with the read: no thread is left for the fork), and the source that follows them.
    #[cfg(feature = "etcd")]
    fn etcd_set(
        &self,
        urls: &str,
        settings: impl Fn(PeerBuilder) -> PeerBuilder + Send + Sync + 'static,
    ) -> Result<(PeerSet, Option<SourceService>), Invalid> {
        let prefix = self.etcd_prefix.as_deref().unwrap_or_default();
        let etcd = pingora_failover::discovery::etcd::Etcd::new(urls, prefix)?
            .with_peer_settings(settings);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| value("etcd", e.to_string()))?;
        let set = runtime.block_on(etcd.load_set())?;
        let source = SourceService::new("etcd", etcd, &set).on_event(|name, event| {
            use pingora_failover::SourceEvent;
            match event {
                SourceEvent::Updated { .. } => {}
                SourceEvent::Failed { error } => {
                    eprintln!("failover_proxy: {name}: peers kept as they were: {error}")
                }
                SourceEvent::Skipped { entry, error } => {
                    eprintln!("failover_proxy: {name}: {entry} left out: {error}")
                }
                other => eprintln!("failover_proxy: {name}: {other:?}"),
            }
        });
        Ok((set, Some(source)))
    }

    #[cfg(not(feature = "etcd"))]
    fn etcd_set(
        &self,
        _: &str,
        _: impl Fn(PeerBuilder) -> PeerBuilder,
    ) -> Result<(PeerSet, Option<SourceService>), Invalid> {
        Err(value(
            "etcd",
            "built without etcd: run with --features etcd",
        ))
    }

    pub fn policy(&self) -> Result<StandardPolicy, Invalid> {
        let p = &self.policy;
        Ok(StandardPolicy::builder()
            .with_max_attempts(p.max_attempts.unwrap_or(3))
            .with_retry_statuses(p.retry_statuses.iter().copied())
            .build()?)
    }

    /// Pingora's own attempt cap: never below the policy's.
    pub fn max_attempts(&self) -> u32 {
        self.policy.max_attempts.unwrap_or(3)
    }

    /// Deadline, health and budget, on the engine's builder.
    pub fn engine<S, R>(&self, b: FailoverBuilder<S, R>) -> Result<FailoverBuilder<S, R>, Invalid>
    where
        S: pingora_failover::PeerSelector,
        R: pingora_failover::RetryPolicy,
    {
        let mut b = b;
        if let Some(ms) = self.timeouts.deadline_ms {
            b = b.with_deadline(Duration::from_millis(ms));
        }
        if let Some(n) = self.limits.queue {
            // A queue holds requests while every peer is full: without a limit, none ever is.
            // (Peers from a file or etcd may carry their own.)
            let limited = self.limits.max_requests_per_peer.is_some()
                || self.peers.is_empty()
                || self
                    .peers
                    .iter()
                    .any(|p| matches!(p, PeerEntry::Table(t) if t.max_requests.is_some()));
            if !limited {
                return Err(value(
                    "limits.queue",
                    "needs limits.max_requests_per_peer (--max-requests-per-peer) or a peer's \
                     max_requests: a queue holds requests while every peer is at its limit",
                ));
            }
            let ms = self.limits.queue_timeout_ms.unwrap_or(1_000);
            b = b.with_queue(n, Duration::from_millis(ms));
        }
        if let Some(ms) = self.policy.hedge_after_ms {
            b = b.with_hedging(Hedging::after(Duration::from_millis(ms))?);
        }
        let t = &self.timeouts;
        if t.adaptive == Some(false) {
            let set = [
                ("adaptive_connect", t.adaptive_connect.is_some()),
                ("stall_cut", t.stall_cut.is_some()),
                ("stall_cut_ms", t.stall_cut_ms.is_some()),
                ("undelivered_retry", t.undelivered_retry.is_some()),
            ];
            for (key, is_set) in set {
                if is_set {
                    return Err(value(key, "no timeout is learned (adaptive = false)"));
                }
            }
        }
        let mut adaptive = AdaptiveTimeouts::new();
        if t.adaptive_connect == Some(false) {
            adaptive = adaptive.without_connect();
        }
        match (t.stall_cut, t.stall_cut_ms) {
            (Some(false), Some(_)) => {
                return Err(value(
                    "stall_cut_ms",
                    "the stall cut is off (stall_cut = false)",
                ))
            }
            (Some(false), None) => adaptive = adaptive.without_stall_cut(),
            (_, Some(ms)) => {
                adaptive = adaptive.with_stall_cut(10.0, Duration::from_millis(ms))?;
            }
            _ => {}
        }
        match (t.stall_cut, t.undelivered_retry) {
            (Some(false), Some(true)) => {
                return Err(value(
                    "undelivered_retry",
                    "the stall cut is off (stall_cut = false)",
                ))
            }
            (_, Some(true)) => adaptive = adaptive.with_undelivered_retry(),
            _ => {}
        }
        b = match t.adaptive {
            Some(false) => b.without_adaptive_timeouts(),
            _ => b.with_adaptive_timeouts(adaptive),
        };
        let h = &self.health;
        let probing_off = h.eject == Some(false) || h.recovery_probe.as_deref() == Some("off");
        if probing_off && h.probe_interval_ms.is_some() {
            return Err(value(
                "probe_interval_ms",
                "there is no background probe to space out (eject = false or recovery_probe = \"off\")",
            ));
        }
        b = if h.eject == Some(false) {
            b.without_outlier_detection()
        } else {
            let mut rules = OutlierDetection::new();
            if let Some(n) = h.consecutive_failures {
                rules = rules.with_consecutive_failures(n);
            }
            if let Some(ms) = h.base_ejection_ms {
                rules = rules.with_base_ejection(Duration::from_millis(ms));
            }
            if let Some(ms) = h.max_ejection_ms {
                rules = rules.with_max_ejection(Duration::from_millis(ms));
            }
            if let Some(percent) = h.max_ejection_percent {
                rules = rules.with_max_ejection_percent(percent);
            }
            if let Some(percent) = h.failure_ratio_percent {
                rules = rules.with_failure_ratio(
                    percent,
                    h.failure_ratio_min_requests.unwrap_or(20),
                    Duration::from_millis(h.failure_ratio_window_ms.unwrap_or(10_000)),
                );
            }
            let probe = match h.recovery_probe.as_deref() {
                Some("off") => None,
                Some("connect") => Some(RecoveryProbe::connect()),
                Some(path) if path.starts_with('/') => Some(RecoveryProbe::http(path)?),
                Some(other) => {
                    return Err(value(
                        "recovery_probe",
                        format!("{other:?}: use a path (/healthz), connect or off"),
                    ))
                }
                None => Some(RecoveryProbe::default()),
            };
            rules = match (probe, h.probe_interval_ms) {
                (None, _) => rules.without_recovery_probe(),
                (Some(p), None) => rules.with_recovery_probe(p),
                (Some(p), Some(ms)) => {
                    rules.with_recovery_probe(p.with_interval(Duration::from_millis(ms))?)
                }
            };
            b.with_outlier_detection(rules)
        };
        let budget = &self.budget;
        b = if budget.enabled == Some(false) {
            b.without_budget()
        } else if budget.ratio.is_some() || budget.min_per_second.is_some() {
            let ratio = budget.ratio.unwrap_or(0.2);
            let floor = budget.min_per_second.unwrap_or(3);
            b.with_budget(RetryBudget::new(ratio, floor, Duration::from_secs(10))?)
        } else {
            b
        };
        Ok(b)
    }
}

fn peer(
    entry: &PeerEntry,
    settings: &impl Fn(PeerBuilder) -> PeerBuilder,
) -> Result<Peer, Invalid> {
    let t = match entry {
        PeerEntry::Addr(addr) => return Ok(settings(Peer::builder(addr.as_str())).build()?),
        PeerEntry::Table(t) => t,
    };
    let mut b = settings(Peer::builder(t.addr.as_str()));
    if let Some(w) = t.weight {
        b = b.with_weight(w);
    }
    if let Some(n) = t.max_requests {
        b = b.with_max_requests(n);
    }
    if let Some(sni) = &t.tls {
        b = b.with_tls(sni.as_str());
    }
    if let Some(path) = &t.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| value("peers.ca_file", format!("{}: {e}", path.display())))?;
        // Reading PEM needs a TLS feature; without one, build() says which to enable.
        #[allow(deprecated)]
        let with_ca = b.with_ca_pem(pem);
        b = with_ca;
    }
    if let Some(http) = &t.http {
        b = b.with_http_version(http.parse().map_err(|e| value("peers.http", e))?);
    }
    Ok(b.build()?)
}

fn check_addr(key: &'static str, addr: &str) -> Result<(), Invalid> {
    addr.parse::<std::net::SocketAddr>().map(drop).map_err(|_| {
        value(
            key,
            format!("{addr:?} is not IP:PORT (127.0.0.1:6188, [::1]:6188)"),
        )
    })
}
