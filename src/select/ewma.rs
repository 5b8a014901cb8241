//! Latency-aware balancing: the power of two choices on peak EWMA latency.

use tokio::time::Instant;

use crate::peer::Peer;
use crate::select::p2c::{Cost, TwoChoices};

/// Sends each request to the cheaper of two peers drawn at random, where a peer's cost is its
/// learned latency times its load (`1 + in flight / weight`): the peak EWMA balancer of Finagle
/// and Linkerd (tower's `PeakEwma`), with weights.
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
/// Weights are capacities, applied by the algorithm: the first candidate is drawn in proportion
/// to weight and the second uniformly, and load counts per unit of weight (relative to the
/// set's mean). When the two carry the same load per unit of weight (as at zero load, one
/// request at a time), their latency estimates are compared within their noise: a peak estimate
/// keeps the worst answer of the last seconds, and two peers that answer alike differ by up to
/// 1.5 times on a busy machine. Within 3 times of each other, the slower keeps part of its
/// weight (all of it at equal estimates, half at twice) and each wins in proportion to the
/// weight it has; beyond, the faster always wins. So two peers that answer alike share by
/// weight, where a strict comparison would let the noise send everything to one of them, and a
/// peer 10 times slower gets nothing while another answers.
///
/// A fast failure is not a fast answer. Each peer's latency has added to it `10 × r ×` the
/// latency of the slower of the two, where `r` is the share of its recent outcomes that failed
/// (about the last 20, fading without outcomes over about 10 s): a 5xx or a 429 answer, a
/// timeout, a reset, a refused connect. Two peers of the same latency compare at about 1.1
/// times for one failing 1 %, 4 times for 30 %; a peer that answers 503 in 0.3 ms does not win
/// the traffic from one that answers 200 in 10 ms (it costs 100 ms), while one failing 1 % of
/// the time at 0.3 ms still does (1.3 ms). A `Retry-After` on a failed answer puts a floor
/// under the peer's cost, the time left of it (at most 60 s): the peer asked not to be sent
/// requests until then.
///
/// A peer that has not answered yet borrows the estimate of the peer it is compared with, so
/// the two compare on load alone: a new peer neither wins every request until its first answer
/// nor waits behind a guessed default.
///
/// As with [`LeastRequest`](crate::LeastRequest), ejected and already-tried peers are never
/// drawn, panic mode spreads over the untried peers, and selection takes no lock and allocates
/// nothing.
///
/// It is [`TwoChoices`] comparing by [`PeakLatency`]: `PeakEwma::new(peers)`,
/// `PeakEwma::from_set(set)`, and the settings of [`TwoChoices`].
pub type PeakEwma = TwoChoices<PeakLatency>;

/// Learned latency ([`PeakEwma`]'s [`Cost`]):
/// [`PeerHealth::latency`](crate::PeerHealth::latency); a peer that has not answered yet
/// borrows the other candidate's.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakLatency;

/// How many retries' time a failure costs (see [`PeakEwma`]).
const FAILURE_WEIGHT: f64 = 10.0;

