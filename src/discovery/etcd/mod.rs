//! Peers from etcd (feature `etcd`): one key per peer under a prefix, read at one revision and
//! then watched from the next, so that a fleet of proxies watching one prefix follows every
//! change within milliseconds.
//!
//! The source speaks to etcd v3's JSON gateway over HTTP/1.1, on pingora's own HTTP client:
//! the gateway is served on etcd's client port by every etcd since 3.4, and needs neither
//! `protoc` nor a gRPC stack in the build.
//!
//! # The value of a key
//!
//! Each key under the prefix is one peer. Its value is either the peer's address alone
//! (`10.0.0.1:8080`, anything [`Peer::new`] takes), or a JSON object:
//!
//! ```json
//! {"addr": "10.0.0.1:8443", "weight": 3, "tier": 1, "tls": "api.internal",
//!  "http": "h2", "max_requests": 200}
//! ```
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `addr` | the address ([`Peer::new`]) | required |
//! | `weight` | [`PeerBuilder::with_weight`] | 1 |
//! | `tier` | which source takes it ([`Etcd::with_tier`]) | 0 |
//! | `tls` | the TLS server name ([`PeerBuilder::with_tls`]) | plain TCP |
//! | `http` | `h1`, `h2` or `h2-or-h1` ([`PeerBuilder::with_http_version`]) | `h1` |
//! | `max_requests` | [`PeerBuilder::with_max_requests`] | the source's settings |
//!
//! A value that is not one of these ([`ConfigError::InvalidEntry`]), or a peer the crate cannot
//! use (a bad address, a weight of 0: the peer's own error), is left out and reported as
//! [`SourceEvent::Skipped`](crate::SourceEvent::Skipped) with its key; the other keys are taken.
//!
//! # Consistency
//!
//! - The source reads every key under the prefix at one revision (in pages of 1,000, each at
//!   the first page's revision), replaces the set's peers with them, then watches the prefix
//!   from the next revision; every batch of changes etcd sends becomes one update of the set.
//! - A watch that breaks (etcd restarts, the connection drops, `watch_idle` passes without a
//!   word) or that starts before the last compaction is followed by a full read again, after a
//!   back-off of 100 ms doubling to 5 s (reset by a success); the next endpoint is tried first.
//! - While etcd cannot be read, and when the prefix holds no usable peer, the set keeps its
//!   peers, and the failure is reported ([`SourceEvent::Failed`](crate::SourceEvent::Failed)).
//! - Peers that stay keep their health across every update, as with every source.

mod gateway;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::discovery::{builder, Feed, PeerSettings, Source};
use crate::error::{check_timeout, ConfigError};
use crate::peer::{HttpVersion, Peer, PeerBuilder};
use crate::set::PeerSet;
use gateway::{Gateway, Watched};

