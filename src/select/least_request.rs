//! Least-request: the power of two choices on in-flight requests.

use crate::peer::Peer;
use crate::select::p2c::{Cost, TwoChoices};

/// Sends each request to the less loaded of two peers drawn at random: the power of two choices
/// (Mitzenmacher) on requests in flight, weighted (Envoy's `LEAST_REQUEST`, nginx's
/// `least_conn`, HAProxy's `leastconn`, the P2C of Finagle and Linkerd).
///
/// Load is [`PeerHealth::in_flight`](crate::PeerHealth::in_flight): requests the engine sent to
/// the peer and that have not finished, a streamed response counting until it ends. A slow peer
/// holds its requests longer, so it is chosen less, without any latency being measured. Two
/// random choices rather than the least loaded of all: every proxy thread acting on the same
/// counts would herd onto the same peer, and two choices already bring the worst load down from
/// `log n / log log n` to `log log n`.
///
/// Weights are capacities, applied by the algorithm (as in Envoy's weighted least-request): the
/// first candidate is drawn in proportion to weight, the second uniformly; the one with fewer
/// requests in flight per unit of weight wins, and when both carry the same (as at zero load,
/// one request at a time), each wins in proportion to its weight. So each peer's share follows
/// its weight whether the pool is idle or busy: weights 2 and 1 split sequential requests 2:1,
/// not 100:0.
///
/// Ejected, suspected and already-tried peers are never drawn: their chance passes to a
/// candidate drawn afresh, not to their neighbour in the set. When none is admitted, panic mode
/// spreads the request over the untried peers
/// ([`Attempt::best_untried`](crate::Attempt::best_untried)). Randomness comes from a generator
/// seeded per selector and process, or by [`TwoChoices::with_seed`]; selection takes no lock and
/// allocates nothing.
///
/// It is [`TwoChoices`] comparing by [`InFlight`]: `LeastRequest::new(peers)`,
/// `LeastRequest::from_set(set)`, and the settings of [`TwoChoices`].
pub type LeastRequest = TwoChoices<InFlight>;

/// Load alone: the same estimate for every peer ([`LeastRequest`]'s [`Cost`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct InFlight;

