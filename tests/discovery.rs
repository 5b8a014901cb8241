//! pingora-load-balancing plugged in: a `ServiceDiscovery` (its `Static`, swapped for another)
//! drives a live proxy's peer set, and an existing `LoadBalancer` becomes a selector with
//! failover.
#![cfg(feature = "discovery")]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_failover::{Discovered, LoadBalancerSelector, RoundRobin, StandardPolicy};
use pingora_load_balancing::discovery::{ServiceDiscovery, Static};
use pingora_load_balancing::{selection, Backend, LoadBalancer};
use support::{client, refused_addr, start_failover, Mode, Upstream};

/// pingora-load-balancing's `Static`, replaced by another when the fleet changes.
#[derive(Clone)]
struct Fleet(Arc<ArcSwap<Static>>);

impl Fleet {
    fn new(addrs: &[String]) -> Self {
        Self(Arc::new(ArcSwap::from(Self::discovery(addrs))))
    }

    fn discovery(addrs: &[String]) -> Arc<Static> {
        let backends: BTreeSet<Backend> = addrs.iter().map(|a| Backend::new(a).unwrap()).collect();
        Arc::from(Static::new(backends))
    }

    fn set(&self, addrs: &[String]) {
        self.0.store(Self::discovery(addrs));
    }
}

#[async_trait]
impl ServiceDiscovery for Fleet {
    async fn discover(
        &self,
    ) -> pingora_error::Result<(BTreeSet<Backend>, std::collections::HashMap<u64, bool>)> {
        self.0.load_full().discover().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_discovery_drives_a_live_proxy() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let fleet = Fleet::new(&[a.peer_addr()]);
    let source = Discovered::new(Box::new(fleet.clone()), Duration::from_millis(50)).unwrap();
    let set = source.discover_set().await.unwrap();
    source.watch(&set).unwrap();
    let (proxy, _log) =
        start_failover(RoundRobin::from_set(set.clone()), StandardPolicy::default()).await;
    let http = client();
    assert_eq!(proxy.get_text(&http, "/").await, "a");

    fleet.set(&[b.peer_addr()]);
    proxy.until_answered_by("b").await;
    let names: Vec<_> = set.snapshot().iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, [b.peer_addr()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_gains_failover_in_one_line() {
    let up = Upstream::start("up", Mode::Ok).await;
    let dead = refused_addr();
    let lb = LoadBalancer::<selection::RoundRobin>::try_from_iter([
        dead.as_str(),
        up.peer_addr().as_str(),
    ])
    .unwrap();
    let (proxy, log) = start_failover(
        LoadBalancerSelector::new(Arc::new(lb)),
        StandardPolicy::default(),
    )
    .await;

    let http = client();
    for _ in 0..10 {
        assert_eq!(proxy.get_text(&http, "/").await, "up");
    }
    let resp = proxy.post_order("/", "order-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.ids().get("order-1"), Some(&1));
    let records = log.wait_for(11).await;
    // The dead backend was tried once, then ejected and skipped: every other request went
    // straight to the live one.
    let tried_dead = records
        .iter()
        .flatten()
        .filter(|a| a.peer().name() == dead)
        .count();
    assert_eq!(tried_dead, 1);
}
