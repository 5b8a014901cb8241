//! Every bad configuration is a typed `ConfigError` at build time, never a panic.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::configuration::ServerConf;
use pingora_failover::{
    Backoff, ConfigError, Failover, FailoverProxy, Failure, OrderedList, Peer, RetryBudget,
    RetryDecision, RetryPolicy, RoundRobin, StandardPolicy,
};

fn peer(addr: &str) -> Peer {
    Peer::new(addr).unwrap()
}

#[test]
fn empty_peer_lists() {
    assert_eq!(OrderedList::new(vec![]).unwrap_err(), ConfigError::NoPeers);
    assert_eq!(RoundRobin::new(vec![]).unwrap_err(), ConfigError::NoPeers);
}

#[test]
fn unparsable_addresses() {
    for bad in [
        "",
        "not an address",
        "example.com",
        "under_score.example:80",
        "unix:relative/path",
        "127.0.0.1",
        "127.0.0.1:999999",
        "[::1]",
    ] {
        let err = Peer::new(bad).unwrap_err();
        assert_eq!(
            err,
            ConfigError::InvalidAddress {
                address: bad.into()
            }
        );
        assert!(err.to_string().contains("expected IP:PORT"), "{err}");
    }
    assert!(matches!(
        Peer::new("127.0.0.1:0"),
        Err(ConfigError::ZeroPort { .. })
    ));
    assert!(matches!(
        Peer::new("api.internal:0"),
        Err(ConfigError::ZeroPort { .. })
    ));
}

#[cfg(feature = "dns")]
#[test]
fn a_name_is_a_peer_until_a_set_must_resolve_it() {
    // A name is accepted; a set resolves it, and a name that does not resolve is a typed
    // error, never a panic. `.invalid` never resolves (RFC 6761), and the hosts file has none.
    let name = Peer::new("nowhere.invalid:80").unwrap();
    let set = pingora_failover::PeerSet::builder(vec![name])
        .with_resolver(
            // A nameserver on a loopback port nothing listens on: the lookup fails fast.
            pingora_failover::Resolver::with_nameservers([support_refused()])
                .with_timeout(std::time::Duration::from_millis(200)),
        )
        .build();
    let err = set.unwrap_err();
    assert!(matches!(err, ConfigError::Resolve { .. }), "{err}");
    assert!(err.to_string().contains("nowhere.invalid:80"), "{err}");
}

#[cfg(not(feature = "dns"))]
#[test]
fn without_the_dns_feature_a_name_is_a_clear_error() {
    let name = Peer::new("api.internal:80").unwrap();
    let err = pingora_failover::PeerSet::new(vec![name]).unwrap_err();
    assert!(matches!(err, ConfigError::UnresolvedName { .. }), "{err}");
    assert!(err.to_string().contains("feature dns"), "{err}");
}

/// A loopback UDP address nothing answers on.
#[cfg(feature = "dns")]
fn support_refused() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[test]
fn weights() {
    let zero = Peer::builder("127.0.0.1:80").with_weight(0).build();
    assert_eq!(
        zero.unwrap_err(),
        ConfigError::ZeroWeight {
            peer: "127.0.0.1:80".into()
        }
    );
    let huge = Peer::builder("127.0.0.1:80").with_weight(1_000_000).build();
    assert!(matches!(
        huge,
        Err(ConfigError::WeightTooLarge {
            weight: 1_000_000,
            ..
        })
    ));
}

