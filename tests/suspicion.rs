//! In-flight suspicion: a peer that answers nothing while requests wait on it is avoided by new
//! requests before any timeout fires; its first answer clears it.

mod support;

use std::time::Duration;

use pingora_failover::{Failover, FailoverProxy, OrderedList, Peer, StandardPolicy};
use support::{client, start_proxy, Mode, Upstream};

/// A primary and a backup, both answering at once with a 5 s read timeout, in that order, behind
/// a proxy with the engine's defaults; five GETs answered by the primary. The primary's peer.
async fn warm_primary() -> (
    Upstream,
    Upstream,
    Peer,
    support::ProxyServer,
    support::RequestLog,
) {
    let primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let read = Duration::from_secs(5);
    let peer = |addr: &str| Peer::builder(addr).with_read_timeout(read).build().unwrap();
    let p = peer(&primary.peer_addr());
    let list = OrderedList::new(vec![p.clone(), peer(&backup.peer_addr())]).unwrap();
    let engine = Failover::builder(list, StandardPolicy::default());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;
    let http = client();
    for _ in 0..5 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "primary");
    }
    (primary, backup, p, proxy, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_avoid_a_peer_that_stalls_and_return_once_it_answers() {
    let (primary, _backup, p, proxy, log) = warm_primary().await;
    let http = client();
    assert!(!p.health().is_suspected());

    // The primary stops answering; two POSTs wait on it (a GET would be cut and retried first,
    // a POST never is).
    primary.set_mode(Mode::Slow(Duration::from_secs(2)));
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (http.clone(), proxy.url("/"));
            tokio::spawn(async move {
                let resp = http.post(url).body("x").send().await.unwrap();
                resp.text().await.unwrap()
            })
        })
        .collect();
    support::eventually("the primary suspected", || p.health().is_suspected()).await;
    primary.set_mode(Mode::Ok);
    // New requests go straight to the backup: one attempt each, no timeout waited out.
    for _ in 0..3 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "backup");
    }
    let records = log.wait_for(8).await;
    for attempts in &records[5..8] {
        assert_eq!(attempts.len(), 1, "{attempts:?}");
    }
    // The waiting requests get their (slow) answers from the primary, which clears it.
    for w in waiting {
        assert_eq!(w.await.unwrap(), "primary");
    }
    assert!(!p.health().is_suspected());
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "primary");
}

/// The requests caught on a peer as it hangs are cut and retried elsewhere before enough of
/// them are counted to eject it: a request sent meanwhile goes to the other peer at once
/// rather than wait on the hung one in turn (a second wave), though nothing waits on it any
/// more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_after_a_cut_does_not_wait_on_the_hung_peer() {
    let (primary, _backup, p, proxy, log) = warm_primary().await;
    let http = client();
    primary.set_mode(Mode::Hang);
    // Cut once the primary leaves its liveness check unanswered, and retried on the backup.
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert!(p.health().is_healthy(), "one cut ejects no peer");
    let hits = primary.hits();
    let resp = http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "backup");
    assert_eq!(
        primary.hits(),
        hits,
        "the next request never reached the primary"
    );
    let records = log.wait_for(7).await;
    assert_eq!(records[5].len(), 2, "{:?}", records[5]);
    assert_eq!(records[6].len(), 1, "{:?}", records[6]);
}
