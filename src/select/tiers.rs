//! Priority tiers: groups of peers, each balanced by a selector of its own, that traffic spills
//! over in order.

use crate::error::ConfigError;
use crate::peer::Peer;
use crate::rng::Rng;
use crate::select::{Attempt, PeerSelector};
use crate::set::{PeerSet, Snapshot};

/// The most tiers a [`PriorityTiers`] takes (their shares are worked out on the stack).
pub const MAX_TIERS: usize = 16;

/// Groups of peers in priority order: the first tier takes the traffic while enough of it is
/// healthy, and the share it cannot carry spills to the next (Envoy's priority levels; nginx's
/// and HAProxy's `backup` servers, with `allbackups`).
///
/// Each tier is a selector of its own ([`RoundRobin`](crate::RoundRobin),
/// [`LeastRequest`](crate::LeastRequest), [`HashRing`](crate::HashRing), ...) over its own
/// [`PeerSet`](crate::PeerSet), which it names through [`PeerSelector::peer_set`]. A tier's health is the share
/// of its peers that is healthy, times the overprovisioning factor (1.4, Envoy's), capped at 1:
/// a tier with 5 of 7 peers healthy still takes everything, since 5/7 x 1.4 = 1. Tier 0 takes
/// its health as its share of traffic, tier 1 takes its own health of what is left, and so on;
/// when all tiers together are less than fully healthy, each takes its health over their sum.
/// As a tier recovers, traffic comes back to it from the tiers after it, in order.
///
/// A retry draws its tier as a first attempt does (so with a healthy first tier it stays there
/// while the tier has an untried healthy peer), then asks the other tiers in priority order. When no tier offers an
/// untried healthy peer, panic mode spreads the request over the untried peers of every tier
/// that will take requests again soonest ([`Attempt::best_untried`]).
///
/// [`OrderedList`](crate::OrderedList) is the case of one peer per tier: with one peer a tier
/// is fully healthy or not at all, so each request goes to the first healthy peer it has not
/// tried, which is the list's rule (a property test holds the two to the same choices).
///
/// # Examples
///
/// ```
/// use pingora_failover::{ConfigError, LeastRequest, Peer, PriorityTiers, RoundRobin};
///
/// /// The local zone while it is healthy enough; what it cannot carry spills to the remote one.
/// fn zones() -> Result<PriorityTiers, ConfigError> {
///     let local = RoundRobin::new(vec![Peer::new("127.0.0.1:8080")?, Peer::new("127.0.0.1:8081")?])?;
///     let remote =
///         LeastRequest::new(vec![Peer::new("127.0.0.1:9080")?, Peer::new("127.0.0.1:9081")?])?;
///     PriorityTiers::new(vec![Box::new(local), Box::new(remote)])
/// }
/// assert_eq!(zones()?.loads(), [1.0, 0.0]);
/// # Ok::<(), ConfigError>(())
/// ```
pub struct PriorityTiers {
    tiers: Box<[Box<dyn PeerSelector>]>,
    overprovisioning: f64,
    rng: Rng,
}

impl PriorityTiers {
    /// Tiers in priority order, the first the most preferred.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoPeers`] for no tiers, [`ConfigError::OutOfRange`] for more than
    /// [`MAX_TIERS`]; [`ConfigError::TierWithoutPeerSet`] for a tier
    /// whose selector does not name its peers ([`PeerSelector::peer_set`]).
    pub fn new(tiers: Vec<Box<dyn PeerSelector>>) -> Result<Self, ConfigError> {
        if tiers.is_empty() {
            return Err(ConfigError::NoPeers);
        }
        if tiers.len() > MAX_TIERS {
            return Err(ConfigError::OutOfRange {
                what: "number of priority tiers",
                value: tiers.len().to_string(),
                range: "1..=16",
            });
        }
        if let Some(tier) = tiers.iter().position(|t| t.peer_set().is_none()) {
            return Err(ConfigError::TierWithoutPeerSet { tier });
        }
        Ok(Self {
            tiers: tiers.into_boxed_slice(),
            overprovisioning: 1.4,
            rng: Rng::new(),
        })
    }

