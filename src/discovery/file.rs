//! A peers file: one peer per line, read again when it changes or on SIGHUP.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::discovery::{builder, Feed, PeerSettings, Source, SourceService};
use crate::error::ConfigError;
use crate::peer::{Peer, PeerBuilder};
use crate::set::PeerSet;

type OnReload = Arc<dyn Fn(&Result<usize, ConfigError>) + Send + Sync>;

/// A file of peers, one per line: `ADDR [weight=N]`, where `ADDR` is anything
/// [`Peer::new`] takes (`IP:PORT`, `host:PORT`, an SRV name, `unix:/path`). Blank lines and
/// everything after a `#` are ignored.
///
/// ```text
/// # the primary pool
/// 10.0.0.1:8080 weight=3
/// api.internal:8080
/// unix:/run/app.sock   # the local one
/// ```
///
/// [`watch`](Self::watch) reads it again whenever it changes (checked every second by default),
/// and on SIGHUP if [`reload_on_sighup`](Self::reload_on_sighup) is set, and replaces the set's
/// peers without dropping a request. A file that fails to read or parse keeps the old set; the
/// error goes to [`on_reload`](Self::on_reload).
///
/// # Examples
///
/// ```
/// use pingora_failover::PeersFile;
///
/// let file = PeersFile::new("/etc/proxy/peers");
/// let peers = file.parse("127.0.0.1:8080 weight=2\n# spare\n127.0.0.1:8081\n")?;
/// assert_eq!(peers[0].weight(), 2);
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct PeersFile {
    path: PathBuf,
    settings: Option<PeerSettings>,
    on_reload: Option<OnReload>,
    interval: Duration,
    sighup: bool,
}

impl fmt::Debug for PeersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeersFile")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("sighup", &self.sighup)
            .finish_non_exhaustive()
    }
}

