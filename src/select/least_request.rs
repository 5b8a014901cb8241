//! Least-request: the power of two choices on in-flight requests.

use crate::peer::Peer;
use crate::select::p2c::{two_choices_api, TwoChoices};
use crate::select::{Attempt, PeerSelector};
use crate::set::PeerSet;

/// Sends each request to the less loaded of two peers drawn at random: the power of two choices
/// (Mitzenmacher) on requests in flight, weighted (Envoy's `LEAST_REQUEST`, nginx's
/// `least_conn`, HAProxy's `leastconn`, the P2C of Finagle and Linkerd).
///
/// Load is [`PeerHealth::in_flight`](crate::PeerHealth::in_flight): requests the engine sent to
/// the peer and that have not finished, a streamed response counting until it ends. A peer's
/// cost is `(in_flight + 1) / weight`. A slow peer holds its requests longer, so it is chosen
/// less, without any latency being measured. Two random choices rather than the least loaded of
/// all: every proxy thread acting on the same counts would herd onto the same peer, and two
/// choices already bring the worst load down from `log n / log log n` to `log log n`.
///
/// Each draw starts at a random peer and takes the first from there that the attempt admits, so
/// ejected and already-tried peers are skipped; when none is admitted, the best untried one is
/// tried anyway (panic mode). Randomness comes from a seedable generator
/// ([`with_seed`](Self::with_seed)); selection takes no lock and allocates nothing.
#[derive(Debug)]
pub struct LeastRequest {
    inner: TwoChoices,
}

two_choices_api!(LeastRequest, "Least-request");

impl LeastRequest {
    fn cost(&self, p: &Peer) -> f64 {
        f64::from(p.health().in_flight() + 1) / self.inner.weight(p)
    }
}

impl PeerSelector for LeastRequest {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        self.inner
            .select(attempt, |a, b| (self.cost(a), self.cost(b)))
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.inner.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::AttemptRecord;

    fn peers(n: u16) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 4000 + i)).unwrap())
            .collect()
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
}
