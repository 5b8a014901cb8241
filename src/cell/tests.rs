//! The cell through its facade: ejection, probes, re-admission.

use super::*;

fn rules() -> Thresholds {
    Thresholds {
        failures: 3,
        connect_failures: 1,
        base_ms: 10_000,
        max_ms: 25_000,
    }
}

#[tokio::test(start_paused = true)]
async fn ejects_after_the_threshold_and_a_success_resets_it() {
    let h = PeerHealth::default();
    let r = rules();
    assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r, None), None);
    assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r, None), None);
    assert!(!h.record_success());
    assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r, None), None);
    assert_eq!(h.record_failure(FailureKind::HeaderTimeout, &r, None), None);
    let ejected = h.record_failure(FailureKind::Status(503), &r, None);
    assert_eq!(
        ejected,
        Some(Ejection {
            time: Duration::from_secs(10),
            repeat: false
        })
    );
    assert!(matches!(h.state(), HealthState::Ejected { .. }));
    assert_eq!(h.claim(Duration::from_secs(1)), Admission::Refused);
}

#[tokio::test(start_paused = true)]
async fn one_connect_failure_ejects_and_ejections_grow_to_the_cap() {
    let h = PeerHealth::default();
    let r = rules();
    let window = Duration::from_secs(1);
    let mut times = Vec::new();
    for n in 0..4 {
        let e = h
            .record_failure(FailureKind::ConnectRefused, &r, None)
            .unwrap();
        assert_eq!(e.repeat, n > 0, "only the first ejection is new");
        let t = e.time;
        times.push(t);
        tokio::time::advance(t).await;
        assert_eq!(h.state(), HealthState::HalfOpen);
        assert_eq!(h.claim(window), Admission::Probe, "one probe");
        assert_eq!(h.claim(window), Admission::Refused, "only one");
        // The probe fails: the next loop sees the new, longer ejection.
    }
    let s = Duration::from_secs;
    assert_eq!(times, [s(10), s(20), s(25), s(25)]);
    // The probe succeeds: re-admitted. Ejected again at once, it is flapping: the next
    // ejection is longer still (capped). After a quiet spell as long as its last ejection,
    // it starts from the base again.
    assert!(h.record_success());
    assert_eq!(h.claim(window), Admission::Healthy);
    let again = h
        .record_failure(FailureKind::ConnectRefused, &r, None)
        .unwrap();
    assert_eq!((again.time, again.repeat), (s(25), false));
    tokio::time::advance(again.time).await;
    assert_eq!(h.claim(window), Admission::Probe);
    assert!(h.record_success());
    tokio::time::advance(s(25)).await;
    let quiet = h
        .record_failure(FailureKind::ConnectRefused, &r, None)
        .unwrap();
    assert_eq!((quiet.time, quiet.repeat), (s(10), false));
}

#[tokio::test(start_paused = true)]
async fn asking_claims_nothing() {
    let h = PeerHealth::default();
    let t = h
        .record_failure(FailureKind::ConnectRefused, &rules(), None)
        .unwrap()
        .time;
    assert_eq!(h.admission(), Admission::Refused);
    tokio::time::advance(t).await;
    for _ in 0..3 {
        assert_eq!(
            h.admission(),
            Admission::Probe,
            "a query leaves the slot free"
        );
    }
    let window = Duration::from_secs(1);
    assert_eq!(h.claim(window), Admission::Probe);
    assert_eq!(h.admission(), Admission::Refused, "the slot is taken");
    assert_eq!(h.claim(window), Admission::Refused);
}

#[tokio::test(start_paused = true)]
async fn a_lost_probe_frees_the_slot_after_its_window() {
    let h = PeerHealth::default();
    let t = h
        .record_failure(FailureKind::ConnectTimeout, &rules(), None)
        .unwrap()
        .time;
    tokio::time::advance(t).await;
    let window = Duration::from_secs(2);
    assert_eq!(h.claim(window), Admission::Probe);
    assert_eq!(h.claim(window), Admission::Refused);
    tokio::time::advance(window).await;
    assert_eq!(
        h.claim(window),
        Admission::Probe,
        "the first probe never reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_failing_its_active_check_is_newly_ejected_not_again() {
    // In panic mode a request can reach a peer held out by its active check; ejecting it
    // then is a new ejection, so that the ejected-peers gauge and re-admission balance.
    let h = PeerHealth::default();
    h.set_check_failed(true);
    let e = h
        .record_failure(FailureKind::ConnectRefused, &rules(), None)
        .unwrap();
    assert!(!e.repeat);
    h.set_check_failed(false);
    assert!(h.record_success(), "re-admitted");
}

#[tokio::test(start_paused = true)]
async fn a_success_from_before_the_ejection_does_not_readmit() {
    let h = PeerHealth::default();
    h.record_failure(FailureKind::ConnectRefused, &rules(), None)
        .unwrap();
    // A request sent while the peer was healthy answers after the ejection.
    assert!(!h.record_success_counted(false, &NoTally, None));
    assert!(matches!(h.state(), HealthState::Ejected { .. }));
    // Its probe (or an attempt sent while it was out) does.
    assert!(h.record_success_counted(true, &NoTally, None));
    assert_eq!(h.state(), HealthState::Healthy);
}