    /// The factor a tier's healthy share is multiplied by (1.4 by default): with 1.0, a tier
    /// sheds traffic as soon as one of its peers is out; higher, it keeps all of its traffic
    /// until more of its peers are out.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] unless it is finite and at least 1.
    pub fn with_overprovisioning(mut self, factor: f64) -> Result<Self, ConfigError> {
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(ConfigError::OutOfRange {
                what: "overprovisioning factor",
                value: factor.to_string(),
                range: "1.0 or more",
            });
        }
        self.overprovisioning = factor;
        Ok(self)
    }

    /// Seeds the draw of a tier, for reproducible runs.
    pub fn with_seed(self, seed: u64) -> Self {
        self.rng.seed(seed);
        self
    }

    /// The tiers' selectors, in priority order.
    pub fn tiers(&self) -> &[Box<dyn PeerSelector>] {
        &self.tiers
    }

    /// The share of traffic each tier takes now, in priority order (for display and tests).
    pub fn loads(&self) -> Vec<f64> {
        let mut loads = [0.0; MAX_TIERS];
        self.loads_into(&mut loads);
        loads[..self.tiers.len()].to_vec()
    }

    /// Each tier's share of traffic now, into `loads` (of at least as many tiers); `false` when
    /// no tier has a healthy peer.
    fn loads_into(&self, loads: &mut [f64; MAX_TIERS]) -> bool {
        let n = self.tiers.len();
        for (i, tier) in self.tiers.iter().enumerate() {
            loads[i] = tier
                .peer_set()
                .map_or(0.0, |set| health(&set.snapshot(), self.overprovisioning));
        }
        spill(&mut loads[..n])
    }

    /// Panic mode over every tier: [`Attempt::best_untried`] over all their peers (the tiers'
    /// snapshots are gathered first: panic mode is rare, and allocates).
    fn best_untried(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let snapshots: Vec<_> = self
            .tiers
            .iter()
            .filter_map(|tier| tier.peer_set().map(PeerSet::snapshot))
            .collect();
        attempt
            .best_untried(snapshots.iter().flat_map(|s| s.peers()))
            .cloned()
    }
}

impl std::fmt::Debug for PriorityTiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriorityTiers")
            .field(
                "tiers",
                &self.tiers.iter().map(|t| t.peer_set()).collect::<Vec<_>>(),
            )
            .field("overprovisioning", &self.overprovisioning)
            .finish()
    }
}

/// A tier's health: its healthy share times the overprovisioning factor, at most 1.
fn health(snapshot: &Snapshot, overprovisioning: f64) -> f64 {
    let peers = snapshot.peers();
    if peers.is_empty() {
        return 0.0;
    }
    let healthy = peers.iter().filter(|p| p.health().is_healthy()).count();
    (overprovisioning * healthy as f64 / peers.len() as f64).min(1.0)
}

/// Turns the tiers' health into their shares of traffic, in place: each tier takes its health
/// of what the tiers before it leave; when all together are less than fully healthy, each takes
/// its health over their sum. `false` when every tier's health is 0.
fn spill(tiers: &mut [f64]) -> bool {
    let sum: f64 = tiers.iter().sum();
    if sum <= 0.0 {
        return false;
    }
    let mut left = 1.0_f64;
    for h in tiers.iter_mut() {
        *h = if sum < 1.0 {
            *h / sum
        } else {
            let take = h.min(left);
            left -= take;
            take
        };
    }
    true
}

impl PeerSelector for PriorityTiers {
    // No `peer_set`: its peers are the tiers'.
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let mut loads = [0.0; MAX_TIERS];
        let first = self.loads_into(&mut loads).then(|| {
            let r = self.rng.unit();
            let mut upto = 0.0;
            let last = loads.iter().rposition(|l| *l > 0.0).unwrap_or(0);
            (0..last)
                .find(|&i| {
                    upto += loads[i];
                    r < upto
                })
                .unwrap_or(last)
        });
        let order = first
            .into_iter()
            .chain((0..self.tiers.len()).filter(|&i| Some(i) != first));
        for i in order {
            if let Some(p) = self.tiers[i].select(attempt) {
                if attempt.admits(&p) {
                    return Some(p);
                }
            }
        }
        self.best_untried(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureKind, OrderedList, OutlierDetection, RoundRobin};