#[test]
fn zero_and_absurd_timeouts() {
    let b = || Peer::builder("127.0.0.1:80");
    assert_eq!(
        b().with_connect_timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::ZeroTimeout {
            what: "connect timeout"
        }
    );
    assert_eq!(
        b().with_read_timeout(Duration::ZERO).build().unwrap_err(),
        ConfigError::ZeroTimeout {
            what: "read timeout"
        }
    );
    assert!(matches!(
        b().with_connect_timeout(Duration::from_secs(3600)).build(),
        Err(ConfigError::TimeoutTooLong {
            what: "connect timeout",
            ..
        })
    ));
    assert!(matches!(
        b().with_write_timeout(Duration::from_secs(86_400)).build(),
        Err(ConfigError::TimeoutTooLong { .. })
    ));
    let list = || OrderedList::new(vec![peer("127.0.0.1:80")]).unwrap();
    let deadline = |d| {
        Failover::builder(list(), StandardPolicy::default())
            .with_deadline(d)
            .build(&ServerConf::default())
            .unwrap_err()
    };
    assert_eq!(
        deadline(Duration::ZERO),
        ConfigError::ZeroTimeout {
            what: "overall deadline"
        }
    );
    assert!(matches!(
        deadline(Duration::from_secs(100_000)),
        ConfigError::TimeoutTooLong { .. }
    ));
    assert!(Backoff::new(Duration::ZERO, Duration::from_millis(1)).is_err());
    assert!(RetryBudget::new(0.2, 10, Duration::ZERO).is_err());
}

#[test]
fn zero_and_absurd_attempts() {
    let p = StandardPolicy::builder;
    assert_eq!(
        p().with_max_attempts(0).build().unwrap_err(),
        ConfigError::ZeroAttempts
    );
    assert!(matches!(
        p().with_max_attempts(10_000).build(),
        Err(ConfigError::TooManyAttempts { .. })
    ));

    // A custom policy is checked as well.
    #[derive(Debug)]
    struct Never;
    impl RetryPolicy for Never {
        fn decide(&self, _: &Failure<'_>) -> RetryDecision {
            RetryDecision::Stop
        }
        fn max_attempts(&self) -> u32 {
            0
        }
    }
    let list = OrderedList::new(vec![peer("127.0.0.1:80")]).unwrap();
    assert_eq!(
        FailoverProxy::new(list, Never).unwrap_err(),
        ConfigError::ZeroAttempts
    );
}

#[test]
fn duplicate_peers() {
    let a = peer("127.0.0.1:80");
    let err = OrderedList::new(vec![a.clone(), a]).unwrap_err();
    assert!(matches!(err, ConfigError::DuplicatePeer { .. }));
    let err = RoundRobin::new(vec![peer("127.0.0.1:80"), peer("127.0.0.1:80")]).unwrap_err();
    assert!(matches!(err, ConfigError::DuplicatePeer { .. }));
}

#[test]
fn pingora_retry_cap_below_the_policy() {
    let list = OrderedList::new(vec![peer("127.0.0.1:80")]).unwrap();
    let policy = StandardPolicy::builder()
        .with_max_attempts(5)
        .build()
        .unwrap();
    let proxy = FailoverProxy::new(list, policy).unwrap();
    let conf = Arc::new(ServerConf {
        max_retries: 3,
        ..ServerConf::default()
    });
    let Err(err) = proxy.into_app(&conf) else {
        panic!("accepted a retry cap below the policy")
    };
    assert_eq!(
        err,
        ConfigError::PingoraRetryCapTooLow {
            pingora: 3,
            policy: 5
        }
    );
    assert!(err.to_string().contains("set max_retries to at least 5"));

    // An embedded engine cannot be built without the server's configuration.
    let list = OrderedList::new(vec![peer("127.0.0.1:80")]).unwrap();
    let policy = StandardPolicy::builder().with_max_attempts(5).build();
    let err = Failover::new(list, policy.unwrap(), &conf).unwrap_err();
    assert!(matches!(err, ConfigError::PingoraRetryCapTooLow { .. }));
}

#[cfg(not(any(feature = "openssl", feature = "boringssl", feature = "rustls")))]
#[test]
fn tls_without_a_tls_backend() {
    let err = Peer::builder("127.0.0.1:443")
        .with_tls("example.com")
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::TlsUnavailable { .. }));
    assert!(err.to_string().contains("enable the crate feature"));
}