impl PeersFile {
    /// The file at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            settings: None,
            on_reload: None,
            interval: Duration::from_secs(1),
            sighup: false,
        }
    }

    /// Settings applied to every peer of the file (timeouts, TLS, ...), before its weight.
    #[must_use]
    pub fn with_peer_settings(
        mut self,
        f: impl Fn(PeerBuilder) -> PeerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.settings = Some(Arc::new(f));
        self
    }

    /// Calls `f` after each reload by [`watch`](Self::watch): the number of peers read, or why
    /// the file was refused (the set then keeps its peers).
    #[must_use]
    pub fn on_reload(
        mut self,
        f: impl Fn(&Result<usize, ConfigError>) + Send + Sync + 'static,
    ) -> Self {
        self.on_reload = Some(Arc::new(f));
        self
    }

    /// How often [`watch`](Self::watch) checks whether the file changed (its modification time
    /// and size).
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Also reloads on SIGHUP. This installs a SIGHUP handler for the process, which then no
    /// longer ends it.
    #[must_use]
    pub fn reload_on_sighup(mut self) -> Self {
        self.sighup = true;
        self
    }

    /// The peers of `text`, in order.
    ///
    /// # Errors
    ///
    /// [`ConfigError::PeersFile`] naming the first bad line, or [`ConfigError::NoPeers`] for a
    /// file with no peer.
    pub fn parse(&self, text: &str) -> Result<Vec<Peer>, ConfigError> {
        let bad = |n: usize, reason: String| ConfigError::PeersFile {
            path: self.path.display().to_string(),
            reason: format!("line {n}: {reason}"),
        };
        let mut peers = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let addr = words.next().unwrap_or_default();
            let mut builder = builder(addr, self.settings.as_ref());
            for word in words {
                let weight = word.strip_prefix("weight=").ok_or_else(|| {
                    bad(i + 1, format!("unknown option {word:?}; expected weight=N"))
                })?;
                let weight = weight
                    .parse()
                    .map_err(|_| bad(i + 1, format!("weight {weight:?} is not a number")))?;
                builder = builder.with_weight(weight);
            }
            peers.push(builder.build().map_err(|e| bad(i + 1, e.to_string()))?);
        }
        if peers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        Ok(peers)
    }

    /// Reads and parses the file.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse), and [`ConfigError::PeersFile`] when the file cannot be read.
    pub fn load(&self) -> Result<Vec<Peer>, ConfigError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| ConfigError::PeersFile {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.parse(&text)
    }

    /// Reads the file and replaces `set`'s peers with its own; the number of peers.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load) and [`PeerSet::replace`]; the set is then unchanged.
    pub fn reload(&self, set: &PeerSet) -> Result<usize, ConfigError> {
        let peers = self.load()?;
        let n = peers.len();
        set.replace(peers)?;
        Ok(n)
    }

    /// Keeps `set` in step with the file, on a thread of its own, until the set is dropped
    /// (a [`SourceService`](crate::SourceService) spawned; in a pingora server, prefer
    /// `SourceService::new("peers-file", file, &set).into_service()`, which starts after
    /// pingora's fork).
    ///
    /// # Errors
    ///
    /// [`ConfigError::PeersFile`] when the watching thread cannot start, and a timeout error
    /// for an interval of 0 or over a day.
    pub fn watch(self, set: &PeerSet) -> Result<(), ConfigError> {
        self.check()?;
        let path = self.path.display().to_string();
        SourceService::new("peers-file", self, set)
            .spawn()
            .map(drop)
            .map_err(|e| ConfigError::PeersFile {
                path,
                reason: e.to_string(),
            })
    }

    fn check(&self) -> Result<(), ConfigError> {
        crate::error::check_timeout(
            "peers file interval",
            self.interval,
            Duration::from_secs(86_400),
        )
        .map(drop)
    }

    /// Reads the file into the feed, and tells [`on_reload`](Self::on_reload).
    fn reload_into(&self, feed: &Feed) {
        // `replace` reports its own failure; a file that cannot be read or parsed is reported
        // here.
        let result = match self.load() {
            Ok(peers) => {
                let n = peers.len();
                feed.replace(peers, None).map(|()| n)
            }
            Err(e) => {
                feed.failed(&e);
                Err(e)
            }
        };
        if let Some(f) = &self.on_reload {
            crate::health::guarded(|| f(&result));
        }
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

/// The file is read when the source starts (in a process forked since, it may have changed),
/// then whenever its modification time or size changes, and on SIGHUP when asked.
#[async_trait]
impl Source for PeersFile {
    async fn run(&self, feed: &Feed) {
        if let Err(e) = self.check() {
            feed.failed(&e);
            feed.stopped().await;
            return;
        }
        // The handler is in place before the source says it runs: a SIGHUP that comes after
        // must not find the process without one (its default action ends the process).
        let mut hup = None;
        if self.sighup {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => hup = Some(signal),
                Err(e) => feed.failed(&format!("no SIGHUP handler: {e}")),
            }
        }
        feed.ready();
        let mut seen = self.stamp();
        self.reload_into(feed);
        let mut tick = tokio::time::interval(self.interval);
        tick.tick().await;
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hup.as_mut()?.recv().await } => true,
                () = feed.stopped() => return,
            };
            let stamp = self.stamp();
            if !signalled && stamp == seen {
                continue;
            }
            seen = stamp;
            self.reload_into(feed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_weights_and_comments() {
        let f = PeersFile::new("peers");
        let peers = f
            .parse("# pool\n\n127.0.0.1:1 weight=3\n  127.0.0.1:2   # spare\nunix:/run/a.sock\n")
            .unwrap();
        let names: Vec<_> = peers
            .iter()
            .map(|p| (p.name().to_owned(), p.weight()))
            .collect();
        assert_eq!(
            names,
            [
                ("127.0.0.1:1".to_owned(), 3),
                ("127.0.0.1:2".to_owned(), 1),
                ("unix:/run/a.sock".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn names_the_bad_line() {
        let f = PeersFile::new("peers");
        for (text, needle) in [
            ("127.0.0.1:1\nnot an address\n", "line 2"),
            ("127.0.0.1:1 weight=x", "line 1: weight \"x\""),
            ("127.0.0.1:1 colour=red", "unknown option"),
            (
                "127.0.0.1:1 weight=0",
                "line 1: peer 127.0.0.1:1: weight must be at least 1",
            ),
        ] {
            let e = f.parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert_eq!(f.parse("# nothing\n"), Err(ConfigError::NoPeers));
    }
}
