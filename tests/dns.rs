//! Peers by name, resolved through a nameserver the test runs on loopback: the proxy follows the
//! records as they change, keeps the last good set when the nameserver goes silent, takes ports
//! and weights from SRV records, and reports a name that does not resolve.
#![cfg(feature = "dns")]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pingora_failover::{
    ConfigError, HealthChange, OrderedList, Peer, PeerSet, Resolver, RoundRobin, StandardPolicy,
};
use support::dns::TestDns;
use support::{client, start_failover, Events, Mode, Proto, Upstream};

const TTL: u32 = 1;

fn resolver(dns: &TestDns) -> Resolver {
    Resolver::with_nameservers([dns.addr])
        .with_min_refresh(Duration::from_millis(200))
        .with_timeout(Duration::from_millis(300))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two upstreams on the same port, at 127.0.0.2 and 127.0.0.3: one name, two addresses.
async fn two_hosts() -> (Upstream, Upstream, u16) {
    let a = Upstream::start_at("a", Mode::Ok, Proto::H1, "127.0.0.2:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b_addr = SocketAddr::new(ip("127.0.0.3"), port);
    let b = Upstream::start_at("b", Mode::Ok, Proto::H1, b_addr).await;
    (a, b, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_a_name_whose_records_change_within_the_ttl() {
    let (_a, _b, port) = two_hosts().await;
    let dns = TestDns::start(TTL).await;
    dns.set_ips("api.test", &[ip("127.0.0.2")]);
    let set = PeerSet::builder(vec![Peer::new(&format!("api.test:{port}")).unwrap()])
        .with_resolver(resolver(&dns))
        .build_async()
        .await
        .unwrap();
    assert_eq!(set.snapshot().len(), 1);
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "a");

    let queries = dns.queries();
    dns.set_ips("api.test", &[ip("127.0.0.3")]);
    let took = proxy.until_answered_by("b").await;
    assert!(dns.queries() > queries, "looked up again");
    // Within the TTL, plus one lookup.
    assert!(
        took < Duration::from_secs(u64::from(TTL) + 2),
        "took {took:?}"
    );
    let names: Vec<_> = set.snapshot().iter().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, [format!("127.0.0.3:{port}")]);

    // Both addresses: each a peer, in address order.
    dns.set_ips("api.test", &[ip("127.0.0.3"), ip("127.0.0.2")]);
    support::eventually("never grew", || set.snapshot().len() == 2).await;
    assert_eq!(
        proxy.get_text(&client(), "/").await,
        "a",
        "127.0.0.2 comes first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_nameserver_goes_silent_the_last_good_set_is_kept() {
    let (_a, _b, port) = two_hosts().await;
    let dns = TestDns::start(TTL).await;
    dns.set_ips("api.test", &[ip("127.0.0.2")]);
    let events = Events::default();
    let set = PeerSet::builder(vec![Peer::new(&format!("api.test:{port}")).unwrap()])
        .with_resolver(resolver(&dns))
        .on_change(events.observer())
        .build_async()
        .await
        .unwrap();
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;

    dns.set_silent(true);
    // The lookup after the TTL times out: reported, and the set kept.
    events
        .wait_until(|e| e.1 == HealthChange::ResolveFailed)
        .await;
    assert_eq!(set.snapshot().len(), 1);
    for _ in 0..5 {
        assert_eq!(proxy.get_text(&client(), "/").await, "a");
    }
    // It answers again, with another address: followed.
    dns.set_ips("api.test", &[ip("127.0.0.3")]);
    dns.set_silent(false);
    proxy.until_answered_by("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_the_ports_and_the_weights() {
    let heavy =
        Upstream::start_at("heavy", Mode::Ok, Proto::H1, "127.0.0.2:0".parse().unwrap()).await;
    let light =
        Upstream::start_at("light", Mode::Ok, Proto::H1, "127.0.0.3:0".parse().unwrap()).await;
    let dns = TestDns::start(TTL).await;
    dns.set_srv(
        "_http._tcp.svc.test",
        &[
            (10, 3, heavy.addr.port(), "heavy.test"),
            (10, 1, light.addr.port(), "light.test"),
        ],
    );
    dns.set_ips("heavy.test", &[ip("127.0.0.2")]);
    dns.set_ips("light.test", &[ip("127.0.0.3")]);
    let set = PeerSet::builder(vec![Peer::new("_http._tcp.svc.test").unwrap()])
        .with_resolver(resolver(&dns))
        .build_async()
        .await
        .unwrap();
    let peers: Vec<_> = set
        .snapshot()
        .iter()
        .map(|p| (p.addr().unwrap(), p.weight()))
        .collect();
    assert_eq!(peers, [(heavy.addr, 3), (light.addr, 1)]);

    let (proxy, _log) = start_failover(RoundRobin::from_set(set), StandardPolicy::default()).await;
    let http = client();
    for _ in 0..40 {
        proxy.get_text(&http, "/").await;
    }
    assert_eq!((heavy.hits(), light.hits()), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_an_error_or_an_empty_start_on_request() {
    let up = Upstream::start_at("up", Mode::Ok, Proto::H1, "127.0.0.2:0".parse().unwrap()).await;
    let dns = TestDns::start(TTL).await;
    let name = || vec![Peer::new(&format!("late.test:{}", up.addr.port())).unwrap()];

    let err = PeerSet::builder(name())
        .with_resolver(resolver(&dns))
        .build_async()
        .await
        .unwrap_err();
    assert!(matches!(err, ConfigError::Resolve { .. }), "{err}");
    assert!(err.to_string().contains("late.test"), "{err}");

    let set = PeerSet::builder(name())
        .with_resolver(resolver(&dns))
        .start_empty_until_resolved()
        .build_async()
        .await
        .unwrap();
    assert!(set.snapshot().is_empty());
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "no peer yet");

    dns.set_ips("late.test", &[ip("127.0.0.2")]);
    proxy.until_answered_by("up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_resolves_from_the_hosts_file_with_the_system_resolver() {
    let up = Upstream::start("local", Mode::Ok).await;
    // Sync build, as in a `main` before the server starts; localhost never leaves the machine.
    let list = tokio::task::spawn_blocking(move || {
        OrderedList::new(vec![
            Peer::new(&format!("localhost:{}", up.addr.port())).unwrap()
        ])
        .map(|l| (l, up))
    })
    .await
    .unwrap();
    let (list, up) = list.unwrap();
    let addrs: Vec<_> = list
        .peers()
        .iter()
        .map(|p| p.addr().unwrap().ip())
        .collect();
    assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
    let (proxy, _log) = start_failover(list, StandardPolicy::default()).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "local");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_addresses_takes_a_name_later() {
    let (a, _b, port) = two_hosts().await;
    let dns = TestDns::start(TTL).await;
    dns.set_ips("api.test", &[ip("127.0.0.3")]);
    let set = PeerSet::builder(vec![Peer::new(&a.peer_addr()).unwrap()])
        .with_resolver(resolver(&dns))
        .build_async()
        .await
        .unwrap();
    let (proxy, _log) = start_failover(
        OrderedList::from_set(set.clone()),
        StandardPolicy::default(),
    )
    .await;
    assert_eq!(proxy.get_text(&client(), "/").await, "a");
    // A peers file or an operator swaps the address for a name: it resolves in the background,
    // and the old peer serves until it has.
    set.replace(vec![Peer::new(&format!("api.test:{port}")).unwrap()])
        .unwrap();
    proxy.until_answered_without_gap_by("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_weight_for_a_name_outlives_its_next_lookup() {
    let (_a, _b, port) = two_hosts().await;
    let dns = TestDns::start(TTL).await;
    dns.set_ips("api.test", &[ip("127.0.0.2")]);
    let name = format!("api.test:{port}");
    let set = PeerSet::builder(vec![Peer::new(&name).unwrap()])
        .with_resolver(resolver(&dns))
        .build_async()
        .await
        .unwrap();
    assert!(set.set_weight(&name, 5).unwrap());
    // The next lookup brings a second address: both carry the new weight.
    dns.set_ips("api.test", &[ip("127.0.0.2"), ip("127.0.0.3")]);
    support::eventually("never looked up again", || set.snapshot().len() == 2).await;
    let weights: Vec<_> = set.snapshot().iter().map(|p| p.weight()).collect();
    assert_eq!(weights, [5, 5]);
}

/// `build()` called from async code waits for its names on the calling thread; on a
/// multi-thread runtime the thread's other tasks go on meanwhile, even with a single worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_blocking_build_in_async_code_lets_the_runtime_go_on() {
    let dns = TestDns::start(TTL).await;
    dns.set_silent(true);
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // Let the ticker start, then block for the resolver's timeout (300 ms).
    support::eventually("the ticker ran", || {
        ticks.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    // Built in a task, on the runtime's one worker, as a handler or a service would.
    let build = tokio::spawn({
        let (ticks, resolver) = (ticks.clone(), resolver(&dns));
        async move {
            let before = ticks.load(std::sync::atomic::Ordering::SeqCst);
            let built = PeerSet::builder(vec![Peer::new("api.test:80").unwrap()])
                .with_resolver(resolver)
                .build();
            (
                built,
                ticks.load(std::sync::atomic::Ordering::SeqCst) - before,
            )
        }
    });
    let (built, during) = build.await.unwrap();
    ticker.abort();
    assert!(
        matches!(built, Err(ConfigError::Resolve { .. })),
        "{built:?}"
    );
    assert!(during > 0, "the runtime's only worker was blocked");
}
