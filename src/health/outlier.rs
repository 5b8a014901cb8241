//! The rules of ejection: how many failures take a peer out, for how long, and how it is
//! probed back.

use std::time::Duration;

use super::RecoveryProbe;
use crate::cell::gate::Thresholds;
use crate::cell::ratio::RatioRule;
use crate::cell::Ejection;
use crate::classify::FailureKind;
use crate::error::{check_timeout, ConfigError};
use crate::peer::Peer;

/// When a peer is ejected, and for how long.
///
/// # Default
///
/// - consecutive failures: 5 (Envoy's `consecutive_5xx`). A 5xx response counts as a failure
///   whether or not the retry policy retries it: health judges responses on its own terms, so a
///   peer that answers 500 to everything is ejected, and a probe answered with a 5xx fails
/// - consecutive connect failures: 1 (nginx's `max_fails=1`; Finagle's fail-fast): a refused or
///   timed-out connect is unambiguous, and every request that meets it pays for it
/// - base ejection time: 1 s, growing by itself with each ejection in a row (Envoy's rule); a
///   peer ejected again before it has stayed healthy for as long as it was last out is in the
///   same row (flapping)
/// - maximum ejection time: 300 s (Envoy's `max_ejection_time`)
/// - no failure-ratio rule: a peer is ejected by failures in a row only.
///   [`with_failure_ratio`](Self::with_failure_ratio) adds one (Envoy's `failure_percentage`,
///   gRPC's failure-percentage ejection), for a peer that fails part of the time: a peer
///   failing 30 % of its requests rarely fails 5 in a row. It is off by default, as in Envoy
///   and gRPC: it judges a peer on the mix of requests it was sent, and a selector that sends
///   one peer a key's every request (hashing) would have it judge the key
/// - no cap on the share of a pool ejected at once (100 %): every peer that fails is taken out,
///   and the selectors' panic mode spreads requests over the ejected ones once none is left.
///   [`with_max_ejection_percent`](Self::with_max_ejection_percent) sets one (Envoy's
///   `max_ejection_percent`), so that a shared overload that sheds with 503s ejects at most that
///   share, not one peer after another until everything piles onto the last
/// - recovery: probed in the background ([`RecoveryProbe`]'s defaults: `GET /` about every
///   250 ms, 200 to 399 pass) from the end of its ejection time, and re-admitted by the first
///   probe that passes; no request is the probe. The ejection time is the quiet spell before
///   probing, hence short. Without a background probe
///   ([`without_recovery_probe`](Self::without_recovery_probe)), the first request after the
///   ejection time is the probe; 10 s (nginx's `fail_timeout`) then suits better, since each
///   such probe of a broken peer costs a request its timeout.
#[derive(Debug, Clone)]
pub struct OutlierDetection {
    consecutive_failures: u32,
    count_5xx: bool,
    consecutive_connect_failures: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejection_percent: u8,
    ratio: Option<RatioRule>,
    recovery: Option<RecoveryProbe>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            count_5xx: true,
            consecutive_connect_failures: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
            ratio: None,
            recovery: Some(RecoveryProbe::default()),
        }
    }
}

impl OutlierDetection {
    /// The defaults; see `# Default`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Failures of any kind in a row that eject a peer.
    #[must_use]
    pub fn with_consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Whether a 5xx response counts as a failure of its peer (yes by default). With `false`,
    /// only the statuses the retry policy retries count, and any other response is a success.
    #[must_use]
    pub fn with_5xx_as_failures(mut self, count: bool) -> Self {
        self.count_5xx = count;
        self
    }

    /// Whether a response with `status` counts against its peer.
    pub(crate) fn counts_status(&self, status: u16) -> bool {
        self.count_5xx && (500..=599).contains(&status)
    }

    /// Connect failures in a row that eject a peer.
    #[must_use]
    pub fn with_consecutive_connect_failures(mut self, n: u32) -> Self {
        self.consecutive_connect_failures = n;
        self
    }

