//! Peers by name: A/AAAA and SRV records, resolved with hickory-resolver on a thread of their own
//! and followed by their TTL.

use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;
use std::time::Duration;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;

use crate::error::{check_timeout, ConfigError};
use crate::peer::{Endpoint, Peer};
use crate::set::{PeerSet, Reply, Resolved, Shared};

/// How a [`PeerSet`] resolves its names, and how often it looks again.
///
/// Names resolve as the system resolves them: the hosts file first (so `localhost:8080` works),
/// then the system's nameservers (`/etc/resolv.conf`), or the nameservers given here. Lookups
/// are asynchronous (hickory-resolver) and run on a thread of the resolver's own, never on the
/// proxy's threads.
///
/// A name is looked up again when its records' TTL runs out, but no sooner than the minimum
/// refresh (a TTL of 0 must not become a query per request) and no later than the maximum (a
/// long TTL must not hide a fleet that changed). When a lookup fails, the set keeps the
/// addresses it had, reports the failure ([`HealthChange::ResolveFailed`], and the metric
/// `failover_resolve_failures_total`), and tries again after the minimum refresh.
///
/// [`HealthChange::ResolveFailed`]: crate::HealthChange::ResolveFailed
///
/// # Default
///
/// - nameservers: the system's
/// - minimum refresh: 1 s
/// - maximum refresh: 60 s
/// - timeout per query: 2 s, with one more try
#[derive(Debug, Clone)]
pub struct Resolver {
    nameservers: Option<Vec<SocketAddr>>,
    min_refresh: Duration,
    max_refresh: Duration,
    timeout: Duration,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::system()
    }
}

impl Resolver {
    /// The hosts file, then the system's nameservers.
    pub fn system() -> Self {
        Self {
            nameservers: None,
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }

    /// The hosts file, then these nameservers (UDP, and TCP for long answers).
    pub fn with_nameservers(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            nameservers: Some(addrs.into_iter().collect()),
            ..Self::system()
        }
    }

    /// The shortest wait between two lookups of a name.
    pub fn with_min_refresh(mut self, d: Duration) -> Self {
        self.min_refresh = d;
        self
    }

    /// The longest wait between two lookups of a name, whatever its TTL.
    pub fn with_max_refresh(mut self, d: Duration) -> Self {
        self.max_refresh = d;
        self
    }

    /// How long one query may take before it is tried again (once).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let hour = Duration::from_secs(3600);
        check_timeout("minimum refresh", self.min_refresh, hour)?;
        check_timeout("maximum refresh", self.max_refresh, hour * 24)?;
        check_timeout("resolver timeout", self.timeout, Duration::from_secs(60))?;
        if self.min_refresh > self.max_refresh {
            return Err(ConfigError::OutOfRange {
                what: "minimum refresh",
                value: format!("{:?}", self.min_refresh),
                range: "at most the maximum refresh",
            });
        }
        if self.nameservers.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::OutOfRange {
                what: "nameservers",
                value: "none".into(),
                range: "at least one",
            });
        }
        Ok(())
    }

    fn build(&self) -> Result<TokioResolver, String> {
        let mut builder = match &self.nameservers {
            None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
            Some(addrs) => {
                let servers: Vec<NameServerConfig> = addrs
                    .iter()
                    .flat_map(|a| {
                        [Protocol::Udp, Protocol::Tcp].map(|p| NameServerConfig::new(*a, p))
                    })
                    .collect();
                let config =
                    ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(servers));
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            }
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = self.timeout;
        opts.attempts = 1;
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        Ok(builder.build())
    }
}

/// The resolver thread of a set: it follows each name of the set until the name leaves the set
/// or the set is dropped.
pub(crate) struct Dns {
    tx: mpsc::UnboundedSender<Watch>,
}

struct Watch {
    set: Weak<Shared>,
    group: u64,
    spec: Peer,
    reply: Option<Reply>,
}

impl Dns {
    pub(crate) fn start(config: Resolver) -> Result<Self, ConfigError> {
        config.check()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConfigError::Resolve {
                name: "(resolver)".into(),
                reason: e.to_string(),
            })?;
        std::thread::Builder::new()
            .name("failover-dns".into())
            .spawn(move || runtime.block_on(run(config, rx)))
            .map_err(|e| ConfigError::Resolve {
                name: "(resolver)".into(),
                reason: e.to_string(),
            })?;
        Ok(Self { tx })
    }

    /// Follows name `group` of `set`; its first outcome goes to `reply`.
    pub(crate) fn watch(&self, set: &PeerSet, group: u64, spec: Peer, reply: Option<Reply>) {
        let watch = Watch {
            set: set.downgrade(),
            group,
            spec,
            reply,
        };
        // The thread only stops once this sender is dropped.
        let _ = self.tx.send(watch);
    }
}