impl Cost for InFlight {
    fn estimates(&self, _: &Peer, _: &Peer) -> (f64, f64) {
        (1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::AttemptRecord;
    use crate::select::{Attempt, PeerSelector};
    use crate::set::PeerSet;

    fn peers(n: u16) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 4000 + i)).unwrap())
            .collect()
    }

    /// Under a load in proportion to weight (4 requests in flight per unit of weight), each
    /// admitted peer keeps its weight's share of the admitted weight, within 3 % over 6,000
    /// draws, and an ejected peer gets nothing, for least-request and peak EWMA alike.
    #[test]
    fn under_a_load_in_proportion_to_weight_shares_follow_the_weights() {
        let weights = [3u32, 2, 1, 2];
        let peers = weighted(&weights, 4100);
        for (p, w) in peers.iter().zip(weights) {
            for _ in 0..w * 4 {
                p.health().begin_request();
            }
        }
        let rules = crate::OutlierDetection::new();
        assert!(rules
            .record_failure(&peers[3], crate::FailureKind::ConnectRefused)
            .is_some());
        let selectors: [(&str, Box<dyn PeerSelector>); 2] = [
            (
                "least-request",
                Box::new(LeastRequest::new(peers.clone()).unwrap().with_seed(7)),
            ),
            (
                "ewma",
                Box::new(crate::PeakEwma::new(peers.clone()).unwrap().with_seed(7)),
            ),
        ];
        for (name, selector) in selectors {
            const DRAWS: usize = 6_000;
            let mut counts = [0usize; 4];
            for _ in 0..DRAWS {
                let p = selector.select(&Attempt::new(&[], None)).unwrap();
                counts[peers.iter().position(|q| *q == p).unwrap()] += 1;
            }
            for (i, due) in [3.0 / 6.0, 2.0 / 6.0, 1.0 / 6.0, 0.0]
                .into_iter()
                .enumerate()
            {
                let got = counts[i] as f64 / DRAWS as f64;
                assert!((got - due).abs() < 0.03, "{name}: {counts:?}");
            }
        }
    }

    #[test]
    fn the_less_loaded_of_two_is_chosen() {
        let ps = peers(2);
        let lr = LeastRequest::new(ps.clone()).unwrap().with_seed(7);
        (0..3).for_each(|_| ps[0].health().begin_request());
        for _ in 0..100 {
            assert_eq!(lr.select(&Attempt::new(&[], None)).unwrap(), ps[1]);
        }
    }

    #[test]
    fn even_load_spreads_over_every_peer() {
        let ps = peers(4);
        let lr = LeastRequest::new(ps.clone()).unwrap().with_seed(1);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            let p = lr.select(&Attempt::new(&[], None)).unwrap();
            counts[ps.iter().position(|q| *q == p).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn weights_divide_the_load() {
        let a = Peer::builder("127.0.0.1:4100")
            .with_weight(4)
            .build()
            .unwrap();
        let b = Peer::new("127.0.0.1:4101").unwrap();
        let lr = LeastRequest::new(vec![a.clone(), b.clone()]).unwrap();
        // 3 in flight on a weight of 4 costs less than 1 on a weight of 1: (3+1)/4 < (1+1)/1.
        (0..3).for_each(|_| a.health().begin_request());
        b.health().begin_request();
        assert_eq!(lr.select(&Attempt::new(&[], None)).unwrap(), a);
    }

    #[test]
    fn a_retry_never_returns_to_a_tried_peer_while_another_is_left() {
        let ps = peers(3);
        let lr = LeastRequest::new(ps.clone()).unwrap();
        for _ in 0..50 {
            let mut tried = Vec::new();
            for _ in 0..3 {
                let p = lr.select(&Attempt::new(&tried, None)).unwrap();
                assert!(tried.iter().all(|t: &AttemptRecord| !t.peer().same(&p)));
                tried.push(AttemptRecord::new(p));
            }
        }
    }

    #[test]
    fn a_finished_request_no_longer_counts() {
        let ps = peers(1);
        ps[0].health().begin_request();
        assert_eq!(ps[0].health().in_flight(), 1);
        ps[0].health().end_request();
        assert_eq!(ps[0].health().in_flight(), 0);
    }

    fn weighted(ws: &[u32], port: u16) -> Vec<Peer> {
        crate::peer::weighted_for_tests(port, ws)
    }

    /// How many of `n` first attempts each of `ps` gets.
    fn counts(s: &dyn PeerSelector, ps: &[Peer], n: usize) -> Vec<usize> {
        let mut counts = vec![0; ps.len()];
        for _ in 0..n {
            let p = s.select(&Attempt::new(&[], None)).unwrap();
            counts[ps.iter().position(|q| *q == p).unwrap()] += 1;
        }
        counts
    }

    /// Each count's share of the total is within `tolerance` of its share of `want`.
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

    #[test]
    fn at_zero_load_the_shares_follow_the_weights() {
        for ws in [&[2, 1][..], &[3, 2, 2], &[1, 4]] {
            let ps = weighted(ws, 4300);
            let lr = LeastRequest::new(ps.clone()).unwrap().with_seed(5);
            let want: Vec<f64> = ws.iter().map(|w| f64::from(*w)).collect();
            assert_shares(&counts(&lr, &ps, 10_000), &want, 0.02);
        }
    }

    #[test]
    fn under_load_in_proportion_to_weight_the_shares_follow_the_weights() {
        let ps = weighted(&[2, 1], 4310);
        let lr = LeastRequest::new(ps.clone()).unwrap().with_seed(6);
        (0..4).for_each(|_| ps[0].health().begin_request());
        (0..2).for_each(|_| ps[1].health().begin_request());
        assert_shares(&counts(&lr, &ps, 10_000), &[2.0, 1.0], 0.02);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_joining_peer_up() {
        let a = Peer::new("127.0.0.1:4320").unwrap();
        let b = Peer::new("127.0.0.1:4321").unwrap();
        let set = PeerSet::new(vec![a.clone()]).unwrap();
        set.replace(vec![a, b]).unwrap();
        let slow = crate::SlowStart::new(std::time::Duration::from_secs(10)).unwrap();
        let lr = LeastRequest::from_set(set.clone())
            .with_seed(8)
            .with_slow_start(slow);
        let ps: Vec<Peer> = set.peers().to_vec();
        let start = tokio::time::Instant::now();
        // b's weight: 10 % of itself at first, then t / window.
        for (at, weight) in [(0, 0.1), (5, 0.5), (10, 1.0)] {
            tokio::time::sleep_until(start + std::time::Duration::from_secs(at)).await;
            assert_shares(&counts(&lr, &ps, 10_000), &[1.0, weight], 0.02);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_peer_after_an_ejected_one_gets_only_its_share() {
        let ps = peers(4);
        let lr = LeastRequest::new(ps.clone()).unwrap().with_seed(9);
        crate::OutlierDetection::new().record_failure(&ps[0], crate::FailureKind::ConnectRefused);
        assert_shares(&counts(&lr, &ps, 9_000), &[0.0, 1.0, 1.0, 1.0], 0.02);
    }

    #[test]
    fn unseeded_selectors_draw_differently() {
        let ps = peers(16);
        let order = |lr: &LeastRequest| {
            (0..32)
                .map(|_| lr.select(&Attempt::new(&[], None)).unwrap())
                .map(|p| ps.iter().position(|q| *q == p).unwrap())
                .collect::<Vec<_>>()
        };
        let (a, b) = (
            LeastRequest::new(ps.clone()).unwrap(),
            LeastRequest::new(ps.clone()).unwrap(),
        );
        assert_ne!(order(&a), order(&b));
    }
}