    /// The first ejection's length, and the step it grows by.
    #[must_use]
    pub fn with_base_ejection(mut self, time: Duration) -> Self {
        self.base_ejection = time;
        self
    }

    /// The longest ejection.
    #[must_use]
    pub fn with_max_ejection(mut self, time: Duration) -> Self {
        self.max_ejection = time;
        self
    }

    /// The largest share of a pool, in percent (0 to 100), that may be ejected at once; at least
    /// one peer may always be. A peer past the cap stays in with its failures counted, and its
    /// next failure asks again. The pool is the engine's selector's [`PeerSet`](crate::PeerSet);
    /// a selector without one has no cap. Two peers reaching their thresholds at the same
    /// instant may both be ejected past it.
    #[must_use]
    pub fn with_max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent;
        self
    }

    /// Ejects a peer that failed `percent` (1 to 100) of its requests over the last `window`
    /// (1 s to 300 s), once it was sent at least `min_requests` in that window (so that a quiet
    /// peer is not judged on two requests), whatever its failures in a row. What counts as a
    /// failure is what counts towards the consecutive rule (a 5xx, a timeout, a refused
    /// connect; not a request the client gave up on). The window slides: the counts of the
    /// window before are weighed by the share of it still covered. The counts start afresh
    /// when the peer is ejected. The cap on the share of a pool ejected at once applies.
    ///
    /// With 30 % over 10 s and at least 20 requests: a peer failing 30 % is ejected within the
    /// window once it has had 20 requests, one failing 1 % never.
    #[must_use]
    pub fn with_failure_ratio(mut self, percent: u8, min_requests: u32, window: Duration) -> Self {
        self.ratio = Some(RatioRule {
            percent,
            min_requests,
            window_ms: window.as_millis().min(u128::from(u64::MAX)) as u64,
        });
        self
    }

    /// The failure-ratio rule, when there is one.
    pub(crate) fn ratio(&self) -> Option<&RatioRule> {
        self.ratio.as_ref()
    }

    /// How many of `pool` peers may be ejected at once.
    pub(crate) fn max_ejected(&self, pool: usize) -> usize {
        (pool * usize::from(self.max_ejection_percent) / 100).max(1)
    }

    /// How ejected peers are probed in the background ([`RecoveryProbe`]).
    #[must_use]
    pub fn with_recovery_probe(mut self, probe: RecoveryProbe) -> Self {
        self.recovery = Some(probe);
        self
    }

    /// No background probing: the first request after a peer's ejection time is its probe.
    #[must_use]
    pub fn without_recovery_probe(mut self) -> Self {
        self.recovery = None;
        self
    }

    /// The background probe, when there is one.
    pub(crate) fn recovery(&self) -> Option<&RecoveryProbe> {
        self.recovery.as_ref()
    }

    /// Background probes connect as the proxy does under `conf`.
    pub(crate) fn use_server_conf(&self, conf: &pingora_core::server::configuration::ServerConf) {
        if let Some(probe) = &self.recovery {
            probe.use_server_conf(conf);
        }
    }

    /// The longest ejection; also how long background probes may fail before a request probes
    /// the peer instead.
    pub(crate) fn max_ejection(&self) -> Duration {
        self.max_ejection
    }

    /// Records a failure of `kind` against `peer` under these rules; the ejection when it
    /// ejected the peer. The engine does this after every failed attempt; call it yourself to
    /// feed health from elsewhere (a failure your own code saw, a simulation).
    pub fn record_failure(&self, peer: &Peer, kind: FailureKind) -> Option<Ejection> {
        peer.health()
            .record_failure(kind, &self.thresholds(), self.ratio())
    }

    /// Records a success of `peer`; `true` when it re-admitted the peer.
    pub fn record_success(&self, peer: &Peer) -> bool {
        peer.health()
            .record_success_counted(true, &crate::cell::gate::NoTally, self.ratio())
    }

    pub(crate) fn thresholds(&self) -> Thresholds {
        Thresholds {
            failures: self.consecutive_failures,
            connect_failures: self.consecutive_connect_failures,
            base_ms: self.base_ejection.as_millis() as u64,
            max_ms: self.max_ejection.as_millis() as u64,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a zero threshold; a timeout error for a zero or
    /// over-an-hour ejection time, or a base above the maximum.
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (what, n) in [
            ("consecutive failures", self.consecutive_failures),
            (
                "consecutive connect failures",
                self.consecutive_connect_failures,
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::OutOfRange {
                    what,
                    value: n.to_string(),
                    range: "1 or more",
                });
            }
        }
        if let Some(rule) = &self.ratio {
            if !(1..=100).contains(&rule.percent) {
                return Err(ConfigError::OutOfRange {
                    what: "failure ratio percent",
                    value: rule.percent.to_string(),
                    range: "1..=100",
                });
            }
            if rule.min_requests == 0 {
                return Err(ConfigError::OutOfRange {
                    what: "failure ratio minimum requests",
                    value: "0".into(),
                    range: "1 or more",
                });
            }
            if !(1_000..=300_000).contains(&rule.window_ms) {
                return Err(ConfigError::OutOfRange {
                    what: "failure ratio window",
                    value: format!("{:?}", Duration::from_millis(rule.window_ms)),
                    range: "1 s..=300 s",
                });
            }
        }
        if self.max_ejection_percent > 100 {
            return Err(ConfigError::OutOfRange {
                what: "max ejection percent",
                value: self.max_ejection_percent.to_string(),
                range: "0..=100",
            });
        }
        let hour = Duration::from_secs(3600);
        check_timeout("base ejection time", self.base_ejection, hour)?;
        check_timeout("max ejection time", self.max_ejection, hour)?;
        if self.base_ejection > self.max_ejection {
            return Err(ConfigError::OutOfRange {
                what: "base ejection time",
                value: format!("{:?}", self.base_ejection),
                range: "at most the max ejection time",
            });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_5xx_counts_unless_told_otherwise() {
        let rules = OutlierDetection::new();
        assert!(rules.counts_status(500) && rules.counts_status(503));
        assert!(!rules.counts_status(404) && !rules.counts_status(200));
        assert!(!rules.with_5xx_as_failures(false).counts_status(500));
    }

    #[test]
    fn the_cap_allows_a_share_of_the_pool_and_always_one() {
        let rules = OutlierDetection::new();
        assert_eq!(rules.max_ejected(5), 5, "no cap by default");
        let half = rules.clone().with_max_ejection_percent(50);
        assert_eq!((half.max_ejected(2), half.max_ejected(5)), (1, 2));
        assert_eq!(half.max_ejected(1), 1);
        let envoy = rules.with_max_ejection_percent(10);
        assert_eq!((envoy.max_ejected(3), envoy.max_ejected(30)), (1, 3));
    }

    #[test]
    fn rejects_bad_rules() {
        let ratio = |p, n, ms| {
            OutlierDetection::new()
                .with_failure_ratio(p, n, Duration::from_millis(ms))
                .validate()
                .is_err()
        };
        assert!(!ratio(30, 20, 10_000));
        assert!(ratio(0, 20, 10_000) && ratio(101, 20, 10_000));
        assert!(ratio(30, 0, 10_000));
        assert!(ratio(30, 20, 0) && ratio(30, 20, 999) && ratio(30, 20, 300_001));
        assert!(OutlierDetection::new()
            .with_max_ejection_percent(101)
            .validate()
            .is_err());
        assert!(OutlierDetection::new()
            .with_consecutive_failures(0)
            .validate()
            .is_err());
        assert!(OutlierDetection::new()
            .with_base_ejection(Duration::ZERO)
            .validate()
            .is_err());
        assert!(OutlierDetection::new()
            .with_base_ejection(Duration::from_secs(60))
            .with_max_ejection(Duration::from_secs(30))
            .validate()
            .is_err());
    }
}
