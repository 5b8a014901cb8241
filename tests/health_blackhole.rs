//! A blackholed primary stops costing anything once it is ejected: counted at the blackhole.
//!
//! Alone in its test binary because it reads the kernel's machine-wide count of dropped SYNs.

mod support;

use std::time::Duration;

use pingora_failover::{
    Failover, FailoverProxy, OrderedList, OutlierDetection, Peer, StandardPolicy,
};
use support::{client, start_proxy, Blackhole, Mode, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_threshold_requests_skip_the_blackholed_primary() {
    let hole = Blackhole::start().await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary = Peer::builder(hole.peer_addr())
        .with_connect_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let list = OrderedList::new(vec![primary, Peer::new(&backup.peer_addr()).unwrap()]);
    let threshold: u32 = 2;
    // The connect threshold alone: with learned timeouts, the connects after the first are
    // abandoned at the others' connect time, and an abandoned connect counts as any failure
    // (`adaptive::a_peer_with_no_connect_of_its_own_borrows_the_others_connect_time`).
    let engine = Failover::builder(list.unwrap(), StandardPolicy::default())
        .without_adaptive_timeouts()
        .with_outlier_detection(
            OutlierDetection::new()
                .with_consecutive_connect_failures(threshold)
                .with_base_ejection(Duration::from_secs(60)),
        );
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    let http = client();
    for _ in 0..20 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "backup");
    }
    assert_eq!(
        hole.connection_attempts(),
        u64::from(threshold),
        "only the requests before the ejection reached the blackhole"
    );
    assert_eq!(backup.hits(), 20);
    let records = log.wait_for(20).await;
    let tried_primary = records.iter().filter(|r| r.len() == 2).count();
    assert_eq!(tried_primary, threshold as usize);
}