#[test]
fn health_budget_and_backoff_settings() {
    use pingora_failover::OutlierDetection;
    let list = || OrderedList::new(vec![peer("127.0.0.1:80")]).unwrap();
    let with_rules = |rules: OutlierDetection| {
        Failover::builder(list(), StandardPolicy::default())
            .with_outlier_detection(rules)
            .build(&ServerConf::default())
            .unwrap_err()
    };
    assert!(matches!(
        with_rules(OutlierDetection::new().with_consecutive_failures(0)),
        ConfigError::OutOfRange {
            what: "consecutive failures",
            ..
        }
    ));
    assert!(matches!(
        with_rules(OutlierDetection::new().with_consecutive_connect_failures(0)),
        ConfigError::OutOfRange { .. }
    ));
    assert_eq!(
        with_rules(OutlierDetection::new().with_base_ejection(Duration::ZERO)),
        ConfigError::ZeroTimeout {
            what: "base ejection time"
        }
    );
    assert!(matches!(
        with_rules(OutlierDetection::new().with_max_ejection(Duration::from_secs(86_400))),
        ConfigError::TimeoutTooLong { .. }
    ));
    assert!(matches!(
        with_rules(
            OutlierDetection::new()
                .with_base_ejection(Duration::from_secs(60))
                .with_max_ejection(Duration::from_secs(10))
        ),
        ConfigError::OutOfRange { .. }
    ));

    for share in [-0.1, 1.1, f64::NAN] {
        assert!(list().with_panic_threshold(share).is_err(), "{share}");
        let rr = RoundRobin::new(vec![peer("127.0.0.1:80")]).unwrap();
        assert!(rr.with_panic_threshold(share).is_err(), "{share}");
    }
    for ratio in [-1.0, 11.0, f64::NAN, f64::INFINITY] {
        assert!(
            RetryBudget::new(ratio, 10, Duration::from_secs(10)).is_err(),
            "{ratio}"
        );
    }
    let ms = Duration::from_millis;
    assert!(Backoff::new(ms(100), ms(10)).is_err(), "base above cap");
    assert!(
        Backoff::new(ms(10), Duration::from_secs(600)).is_err(),
        "absurd cap"
    );
    assert!(StandardPolicy::builder()
        .with_retry_statuses([503, 99])
        .build()
        .is_err());
}

#[test]
fn recovery_probe_settings() {
    use pingora_failover::RecoveryProbe;

    assert!(matches!(
        RecoveryProbe::default().with_interval(Duration::from_nanos(1)),
        Err(ConfigError::TimeoutTooShort {
            what: "recovery probe interval",
            ..
        })
    ));
    assert!(RecoveryProbe::default()
        .with_interval(Duration::from_millis(100))
        .is_ok());
    assert!(matches!(
        RecoveryProbe::http("healthz"),
        Err(ConfigError::OutOfRange { .. })
    ));
    for bad in ["", "api example", "api\r\n.example", "api.example/x"] {
        assert!(
            matches!(
                RecoveryProbe::default().with_host(bad),
                Err(ConfigError::OutOfRange {
                    what: "recovery probe host",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    assert!(RecoveryProbe::default()
        .with_host("api.example:8443")
        .is_ok());
    assert!(RecoveryProbe::default().with_host("[::1]:8080").is_ok());
    for bad in [vec![], vec![99], vec![200, 600]] {
        assert!(
            matches!(
                RecoveryProbe::default().with_passing_statuses(bad.clone()),
                Err(ConfigError::OutOfRange {
                    what: "recovery probe passing statuses",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    assert!(RecoveryProbe::default()
        .with_passing_statuses(200..=499)
        .is_ok());
    for bad in [-0.1, 1.1, f64::NAN] {
        assert!(
            matches!(
                RecoveryProbe::default().with_jitter(bad),
                Err(ConfigError::OutOfRange {
                    what: "recovery probe jitter",
                    ..
                })
            ),
            "{bad}"
        );
    }
}
