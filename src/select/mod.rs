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
#[cfg(feature = "discovery")]
mod load_balancer;
mod ordered;
mod p2c;
mod round_robin;
mod slow_start;
mod tiers;

pub use ewma::{PeakEwma, PeakLatency};
pub use hash::{HashKey, HashRing};
pub use least_request::{InFlight, LeastRequest};
#[cfg(feature = "discovery")]
pub use load_balancer::LoadBalancerSelector;
pub use ordered::OrderedList;
pub use p2c::{Cost, TwoChoices};
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

    /// Whether `peer` may take this attempt: not tried by this request, below its limit of
    /// requests in flight ([`Peer::is_at_limit`]), and healthy (not ejected, passing its
    /// checks, not [suspected](crate::PeerHealth::is_suspected) of stalling), or past its
    /// ejection with its probe slot free (this attempt would be its probe). A pure query.
    pub fn admits(&self, peer: &Peer) -> bool {
        !self.has_tried(peer)
            && peer.health().admission() != Admission::Refused
            && !peer.is_at_limit()
    }

    /// Panic mode's pick when no candidate [`admits`](Self::admits) the attempt: one of
    /// `candidates` this request has not tried and that are below their limit of requests in
    /// flight, drawn at random among those that will take
    /// requests again soonest: first a peer that is out for the moment only (its probe slot
    /// taken, or suspected of stalling), then an ejected one, then one failing its active check.
    ///
    /// At random, because every request on every thread asks at once: a pick by order, or by
    /// the least ejection time left, would send them all to one peer (Envoy's panic mode spreads
    /// too). `None` when every candidate was tried, or when one is healthy but
    /// [`full`](Self::full): the request is shed then, not sent to a peer that is out.
    pub fn best_untried<'p>(
        &self,
        candidates: impl IntoIterator<Item = &'p Peer>,
    ) -> Option<&'p Peer> {
        let mut spread = Spread::new();
        for p in candidates.into_iter() {
            if self.full(p) {
                // A healthy peer that is only full: shed the request, do not panic.
                return None;
            }
            if self.untried_with_room(p) {
                spread.offer(out_for(p), p);
            }
        }
        spread.pick()
    }

    /// One of `candidates` this request has not tried, drawn uniformly, whatever their health:
    /// how a selector past its [`PanicThreshold`] spreads its requests when it has no order of
    /// its own to walk ([`OrderedList`] does). `None` when every candidate was tried, or one is
    /// [`full`](Self::full).
    pub fn any_untried<'p>(
        &self,
        candidates: impl IntoIterator<Item = &'p Peer>,
    ) -> Option<&'p Peer> {
        let mut spread = Spread::new();
        for p in candidates.into_iter() {
            if self.full(p) {
                return None;
            }
            if self.untried_with_room(p) {
                spread.offer(0, p);
            }
        }
        spread.pick()
    }

    /// Whether `peer` may take this attempt: [`admits`](Self::admits) when `panic` is false; in
    /// panic mode (a [`PanicThreshold`] [reached](PanicThreshold::reached)), merely untried,
    /// since health is ignored then. A pure query.
    pub fn takes(&self, peer: &Peer, panic: bool) -> bool {
        if panic {
            self.untried_with_room(peer)
        } else {
            self.admits(peer)
        }
    }

    /// Whether `peer` would take this attempt but for its limit of requests in flight: not
    /// tried, healthy, and full. Panic mode yields to it: a pool whose healthy peers are full
    /// sheds the request (a 503) rather than sending it to a peer that is out.
    pub fn full(&self, peer: &Peer) -> bool {
        peer.is_at_limit()
            && !self.has_tried(peer)
            && peer.health().admission() != Admission::Refused
    }

    /// Not tried by this request, and below its limit of requests in flight: what panic mode
    /// asks, health aside.
    fn untried_with_room(&self, peer: &Peer) -> bool {
        !self.has_tried(peer) && !peer.is_at_limit()
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

/// How long until `p` takes requests again, coarsely: 0 for a peer out for the moment only, 1
/// for an ejected peer, 2 for one failing its active check.
fn out_for(p: &Peer) -> u8 {
    match p.health().wait_ms() {
        0 => 0,
        u64::MAX => 2,
        _ => 1,
    }
}

/// A draw of one item, uniformly, among those offered with the lowest rank so far (reservoir
/// sampling: one pass, nothing stored but the pick).
#[derive(Debug)]
struct Spread<T> {
    pick: Option<(u8, T)>,
    seen: u64,
}

impl<T> Spread<T> {
    fn new() -> Self {
        Self {
            pick: None,
            seen: 0,
        }
    }

    /// Offers `item` of rank `rank` (lower is better).
    fn offer(&mut self, rank: u8, item: T) {
        match &self.pick {
            Some((best, _)) if rank > *best => {}
            Some((best, _)) if rank == *best => {
                self.seen += 1;
                if crate::rng::shared().below(self.seen) == 0 {
                    self.pick = Some((rank, item));
                }
            }
            _ => {
                self.seen = 1;
                self.pick = Some((rank, item));
            }
        }
    }

    /// The item drawn.
    fn pick(self) -> Option<T> {
        self.pick.map(|(_, item)| item)
    }
}

/// Panic mode's trigger: the share of peers held out by health above which a selector ignores
/// health and spreads traffic over every peer (Envoy's panic threshold), so that the few peers
/// left are not overloaded by everyone's traffic.
///
/// A selector asks [`reached`](Self::reached) once per selection, then
/// [`Attempt::takes`] of each candidate with the answer.
///
/// # Examples
///
/// ```
/// use pingora_failover::{Attempt, PanicThreshold, Peer};
///
/// let peers = vec![Peer::new("127.0.0.1:8080")?, Peer::new("127.0.0.1:8081")?];
/// let panic = PanicThreshold::new(0.5)?.reached(&peers);
/// assert!(!panic, "every peer is healthy");
/// let attempt = Attempt::new(&[], None);
/// let first = peers.iter().find(|p| attempt.takes(p, panic));
/// assert_eq!(first, Some(&peers[0]));
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
///
/// # Default
///
/// [`NEVER`](Self::NEVER): health is ignored only when no candidate is admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanicThreshold(f64);

impl Default for PanicThreshold {
    fn default() -> Self {
        Self::NEVER
    }
}

impl PanicThreshold {
    /// Never, short of every candidate being out.
    pub const NEVER: Self = Self(1.0);

    /// Panic mode once more than `share` (0.0 to 1.0) of the peers is held out by health;
    /// Envoy's default is 0.5.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`](crate::ConfigError::OutOfRange) for a share outside
    /// 0.0..=1.0 (or not a number).
    pub fn new(share: f64) -> Result<Self, crate::ConfigError> {
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

    /// The share of peers held out above which panic mode starts.
    pub fn share(&self) -> f64 {
        self.0
    }

    /// Whether more than the threshold's share of `peers` is held out now (ejected, or failing
    /// its active check). Always `false` for [`NEVER`](Self::NEVER), without looking at a peer.
    pub fn reached(&self, peers: &[Peer]) -> bool {
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