impl Cost for PeakLatency {
    fn estimates(&self, a: &Peer, b: &Peer) -> (f64, f64) {
        let now = Instant::now();
        let (la, lb) = (a.health().latency_us_at(now), b.health().latency_us_at(now));
        let (la, lb) = match (la, lb) {
            (Some(la), Some(lb)) => (la, lb),
            (Some(l), None) | (None, Some(l)) => (l, l),
            (None, None) => (1.0, 1.0),
        };
        // A failure costs the time of a retry, at the slower of the two.
        let retry = la.max(lb);
        let cost = |latency: f64, peer: &Peer| {
            let (failing, floor) = peer.health().penalty_at(now);
            // A latency of zero (an estimate long decayed) would make load count for nothing.
            (latency + FAILURE_WEIGHT * failing * retry)
                .max(floor)
                .max(1.0)
        };
        (cost(la, a), cost(lb, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::p2c::NOISE;
    use crate::select::{Attempt, PeerSelector};

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

    /// The share of `n` draws that went to `ps[i]`.
    fn share(s: &PeakEwma, ps: &[Peer], i: usize, n: usize) -> f64 {
        shares(s, ps, n)[i] as f64 / n as f64
    }

    fn assert_near(got: f64, due: f64, what: &str) {
        assert!(
            (got - due).abs() < 0.03,
            "{what}: {got:.3} where {due:.3} is due"
        );
    }

    /// The share due to a peer of estimate `mine` against one of estimate `other`, of equal
    /// weights and loads.
    fn due(mine: f64, other: f64) -> f64 {
        let kept = |ratio: f64| ((NOISE - ratio) / (NOISE - 1.0)).clamp(0.0, 1.0);
        if mine > other {
            kept(mine / other) / (1.0 + kept(mine / other))
        } else {
            1.0 / (1.0 + kept(other / mine))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_faster_peer_takes_the_traffic_and_the_slower_wins_it_back_when_fast() {
        let ps = peers(2);
        let s = PeakEwma::new(ps.clone()).unwrap().with_seed(3);
        answers_in(&ps[0], 2).await;
        answers_in(&ps[1], 40).await;
        // Idle, 20 times slower: far beyond the noise, the fast one always wins.
        assert_eq!(share(&s, &ps, 1, 4000), 0.0, "20x slower");
        // Load counts: 60 requests in flight on the fast peer cost 2 ms x 61 against 40 ms x 1.
        (0..60).for_each(|_| ps[0].health().begin_request());
        assert_eq!(share(&s, &ps, 1, 4000), 1.0, "the fast one loaded");
        (0..60).for_each(|_| ps[0].health().end_request());
        // A peer without answers decays: after 31 s the slow estimate is 40 ms x e^-3.1 = 1.8 ms,
        // within the noise of the fast one's 2 ms: they share, the faster a little more.
        tokio::time::advance(std::time::Duration::from_secs(31)).await;
        answers_in(&ps[0], 2).await;
        assert_near(share(&s, &ps, 1, 4000), due(1.8, 2.0), "decayed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answered_competes_on_load() {
        let ps = peers(2);
        let s = PeakEwma::new(ps.clone()).unwrap().with_seed(5);
        answers_in(&ps[0], 50).await;
        ps[0].health().begin_request();
        // 50 ms x 2 against a borrowed 50 ms x 1.
        assert_eq!(share(&s, &ps, 1, 4000), 1.0, "1 in flight against none");
        ps[1].health().begin_request();
        ps[1].health().begin_request();
        assert_eq!(share(&s, &ps, 0, 4000), 1.0, "1 in flight against 2");
    }

    fn weighted(ws: &[u32], port: u16) -> Vec<Peer> {
        crate::peer::weighted_for_tests(port, ws)
    }

    fn assert_shares(counts: &[usize], want: &[f64], tolerance: f64) {
        let total: usize = counts.iter().sum();
        let sum: f64 = want.iter().sum();
        for (c, w) in counts.iter().zip(want) {
            let (got, due) = (*c as f64 / total as f64, w / sum);
            assert!(
                (got - due).abs() < tolerance,
                "{counts:?} where {want:?} is due"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_equal_latency_the_shares_follow_the_weights() {
        for ws in [&[2, 1][..], &[3, 2, 2]] {
            let ps = weighted(ws, 4220);
            let s = PeakEwma::new(ps.clone()).unwrap().with_seed(13);
            let want: Vec<f64> = ws.iter().map(|w| f64::from(*w)).collect();
            // Before any answer, and after equal ones.
            assert_shares(&shares(&s, &ps, 10_000), &want, 0.02);
            for p in &ps {
                p.health()
                    .record_latency(std::time::Duration::from_millis(10));
            }
            assert_shares(&shares(&s, &ps, 10_000), &want, 0.02);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_in_proportion_to_weight_the_shares_follow_the_weights() {
        let ps = weighted(&[2, 1], 4230);
        let s = PeakEwma::new(ps.clone()).unwrap().with_seed(14);
        for p in &ps {
            p.health()
                .record_latency(std::time::Duration::from_millis(10));
        }
        (0..4).for_each(|_| ps[0].health().begin_request());
        (0..2).for_each(|_| ps[1].health().begin_request());
        assert_shares(&shares(&s, &ps, 10_000), &[2.0, 1.0], 0.02);
    }
}