    fn tier(first_port: u16, n: u16) -> Box<dyn PeerSelector> {
        let peers = (0..n)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", first_port + i)).unwrap())
            .collect();
        Box::new(RoundRobin::new(peers).unwrap())
    }

    fn eject(tiers: &PriorityTiers, tier: usize, count: usize) {
        let set = tiers.tiers()[tier].peer_set().unwrap().peers();
        for p in set.iter().take(count) {
            OutlierDetection::new().record_failure(p, FailureKind::ConnectRefused);
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_spills_with_overprovisioning() {
        let t = PriorityTiers::new(vec![tier(5000, 10), tier(5100, 10)]).unwrap();
        assert!(close(&t.loads(), &[1.0, 0.0]));
        // 8 of 10 healthy: 0.8 x 1.4 > 1, nothing spills.
        eject(&t, 0, 2);
        assert!(close(&t.loads(), &[1.0, 0.0]), "{:?}", t.loads());
        // 5 of 10: 0.7 stays, 0.3 spills.
        eject(&t, 0, 5);
        assert!(close(&t.loads(), &[0.7, 0.3]), "{:?}", t.loads());
        // Both half out: 0.7 + 0.7 > 1, tier 1 takes what is left.
        eject(&t, 1, 5);
        assert!(close(&t.loads(), &[0.7, 0.3]), "{:?}", t.loads());
        // Tier 0 all out, tier 1 at 0.7: the sum is under 1, so tier 1 takes it all.
        eject(&t, 0, 10);
        assert!(close(&t.loads(), &[0.0, 1.0]), "{:?}", t.loads());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_goes_to_a_tier_by_its_share_and_a_retry_stays_in_it_first() {
        let t = PriorityTiers::new(vec![tier(5200, 10), tier(5300, 10)])
            .unwrap()
            .with_seed(9);
        eject(&t, 0, 5);
        let in_tier1 = (0..1000)
            .filter(|_| {
                let p = t.select(&Attempt::new(&[], None)).unwrap();
                p.addr().unwrap().port() >= 5300
            })
            .count();
        assert!((240..360).contains(&in_tier1), "{in_tier1} of 1000");
        // A retry of a tier-0 attempt goes to another healthy tier-0 peer most of the time.
        let tried = [crate::AttemptRecord::new(
            t.tiers()[0].peer_set().unwrap().peers()[9].clone(),
        )];
        let p = t.select(&Attempt::new(&tried, None)).unwrap();
        assert!(!p.same(tried[0].peer()));
    }

    #[test]
    fn bad_tiers_are_refused() {
        struct Bare;
        impl PeerSelector for Bare {
            fn select(&self, _: &Attempt<'_>) -> Option<Peer> {
                None
            }
        }
        assert_eq!(
            PriorityTiers::new(vec![]).unwrap_err(),
            ConfigError::NoPeers
        );
        assert_eq!(
            PriorityTiers::new(vec![tier(5400, 1), Box::new(Bare)]).unwrap_err(),
            ConfigError::TierWithoutPeerSet { tier: 1 }
        );
        let many = (0..17).map(|i| tier(5500 + i, 1)).collect();
        assert!(PriorityTiers::new(many).is_err());
        let t = || PriorityTiers::new(vec![tier(5600, 1)]).unwrap();
        assert!(t().with_overprovisioning(0.9).is_err());
        assert!(t().with_overprovisioning(f64::NAN).is_err());
        assert!(t().with_overprovisioning(1.0).is_ok());
    }

    #[test]
    fn an_ordered_list_is_tiers_of_one() {
        let peers: Vec<Peer> = (0..3)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 5700 + i)).unwrap())
            .collect();
        let list = OrderedList::new(peers.clone()).unwrap();
        let tiers = PriorityTiers::new(
            peers
                .iter()
                .map(|p| Box::new(OrderedList::new(vec![p.clone()]).unwrap()) as _)
                .collect(),
        )
        .unwrap();
        let mut tried = Vec::new();
        for _ in 0..3 {
            let attempt = Attempt::new(&tried, None);
            let p = tiers.select(&attempt).unwrap();
            assert_eq!(Some(&p), list.select(&attempt).as_ref());
            tried.push(crate::AttemptRecord::new(p));
        }
        assert_eq!(tiers.select(&Attempt::new(&tried, None)), None);
    }
}
