//! Choosing the upstream for each attempt of a request.
//!
//! A [`PeerSelector`] is asked once per attempt. It sees an [`Attempt`]: which attempt this is,
//! which peers the request already tried and how they failed, and the request header (for
//! routing by path or header). The stock selectors are [`OrderedList`] (primary, then backups),
//! [`RoundRobin`] (weighted, lock-free), [`HashRing`] (consistent hashing), [`LeastRequest`]
//! (power of two choices on requests in flight), [`PeakEwma`] (power of two choices on learned
//! latency) and [`PriorityTiers`] (groups that traffic spills over in order). The weighted ones
//! take a [`SlowStart`].

mod cursor;
mod ewma;
mod hash;
mod least_request;
mod ordered;
mod p2c;
mod round_robin;
mod slow_start;
mod tiers;

pub use ewma::PeakEwma;
pub use hash::{HashKey, HashRing};
pub use least_request::LeastRequest;
pub use ordered::OrderedList;
pub use round_robin::RoundRobin;
pub use slow_start::SlowStart;
pub use tiers::{PriorityTiers, MAX_TIERS};

use std::net::IpAddr;
use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::ctx::AttemptRecord;
use crate::health::Admission;
use crate::peer::Peer;
use crate::set::PeerSet;

/// Chooses the upstream for one attempt of one request.
///
/// Shared by every request on every thread, so it takes `&self`: keep shared state in atomics.
/// The trait is object-safe; `Box<dyn PeerSelector>` and `Arc<dyn PeerSelector>` are selectors
/// too.
///
/// # Examples
///
/// A selector that sends `/admin` to its own peer and everything else to the rest:
///
/// ```
/// use pingora_failover::{Attempt, Peer, PeerSelector};
///
/// struct AdminSplit { admin: Peer, others: Vec<Peer> }
///
/// impl PeerSelector for AdminSplit {
///     fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
///         let admin = attempt.request().is_some_and(|r| r.uri.path().starts_with("/admin"));
///         let first = admin.then_some(&self.admin).into_iter();
///         let candidates = first.chain(&self.others);
///         let candidates = candidates.clone();
///         // Healthy and untried first; if every untried peer is ejected, the best of them.
///         candidates.clone().find(|p| attempt.admits(p))
///             .or_else(|| attempt.best_untried(candidates))
///             .cloned()
///     }
/// }
/// ```
pub trait PeerSelector: Send + Sync + 'static {
    /// The peer for this attempt, or `None` when no candidate is left.
    ///
    /// A selector should return a peer that [`Attempt::admits`] (untried, and healthy or free
    /// to be probed), and when none does, the best untried one
    /// ([`Attempt::best_untried`]) rather than `None`: an ejected peer may still serve, and
    /// refusing the request is certain to fail it.
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer>;

    /// The set this selector chooses from, when it chooses from one. [`PriorityTiers`] reads a
    /// tier's health from it, so a selector must name its set to be a tier. `None` by default.
    fn peer_set(&self) -> Option<&PeerSet> {
        None
    }
}

impl<T: PeerSelector + ?Sized> PeerSelector for Box<T> {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        (**self).select(attempt)
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        (**self).peer_set()
    }
}

impl<T: PeerSelector + ?Sized> PeerSelector for Arc<T> {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        (**self).select(attempt)
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        (**self).peer_set()
    }
}

/// What a selector knows about the attempt it chooses for.
///
/// Everything here is a query: asking whether a peer [`admits`](Self::admits) the attempt
/// claims nothing, so a selector may ask it of every candidate. The engine claims an ejected
/// peer's single probe slot when it sends the request to the peer the selector returned.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    tried: &'a [AttemptRecord],
    request: Option<&'a RequestHeader>,
    client: Option<IpAddr>,
}

impl<'a> Attempt<'a> {
    /// An attempt that follows the `tried` ones, for `request` when there is one.
    pub fn new(tried: &'a [AttemptRecord], request: Option<&'a RequestHeader>) -> Self {
        Self {
            tried,
            request,
            client: None,
        }
    }

    /// The same attempt, for a request from `client`.
    #[must_use]
    pub fn with_client_ip(mut self, client: Option<IpAddr>) -> Self {
        self.client = client;
        self
    }