/// Runs until the set (and with it the sender) is dropped.
async fn run(config: Resolver, mut rx: mpsc::UnboundedReceiver<Watch>) {
    let resolver = config.build();
    let mut follows = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            watch = rx.recv() => match (watch, &resolver) {
                (None, _) => return,
                (Some(w), Ok(r)) => {
                    follows.spawn(follow(r.clone(), config.clone(), w));
                }
                (Some(w), Err(reason)) => match w.reply {
                    Some(reply) => reply.send(Err(ConfigError::Resolve {
                        name: w.spec.endpoint().to_string(),
                        reason: format!("no resolver: {reason}"),
                    })),
                    // A name added later: the set keeps what it has, and says so.
                    None => {
                        if let Some(set) = PeerSet::upgrade(&w.set) {
                            set.report_resolve_failure(&w.spec);
                        }
                    }
                },
            },
            Some(_) = follows.join_next(), if !follows.is_empty() => {}
        }
    }
}

/// Resolves one name again and again, as its TTL says, while the set has it.
async fn follow(resolver: TokioResolver, config: Resolver, watch: Watch) {
    let Watch {
        set,
        group,
        spec,
        mut reply,
    } = watch;
    loop {
        // Cached answers would hide a change once the maximum refresh cuts a long TTL short.
        resolver.clear_cache();
        let wait = match resolve(&resolver, &spec).await {
            Ok((resolved, ttl)) => {
                let Some(set) = PeerSet::upgrade(&set) else {
                    return;
                };
                if !set.set_resolved(group, resolved) {
                    return;
                }
                if let Some(reply) = reply.take() {
                    reply.send(Ok(()));
                }
                ttl.clamp(config.min_refresh, config.max_refresh)
            }
            Err(reason) => {
                match reply.take() {
                    Some(reply) => reply.send(Err(ConfigError::Resolve {
                        name: spec.endpoint().to_string(),
                        reason,
                    })),
                    None => match PeerSet::upgrade(&set) {
                        Some(set) => set.report_resolve_failure(&spec),
                        None => return,
                    },
                }
                config.min_refresh
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The addresses a name stands for now (with their SRV weights), in a stable order, and how
/// long the answer holds.
async fn resolve(
    resolver: &TokioResolver,
    spec: &Peer,
) -> Result<(Vec<Resolved>, Duration), String> {
    match spec.endpoint() {
        Endpoint::Name { host, port } => {
            let (ips, ttl) = lookup_ips(resolver, host).await?;
            let addrs = ips
                .into_iter()
                .map(|ip| (SocketAddr::new(ip, *port), None))
                .collect();
            Ok((addrs, ttl))
        }
        Endpoint::Srv(name) => {
            let srv = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut ttl = remaining(srv.as_lookup().valid_until());
            let mut records: Vec<_> = srv
                .iter()
                .map(|r| (r.priority(), r.target().to_ascii(), r.port(), r.weight()))
                .collect();
            // Lower priority first (the order an ordered list tries them in), then by name.
            records.sort();
            let mut addrs: Vec<Resolved> = Vec::new();
            let mut failed = Vec::new();
            for (_, target, port, weight) in records {
                if target == "." {
                    continue;
                }
                // A target that does not resolve (a pod gone, still listed) is left out; the
                // others still count.
                let (ips, t) = match lookup_ips(resolver, &target).await {
                    Ok(found) => found,
                    Err(e) => {
                        failed.push(e);
                        continue;
                    }
                };
                ttl = ttl.min(t);
                for ip in ips {
                    let addr = SocketAddr::new(ip, port);
                    if !addrs.iter().any(|(a, _)| *a == addr) {
                        // SRV weight 0 means "rarely"; the smallest weight here is 1.
                        addrs.push((addr, Some(u32::from(weight).max(1))));
                    }
                }
            }
            if addrs.is_empty() {
                return Err(match failed.first() {
                    Some(e) => format!("no SRV target resolved ({e})"),
                    None => "no SRV record with a target".into(),
                });
            }
            Ok((addrs, ttl))
        }
        Endpoint::Inet(_) | Endpoint::Unix(_) => Err("not a name".into()),
    }
}

async fn lookup_ips(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Duration), String> {
    let found = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let mut ips: Vec<IpAddr> = found.iter().collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(format!("no address for {host}"));
    }
    Ok((ips, remaining(found.valid_until())))
}

fn remaining(until: std::time::Instant) -> Duration {
    until.saturating_duration_since(std::time::Instant::now())
}
