//! Slow start: a peer that joins traffic takes a growing share of it.

use std::time::Duration;

use crate::error::{check_timeout, ConfigError};
use crate::peer::Peer;

/// Ramps up the share of a peer that has just joined traffic: added to a [`PeerSet`] that was
/// already serving, or re-admitted after an ejection or a failed active check. Over `window`,
/// its weight grows from `min_share` of itself to all of it, as `(t / window)^(1 / aggression)`:
/// Envoy's `slow_start_config`, HAProxy's `slowstart`.
///
/// A peer that comes back cold (empty caches, a JIT warming up, connection pools to fill) would
/// otherwise take its full share at once and may fail again under it. The peers a set starts
/// with are not ramped: they all start together.
///
/// The weighted selectors take it: [`RoundRobin`](crate::RoundRobin),
/// [`LeastRequest`](crate::LeastRequest) and [`PeakEwma`](crate::PeakEwma). Once a peer's window
/// is over, selection reads no clock for it.
///
/// # Default
///
/// - aggression: 1.0 (a linear ramp; above 1 ramps faster early, below 1 slower)
/// - minimum share: 0.1 (Envoy's `min_weight_percent` of 10 %)
///
/// [`PeerSet`]: crate::PeerSet
#[derive(Debug, Clone, Copy)]
pub struct SlowStart {
    window_ms: u64,
    aggression: f64,
    min_share: f64,
}

impl SlowStart {
    /// A ramp over `window`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTimeout`] for a zero window, [`ConfigError::TimeoutTooLong`] above an
    /// hour.
    pub fn new(window: Duration) -> Result<Self, ConfigError> {
        check_timeout("slow start window", window, Duration::from_secs(3600))?;
        Ok(Self {
            window_ms: window.as_millis().max(1) as u64,
            aggression: 1.0,
            min_share: 0.1,
        })
    }

    /// The ramp's shape: the weight grows as `(t / window)^(1 / aggression)`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] unless it is finite and above 0.
    pub fn with_aggression(mut self, aggression: f64) -> Result<Self, ConfigError> {
        if !(aggression.is_finite() && aggression > 0.0) {
            return Err(ConfigError::OutOfRange {
                what: "slow start aggression",
                value: aggression.to_string(),
                range: "above 0",
            });
        }
        self.aggression = aggression;
        Ok(self)
    }

    /// The share of its weight a peer starts with.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] outside 0.0..=1.0.
    pub fn with_min_share(mut self, share: f64) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::OutOfRange {
                what: "slow start minimum share",
                value: share.to_string(),
                range: "0.0..=1.0",
            });
        }
        self.min_share = share;
        Ok(self)
    }

    /// The share of its weight `peer` takes now: 1.0 unless it is ramping up.
    pub(crate) fn factor(&self, peer: &Peer) -> f64 {
        let health = peer.health();
        let Some(from) = health.ramp_from() else {
            return 1.0;
        };
        let age = health.now_ms().saturating_sub(from);
        if age >= self.window_ms {
            health.end_ramp(from);
            return 1.0;
        }
        let t = age as f64 / self.window_ms as f64;
        t.powf(1.0 / self.aggression).max(self.min_share)
    }
}

/// The slow start factor of `peer` under `slow`, 1.0 without one.
pub(crate) fn factor(slow: Option<&SlowStart>, peer: &Peer) -> f64 {
    slow.map_or(1.0, |s| s.factor(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attempt, FailureKind, OutlierDetection, PeerSelector, RoundRobin};

    fn share_of_first(rr: &RoundRobin, n: usize) -> f64 {
        let first = rr.peers()[0].clone();
        let hits = (0..n)
            .filter(|_| rr.select(&Attempt::new(&[], None)).unwrap() == first)
            .count();
        hits as f64 / n as f64
    }

    #[tokio::test(start_paused = true)]
    async fn a_readmitted_peer_ramps_up_over_the_window() {
        let peers: Vec<Peer> = (0..2)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 5800 + i)).unwrap())
            .collect();
        let slow = SlowStart::new(Duration::from_secs(10)).unwrap();
        let rr = RoundRobin::new(peers.clone())
            .unwrap()
            .with_slow_start(slow);
        assert!((share_of_first(&rr, 2000) - 0.5).abs() < 0.02, "not ramped");
        let rules = OutlierDetection::new();
        let t = rules
            .record_failure(&peers[0], FailureKind::ConnectRefused)
            .unwrap()
            .time;
        tokio::time::advance(t).await;
        assert!(rules.record_success(&peers[0]), "re-admitted");
        let readmitted = tokio::time::Instant::now();
        // Its weight: 10 % at first, then t / window. Its share of turns: weight / (weight + 1).
        for (at, weight) in [(0, 0.1), (5, 0.5), (8, 0.8), (10, 1.0)] {
            tokio::time::sleep_until(readmitted + Duration::from_secs(at)).await;
            let share = share_of_first(&rr, 4000);
            let want = weight / (weight + 1.0);
            assert!((share - want).abs() < 0.03, "at {at} s: {share} vs {want}");
        }
        assert_eq!(peers[0].health().ramp_from(), None, "the ramp is over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_added_to_a_serving_set_ramps_up_and_the_first_ones_do_not() {
        let a = Peer::new("127.0.0.1:5900").unwrap();
        let b = Peer::new("127.0.0.1:5901").unwrap();
        let set = crate::PeerSet::new(vec![a.clone()]).unwrap();
        set.replace(vec![a.clone(), b.clone()]).unwrap();
        let peers = set.peers();
        let slow = SlowStart::new(Duration::from_secs(10)).unwrap();
        assert_eq!(slow.factor(&peers[0]), 1.0);
        assert!((slow.factor(&peers[1]) - 0.1).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!((slow.factor(&peers[1]) - 0.4).abs() < 1e-3);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(SlowStart::new(Duration::ZERO).is_err());
        let s = SlowStart::new(Duration::from_secs(1)).unwrap();
        assert!(s.with_aggression(0.0).is_err());
        assert!(s.with_aggression(f64::INFINITY).is_err());
        assert!(s.with_min_share(1.5).is_err());
        assert!(s.with_min_share(0.0).is_ok());
    }
}