/// The first pause after a failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Peers under a key prefix of etcd, as a [`Source`].
///
/// # Examples
///
/// ```no_run
/// use pingora_failover::discovery::etcd::Etcd;
/// use pingora_failover::{PeerSet, RoundRobin, SourceService};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = Etcd::new("http://127.0.0.1:2379", "/services/api/")?;
/// let set = etcd.load_set().await?; // the peers now
/// let selector = RoundRobin::from_set(set.clone());
/// // Then kept in step, as a pingora background service:
/// let service = SourceService::new("etcd", etcd, &set).into_service();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    prefix: String,
    tier: u32,
    settings: Option<PeerSettings>,
    timeout: Duration,
    watch_idle: Duration,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// The peers under `prefix` of the etcd at `urls`: one or more `http://HOST:PORT`,
    /// separated by commas, tried in turn.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Etcd`] for a URL that is not `http://HOST:PORT`, and for an empty
    /// prefix (every key of the cluster).
    pub fn new(urls: &str, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let prefix = prefix.into();
        let bad = |endpoint: &str, reason: &str| ConfigError::Etcd {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        if prefix.is_empty() {
            return Err(bad(urls, "the key prefix is empty: give the peers' prefix"));
        }
        let endpoints = urls
            .split(',')
            .map(str::trim)
            .map(|url| {
                let host = url.strip_prefix("http://").ok_or_else(|| {
                    bad(
                        url,
                        "not an http:// URL (the JSON gateway is served over http)",
                    )
                })?;
                let host = host.trim_end_matches('/');
                match host.rsplit_once(':') {
                    Some((h, port))
                        if !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                    {
                        Ok(host.to_owned())
                    }
                    _ => Err(bad(url, "give the host and the port: http://HOST:PORT")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            endpoints,
            prefix,
            tier: 0,
            settings: None,
            timeout: Duration::from_secs(5),
            watch_idle: Duration::from_secs(60),
        })
    }

    /// Takes only the keys whose `tier` is `tier` (0 by default): one source per tier, one set
    /// per tier, and [`PriorityTiers`](crate::PriorityTiers) over the sets.
    #[must_use]
    pub fn with_tier(mut self, tier: u32) -> Self {
        self.tier = tier;
        self
    }

    /// Settings applied to every peer of the source (timeouts, TLS, ...), before the key's own.
    #[must_use]
    pub fn with_peer_settings(
        mut self,
        f: impl Fn(PeerBuilder) -> PeerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.settings = Some(std::sync::Arc::new(f));
        self
    }

    /// How long a connect or a read of etcd may take (5 s by default, at most 10 minutes).
    ///
    /// # Errors
    ///
    /// A timeout error for 0 or over 10 minutes.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeout = check_timeout("etcd timeout", timeout, Duration::from_secs(600))?;
        Ok(self)
    }

    /// How long a watch may stay silent before it is dropped and everything read again (60 s
    /// by default, at most a day). etcd sends a progress notification on a quiet watch every
    /// 10 minutes unless its `--experimental-watch-progress-notify-interval` says otherwise.
    ///
    /// # Errors
    ///
    /// A timeout error for 0 or over a day.
    pub fn with_watch_idle(mut self, idle: Duration) -> Result<Self, ConfigError> {
        self.watch_idle = check_timeout("etcd watch idle", idle, Duration::from_secs(86_400))?;
        Ok(self)
    }

    /// The peer a key's `value` gives: `None` when it belongs to another tier.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidEntry`] for a value that is neither an address nor a peer object,
    /// and the peer's own errors ([`Peer::new`], [`PeerBuilder::build`]).
    pub fn parse_entry(&self, key: &str, value: &[u8]) -> Result<Option<Peer>, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidEntry {
            entry: key.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(value)
            .map_err(|_| invalid("the value is not UTF-8".into()))?
            .trim();
        if !text.starts_with('{') {
            if self.tier != 0 {
                return Ok(None);
            }
            return builder(text, self.settings.as_ref()).build().map(Some);
        }
        let entry: Entry = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if entry.tier.unwrap_or(0) != self.tier {
            return Ok(None);
        }
        let mut b = builder(entry.addr, self.settings.as_ref());
        if let Some(w) = entry.weight {
            b = b.with_weight(w);
        }
        if let Some(n) = entry.max_requests {
            b = b.with_max_requests(n);
        }
        if let Some(sni) = entry.tls {
            b = b.with_tls(sni);
        }
        if let Some(http) = entry.http {
            let version: HttpVersion = http.parse().map_err(|e| invalid(format!("http {e}")))?;
            b = b.with_http_version(version);
        }
        b.build().map(Some)
    }

    /// Every usable peer under the prefix now, in key order, and etcd's revision.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Etcd`] when no endpoint answers, and [`ConfigError::NoPeers`] when the
    /// prefix holds no usable peer (bad keys are left out).
    pub async fn load(&self) -> Result<(Vec<Peer>, u64), ConfigError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.gateway(endpoint).range(&self.prefix).await {
                Ok((kvs, revision)) => {
                    let peers = Entries::read(self, kvs, None).peers();
                    if peers.is_empty() {
                        return Err(ConfigError::NoPeers);
                    }
                    return Ok((peers, revision));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ConfigError::Etcd {
            endpoint: self.endpoints.join(","),
            reason: last.unwrap_or_default(),
        })
    }

    /// A set of the peers under the prefix now.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load) and [`PeerSet::new`].
    pub async fn load_set(&self) -> Result<PeerSet, ConfigError> {
        PeerSet::new(self.load().await?.0)
    }

    fn gateway(&self, endpoint: &str) -> Gateway {
        Gateway::new(endpoint.to_owned(), self.timeout)
    }

    /// One read and the watch after it, on `endpoint`, until the watch breaks: the failure.
    async fn follow(&self, endpoint: &str, feed: &Feed, backoff: &mut Duration) -> String {
        let gateway = self.gateway(endpoint);
        let (kvs, revision) = match gateway.range(&self.prefix).await {
            Ok(read) => read,
            Err(e) => return e,
        };
        let mut entries = Entries::read(self, kvs, Some(feed));
        // An empty prefix keeps the set (reported by the feed), and the watch goes on.
        let _ = feed.replace(entries.peers(), Some(revision));
        *backoff = MIN_BACKOFF;
        let start = revision + 1;
        let mut watch = match gateway.watch(&self.prefix, start, self.watch_idle).await {
            Ok(watch) => watch,
            Err(e) => return e,
        };
        loop {
            match watch.next().await {
                Ok(Watched::Changes { revision, changes }) => {
                    for (key, value) in changes {
                        match value {
                            Some(value) => entries.put(self, &key, &value, Some(feed)),
                            None => {
                                entries.0.remove(&key);
                            }
                        }
                    }
                    let _ = feed.replace(entries.peers(), Some(revision));
                }
                Ok(Watched::Progress { revision }) => feed.unchanged(Some(revision)),
                Ok(Watched::Compacted {
                    revision: compacted,
                }) => {
                    return format!(
                        "the watch from revision {start} is older than the compaction at \
                         {compacted}: reading everything again"
                    )
                }
                Err(e) => return e,
            }
        }
    }
}

/// The source reads and watches until it is to stop, moving to the next endpoint after each
/// failure.
#[async_trait]
impl Source for Etcd {
    async fn run(&self, feed: &Feed) {
        let mut backoff = MIN_BACKOFF;
        for endpoint in self.endpoints.iter().cycle() {
            let failure = tokio::select! {
                failure = self.follow(endpoint, feed, &mut backoff) => failure,
                () = feed.stopped() => return,
            };
            feed.failed(&failure);
            if !feed.sleep(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The value of a key, as a peer object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    addr: String,
    weight: Option<u32>,
    tier: Option<u32>,
    tls: Option<String>,
    http: Option<String>,
    max_requests: Option<u32>,
}

/// The usable peers under the prefix, by key.
#[derive(Default)]
struct Entries(BTreeMap<String, Peer>);

impl Entries {
    /// The entries of a whole read (reporting the keys left out to `feed`).
    fn read(etcd: &Etcd, kvs: Vec<gateway::Kv>, feed: Option<&Feed>) -> Self {
        let mut entries = Self::default();
        for kv in kvs {
            entries.put(etcd, &kv.key, &kv.value, feed);
        }
        entries
    }

    /// Takes the key's value, or leaves the key out (reporting why to `feed`).
    fn put(&mut self, etcd: &Etcd, key: &str, value: &[u8], feed: Option<&Feed>) {
        match etcd.parse_entry(key, value) {
            Ok(Some(peer)) => {
                self.0.insert(key.to_owned(), peer);
            }
            Ok(None) => {
                self.0.remove(key);
            }
            Err(e) => {
                self.0.remove(key);
                if let Some(feed) = feed {
                    feed.skipped(key, &e);
                }
            }
        }
    }

    /// The peers in key order, each address once (the first key that names it).
    fn peers(&self) -> Vec<Peer> {
        let mut seen = std::collections::HashSet::new();
        self.0
            .values()
            .filter(|p| seen.insert(p.id()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_prefixes_are_checked() {
        let e = Etcd::new("http://127.0.0.1:2379, http://127.0.0.1:22379/", "/p/").unwrap();
        assert_eq!(e.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        for (urls, prefix) in [
            ("https://127.0.0.1:2379", "/p/"),
            ("http://127.0.0.1", "/p/"),
            ("http://127.0.0.1:0", "/p/"),
            ("http://127.0.0.1:2379", ""),
        ] {
            assert!(
                matches!(Etcd::new(urls, prefix), Err(ConfigError::Etcd { .. })),
                "{urls} {prefix}"
            );
        }
    }

    #[test]
    fn a_value_is_an_address_or_a_peer_object() {
        let e = Etcd::new("http://127.0.0.1:2379", "/p/").unwrap();
        let p = e.parse_entry("/p/a", b"127.0.0.1:8080").unwrap().unwrap();
        assert_eq!((p.name(), p.weight()), ("127.0.0.1:8080", 1));
        let p = e
            .parse_entry("/p/b", br#"{"addr": "127.0.0.1:8081", "weight": 4}"#)
            .unwrap()
            .unwrap();
        assert_eq!((p.name(), p.weight()), ("127.0.0.1:8081", 4));
        // Another tier's peer is not this source's.
        let backup = br#"{"addr": "127.0.0.1:8082", "tier": 1}"#;
        assert!(e.parse_entry("/p/c", backup).unwrap().is_none());
        assert!(e
            .with_tier(1)
            .parse_entry("/p/c", backup)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_bad_value_is_a_typed_error_naming_its_key() {
        let e = Etcd::new("http://127.0.0.1:2379", "/p/").unwrap();
        for (value, want) in [
            (&b"{not json"[..], "InvalidEntry"),
            (
                br#"{"addr": "127.0.0.1:1", "colour": "red"}"#,
                "InvalidEntry",
            ),
            (br#"{"addr": "127.0.0.1:1", "http": "h3"}"#, "InvalidEntry"),
            (br#"{"addr": "127.0.0.1:1", "weight": "x"}"#, "InvalidEntry"),
            (b"\xff", "InvalidEntry"),
            (b"not an address", "InvalidAddress"),
            (br#"{"addr": "127.0.0.1:1", "weight": 0}"#, "ZeroWeight"),
        ] {
            let err = e.parse_entry("/p/bad", value).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{err:?}");
            if want == "InvalidEntry" {
                assert!(err.to_string().contains("/p/bad"), "{err}");
            }
        }
    }
}