    /// The client's IP address, when known.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client
    }

    /// Whether `peer` may take this attempt: not tried by this request, and healthy (not
    /// ejected, passing its checks, not [suspected](crate::PeerHealth::is_suspected) of
    /// stalling), or past its ejection with its probe slot free (this attempt would be its
    /// probe). A pure query.
    pub fn admits(&self, peer: &Peer) -> bool {
        !self.has_tried(peer) && peer.health().admission() != Admission::Refused
    }

    /// Panic mode: of `candidates` this request has not tried, the one that will be healthy
    /// first (shortest ejection left; a peer failing its active check last).
    pub fn best_untried<'p>(
        &self,
        candidates: impl IntoIterator<Item = &'p Peer>,
    ) -> Option<&'p Peer> {
        candidates
            .into_iter()
            .filter(|p| !self.has_tried(p))
            .min_by_key(|p| p.health().wait_ms())
    }

    /// Like [`admits`](Self::admits), but ignoring health when `panic` is set.
    pub(crate) fn takes(&self, peer: &Peer, panic: bool) -> bool {
        if panic {
            !self.has_tried(peer)
        } else {
            self.admits(peer)
        }
    }

    /// The attempt number, starting at 1.
    pub fn number(&self) -> u32 {
        self.tried.len() as u32 + 1
    }

    /// Whether this is a retry (not the first attempt).
    pub fn is_retry(&self) -> bool {
        !self.tried.is_empty()
    }

    /// Whether this request already tried `peer`.
    pub fn has_tried(&self, peer: &Peer) -> bool {
        self.tried.iter().any(|r| r.peer().same(peer))
    }

    /// The earlier attempts of this request, oldest first.
    pub fn tried(&self) -> &'a [AttemptRecord] {
        self.tried
    }

    /// The request being proxied (absent when a selector is driven outside a proxy).
    pub fn request(&self) -> Option<&'a RequestHeader> {
        self.request
    }
}

/// Panic mode's trigger: the share of peers held out by health above which a selector ignores
/// health and spreads traffic over every peer (Envoy's panic threshold), so that the few peers
/// left are not overloaded by everyone's traffic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PanicThreshold(f64);

impl PanicThreshold {
    /// Never, short of every candidate being out.
    pub(crate) const NEVER: Self = Self(1.0);

    pub(crate) fn new(share: f64) -> Result<Self, crate::ConfigError> {
        if (0.0..=1.0).contains(&share) {
            Ok(Self(share))
        } else {
            Err(crate::ConfigError::OutOfRange {
                what: "panic threshold",
                value: share.to_string(),
                range: "0.0..=1.0",
            })
        }
    }

    /// Whether more than the threshold's share of `peers` is held out now.
    pub(crate) fn reached(&self, peers: &[Peer]) -> bool {
        if self.0 >= 1.0 {
            return false;
        }
        let out = peers.iter().filter(|p| !p.health().is_healthy()).count();
        out as f64 > self.0 * peers.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_filter_over_half_open_peers_claims_none_of_them() {
        let rules = crate::OutlierDetection::new();
        let peers = [
            Peer::new("127.0.0.1:1").unwrap(),
            Peer::new("127.0.0.1:2").unwrap(),
        ];
        let mut wait = std::time::Duration::ZERO;
        for p in &peers {
            wait = rules
                .record_failure(p, crate::FailureKind::ConnectRefused)
                .unwrap()
                .time;
        }
        tokio::time::advance(wait).await;
        let attempt = Attempt::new(&[], None);
        assert_eq!(peers.iter().filter(|p| attempt.admits(p)).count(), 2);
        assert_eq!(peers.iter().filter(|p| attempt.admits(p)).count(), 2);
        for p in &peers {
            assert_eq!(p.health().admission(), Admission::Probe);
        }
    }

    #[test]
    fn selector_is_object_safe() {
        let s: Box<dyn PeerSelector> =
            Box::new(OrderedList::new(vec![Peer::new("127.0.0.1:1").unwrap()]).unwrap());
        let shared: Arc<dyn PeerSelector> = Arc::new(s);
        assert!(shared.select(&Attempt::new(&[], None)).is_some());
    }
}
