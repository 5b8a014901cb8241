//! Latency-aware balancing: the power of two choices on peak EWMA latency.

use tokio::time::Instant;

use crate::peer::Peer;
use crate::select::p2c::{two_choices_api, TwoChoices};
use crate::select::{Attempt, PeerSelector};
use crate::set::PeerSet;

/// Sends each request to the cheaper of two peers drawn at random, where a peer's cost is its
/// learned latency times its requests in flight plus one, divided by its weight: the peak EWMA
/// balancer of Finagle and Linkerd (tower's `PeakEwma`).
///
/// Latency is [`PeerHealth::latency`](crate::PeerHealth::latency), which the engine learns
/// from the time to each response header. It is peak-sensitive: the first slow answer from a
/// peer that turned slow raises its estimate to that time at once, so a peer that becomes 10x
/// slower loses most of its traffic within one of its own answers, long before any timeout or
/// ejection. Faster answers pull the estimate down gradually, and without answers it decays
/// towards zero (time constant 10 s), so a peer that lost its traffic is tried again and wins
/// it back once it is fast. The requests in flight make a peer that is stalling (and so not
/// answering at all) costlier with every request sent to it.
///
/// A peer that has not answered yet borrows the estimate of the peer it is compared with, so
/// the two compare on load alone: a new peer neither wins every request until its first answer
/// nor waits behind a guessed default.
///
/// As with [`LeastRequest`](crate::LeastRequest), ejected and already-tried peers are skipped,
/// panic mode takes the best untried peer, and selection takes no lock and allocates nothing.
#[derive(Debug)]
pub struct PeakEwma {
    inner: TwoChoices,
}

two_choices_api!(PeakEwma, "Peak EWMA");

impl PeakEwma {
    /// The costs of `a` and `b` compared now.
    fn costs(&self, a: &Peer, b: &Peer) -> (f64, f64) {
        let now = Instant::now();
        let (la, lb) = (a.health().latency_us_at(now), b.health().latency_us_at(now));
        let (la, lb) = match (la, lb) {
            (Some(la), Some(lb)) => (la, lb),
            (Some(l), None) | (None, Some(l)) => (l, l),
            (None, None) => (1.0, 1.0),
        };
        (self.cost(a, la), self.cost(b, lb))
    }

    fn cost(&self, p: &Peer, latency_us: f64) -> f64 {
        // A latency of zero (an estimate long decayed) would make load count for nothing.
        latency_us.max(1.0) * f64::from(p.health().in_flight() + 1) / self.inner.weight(p)
    }
}

impl PeerSelector for PeakEwma {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        self.inner.select(attempt, |a, b| self.costs(a, b))
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.inner.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: u16) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 4200 + i)).unwrap())
            .collect()
    }

    /// Teaches `peer` an answer time of `ms`.
    async fn answers_in(peer: &Peer, ms: u64) {
        let took = std::time::Duration::from_millis(ms);
        tokio::time::advance(took).await;
        peer.health().record_latency(took);
    }

    fn shares(s: &PeakEwma, ps: &[Peer], n: usize) -> Vec<usize> {
        let mut counts = vec![0; ps.len()];
        for _ in 0..n {
            let p = s.select(&Attempt::new(&[], None)).unwrap();
            counts[ps.iter().position(|q| *q == p).unwrap()] += 1;
        }
        counts
    }

    #[tokio::test(start_paused = true)]
    async fn the_faster_peer_takes_the_traffic_and_the_slower_wins_it_back_when_fast() {
        let ps = peers(2);
        let s = PeakEwma::new(ps.clone()).unwrap().with_seed(3);
        answers_in(&ps[0], 2).await;
        answers_in(&ps[1], 40).await;
        assert_eq!(shares(&s, &ps, 100), [100, 0]);
        // Load counts: 20 requests in flight on the fast peer cost 2 ms x 21 > 40 ms x 1.
        (0..20).for_each(|_| ps[0].health().begin_request());
        assert_eq!(shares(&s, &ps, 10), [0, 10]);
        (0..20).for_each(|_| ps[0].health().end_request());
        // A peer without answers decays: after 30 s the slow estimate is 40 ms x e^-3 = 2 ms.
        tokio::time::advance(std::time::Duration::from_secs(31)).await;
        answers_in(&ps[0], 2).await;
        assert_eq!(shares(&s, &ps, 10), [0, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answered_competes_on_load() {
        let ps = peers(2);
        let s = PeakEwma::new(ps.clone()).unwrap().with_seed(5);
        answers_in(&ps[0], 50).await;
        ps[0].health().begin_request();
        assert_eq!(shares(&s, &ps, 10), [0, 10], "1 in flight against none");
        ps[1].health().begin_request();
        ps[1].health().begin_request();
        assert_eq!(shares(&s, &ps, 10), [10, 0], "1 in flight against 2");
    }
}
