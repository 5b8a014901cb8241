//! Prometheus metrics (feature `metrics`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::cell::gate::Tally;
use crate::cell::membership::Accounts;
#[cfg(doc)]
use crate::classify::FailureKind;
use crate::ctx::Outcome;
use crate::peer::Peer;

/// Every `outcome` label of `failover_attempts_total`: `ok`, `pending` and each
/// [`FailureKind::label`].
const OUTCOMES: [&str; 21] = [
    "ok",
    "pending",
    "connect_refused",
    "connect_timeout",
    "connect_no_route",
    "tls_handshake",
    "tls_handshake_timeout",
    "connect_other",
    "local",
    "unprocessed",
    "protocol",
    "header_timeout",
    "body_timeout",
    "reused_connection_closed",
    "status",
    "grpc_status",
    "write_timeout",
    "io",
    "malformed",
    "downstream",
    "other",
];

/// The engine's prometheus counters and gauges.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `failover_attempts_total` | counter | `peer`, `outcome` (`ok`, or [`FailureKind::label`]) |
/// | `failover_retries_total` | counter | |
/// | `failover_hedges_total` | counter | (second attempts sent by [`Hedging`](crate::Hedging)) |
/// | `failover_queued_total` | counter | `outcome` (`placed`, `full`, `timeout`: the queue of [`FailoverBuilder::with_queue`](crate::FailoverBuilder::with_queue)) |
/// | `failover_budget_refusals_total` | counter | |
/// | `failover_ejections_total` | counter | `peer` |
/// | `failover_ejected_peers` | gauge | |
/// | `failover_peers` | gauge | (the peers of the sets given these metrics) |
/// | `failover_peer_changes_total` | counter | `change` (`added`, `removed`) |
/// | `failover_resolve_failures_total` | counter | `name` |
/// | `failover_source_updates_total` | counter | `source` (the name given to its [`SourceService`](crate::SourceService)) |
/// | `failover_source_failures_total` | counter | `source` (the set kept its peers) |
/// | `failover_source_skipped_total` | counter | `source` (entries left out) |
/// | `failover_source_revision` | gauge | `source` (its revision or serial at the last update) |
/// | `failover_source_last_success_seconds` | gauge | `source` (Unix time of the last update) |
///
/// The per-peer series and the ejected-peers gauge follow the peers' sets: when a peer leaves
/// the last set that held it, its ejection stops counting and its series are removed, so that a
/// fleet whose addresses change with every deploy keeps a bounded number of series. (A request
/// already on its way to a departed peer is not counted by peer.) A peer used without a set
/// keeps its series.
///
/// Register them on `prometheus::default_registry()` to have them served by pingora's
/// prometheus service, or on a registry of your own.
#[derive(Debug, Clone)]
pub struct Metrics {
    attempts: IntCounterVec,
    retries: IntCounter,
    hedges: IntCounter,
    queued: IntCounterVec,
    budget_refusals: IntCounter,
    ejections: IntCounterVec,
    ejected: IntGauge,
    peers: IntGauge,
    peer_changes: IntCounterVec,
    resolve_failures: IntCounterVec,
    source_updates: IntCounterVec,
    source_failures: IntCounterVec,
    source_skipped: IntCounterVec,
    source_revision: IntGaugeVec,
    source_last_success: IntGaugeVec,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    ///
    /// # Errors
    ///
    /// The registry's error when a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            attempts: IntCounterVec::new(
                Opts::new("failover_attempts_total", "Attempts by peer and outcome."),
                &["peer", "outcome"],
            )?,
            retries: IntCounter::new("failover_retries_total", "Retries made.")?,
            hedges: IntCounter::new(
                "failover_hedges_total",
                "Second attempts sent for hedged requests.",
            )?,
            queued: IntCounterVec::new(
                Opts::new(
                    "failover_queued_total",
                    "Requests that waited for a place on a full pool, by how it ended.",
                ),
                &["outcome"],
            )?,
            budget_refusals: IntCounter::new(
                "failover_budget_refusals_total",
                "Retries refused because the retry budget was spent.",
            )?,
            ejections: IntCounterVec::new(
                Opts::new("failover_ejections_total", "Peer ejections by peer."),
                &["peer"],
            )?,
            ejected: IntGauge::new("failover_ejected_peers", "Peers currently ejected.")?,
            peers: IntGauge::new("failover_peers", "Peers in the peer sets.")?,
            peer_changes: IntCounterVec::new(
                Opts::new(
                    "failover_peer_changes_total",
                    "Peers added to or removed from a set.",
                ),
                &["change"],
            )?,
            resolve_failures: IntCounterVec::new(
                Opts::new(
                    "failover_resolve_failures_total",
                    "Lookups of a peer name that failed (the set kept its peers).",
                ),
                &["name"],
            )?,
            source_updates: IntCounterVec::new(
                Opts::new(
                    "failover_source_updates_total",
                    "Updates of a peer set from its source.",
                ),
                &["source"],
            )?,
            source_failures: IntCounterVec::new(
                Opts::new(
                    "failover_source_failures_total",
                    "Failures of a source (its set kept its peers).",
                ),
                &["source"],
            )?,
            source_skipped: IntCounterVec::new(
                Opts::new(
                    "failover_source_skipped_total",
                    "Entries of a source left out as unusable.",
                ),
                &["source"],
            )?,
            source_revision: IntGaugeVec::new(
                Opts::new(
                    "failover_source_revision",
                    "A source's revision or serial at its last update.",
                ),
                &["source"],
            )?,
            source_last_success: IntGaugeVec::new(
                Opts::new(
                    "failover_source_last_success_seconds",
                    "Unix time of a source's last update.",
                ),
                &["source"],
            )?,
        };
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.hedges.clone()))?;
        registry.register(Box::new(m.queued.clone()))?;
        registry.register(Box::new(m.budget_refusals.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        registry.register(Box::new(m.ejected.clone()))?;
        registry.register(Box::new(m.peers.clone()))?;
        registry.register(Box::new(m.peer_changes.clone()))?;
        registry.register(Box::new(m.resolve_failures.clone()))?;
        registry.register(Box::new(m.source_updates.clone()))?;
        registry.register(Box::new(m.source_failures.clone()))?;
        registry.register(Box::new(m.source_skipped.clone()))?;
        registry.register(Box::new(m.source_revision.clone()))?;
        registry.register(Box::new(m.source_last_success.clone()))?;
        Ok(m)
    }

    pub(crate) fn attempt(&self, peer: &Peer, outcome: &Outcome) {
        peer.health().keep_accounts(self);
        if peer.health().is_departed() {
            return;
        }
        let label = match outcome {
            Outcome::Responded { .. } => "ok",
            Outcome::Failed { kind, .. } => kind.label(),
            _ => "pending",
        };
        self.attempts.with_label_values(&[peer.name(), label]).inc();
    }

    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn budget_refused(&self) {
        self.budget_refusals.inc();
    }

    pub(crate) fn hedge(&self) {
        self.hedges.inc();
    }

    pub(crate) fn queued(&self, outcome: &str) {
        self.queued.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn ejected(&self, peer: &Peer) {
        if peer.health().is_departed() {
            return;
        }
        self.ejections.with_label_values(&[peer.name()]).inc();
    }

    /// Moves the ejected-peers gauge; health calls it at the right moment of its transitions
    /// (see `cell::gate::Tally`), so that it never goes below zero.
    pub(crate) fn ejected_peers(&self, delta: i64) {
        self.ejected.add(delta);
    }

    /// A set changed: `added` and `removed` peers, `total` now.
    pub(crate) fn set_changed(&self, added: usize, removed: usize, total: usize) {
        self.peer_changes
            .with_label_values(&["added"])
            .inc_by(added as u64);
        self.peer_changes
            .with_label_values(&["removed"])
            .inc_by(removed as u64);
        self.peers.add(added as i64 - removed as i64);
        let _ = total;
    }

    /// A set of `total` peers was dropped: they no longer count as peers of a set (nor as
    /// changes).
    pub(crate) fn set_dropped(&self, total: usize) {
        self.peers.sub(total as i64);
    }

    #[cfg(feature = "dns")]
    pub(crate) fn resolve_failed(&self, name: &Peer) {
        self.resolve_failures
            .with_label_values(&[name.name()])
            .inc();
    }
}

/// A source's reports.
impl Metrics {
    pub(crate) fn source_updated(
        &self,
        source: &str,
        at: std::time::SystemTime,
        revision: Option<u64>,
    ) {
        self.source_updates.with_label_values(&[source]).inc();
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.source_last_success
            .with_label_values(&[source])
            .set(i64::try_from(secs).unwrap_or(i64::MAX));
        if let Some(r) = revision {
            self.source_revision
                .with_label_values(&[source])
                .set(i64::try_from(r).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn source_failed(&self, source: &str) {
        self.source_failures.with_label_values(&[source]).inc();
    }

    pub(crate) fn source_skipped(&self, source: &str) {
        self.source_skipped.with_label_values(&[source]).inc();
    }
}

/// The ejected-peers gauge.
impl Tally for Metrics {
    fn add(&self, delta: i64) {
        self.ejected_peers(delta);
    }
}

/// A peer keeps the metrics that counted it, so that its departure from its sets settles them.
impl Accounts for Metrics {
    fn keep(&self) -> Option<Box<dyn Accounts>> {
        Some(Box::new(self.clone()))
    }

    fn forget(&self, name: &str) {
        // A series never made is not an error worth reporting.
        let _ = self.ejections.remove_label_values(&[name]);
        for outcome in OUTCOMES {
            let _ = self.attempts.remove_label_values(&[name, outcome]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::FailureKind;

    #[test]
    fn every_outcome_label_is_known() {
        for kind in [
            FailureKind::ConnectRefused,
            FailureKind::ConnectTimeout,
            FailureKind::ConnectNoRoute,
            FailureKind::TlsHandshake,
            FailureKind::TlsHandshakeTimeout,
            FailureKind::ConnectOther,
            FailureKind::Local,
            FailureKind::Unprocessed,
            FailureKind::Protocol,
            FailureKind::HeaderTimeout,
            FailureKind::BodyTimeout,
            FailureKind::ReusedConnectionClosed,
            FailureKind::Status(503),
            FailureKind::GrpcStatus(14),
            FailureKind::WriteTimeout,
            FailureKind::Io,
            FailureKind::Malformed,
            FailureKind::Downstream,
            FailureKind::Other,
        ] {
            assert!(OUTCOMES.contains(&kind.label()), "{kind:?}");
        }
    }
}
