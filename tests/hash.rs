//! Consistent hashing end to end: each key stays on its peer across requests, and when a peer
//! goes down only its keys move.

mod support;

use std::collections::HashMap;

use pingora_failover::{HashKey, HashRing, Peer, StandardPolicy};
use support::{client, start_failover, Mode, ProxyServer, Upstream};

/// Who answers each user's request now.
async fn owners(proxy: &ProxyServer, users: usize) -> HashMap<String, String> {
    let http = client();
    let mut owners = HashMap::new();
    for u in 0..users {
        let user = format!("user-{u}");
        let resp = http
            .get(proxy.url("/cart"))
            .header("x-user", &user)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        owners.insert(user, resp.text().await.unwrap());
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_stays_on_its_peer_and_only_a_failed_peers_keys_move() {
    let mut ups = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ups.push(Upstream::start(name, Mode::Ok).await);
    }
    let peers: Vec<Peer> = ups
        .iter()
        .map(|u| Peer::new(&u.peer_addr()).unwrap())
        .collect();
    let ring = HashRing::new(peers, HashKey::header("x-user").unwrap()).unwrap();
    let (proxy, _log) = start_failover(ring, StandardPolicy::default()).await;

    let before = owners(&proxy, 60).await;
    assert_eq!(owners(&proxy, 60).await, before, "a key changed peer");
    for up in &ups {
        assert!(
            before.values().any(|o| o == up.name),
            "{} owns no key",
            up.name
        );
    }

    // "b" goes down: its users fail over (no request fails), the others stay where they were.
    ups[1].stop_and_wait().await;
    let during = owners(&proxy, 60).await;
    for (user, owner) in &before {
        if owner == "b" {
            assert_ne!(during[user], "b");
        } else {
            assert_eq!(&during[user], owner, "{user} moved though its peer is up");
        }
    }
    // And they stay on their new peer.
    assert_eq!(owners(&proxy, 60).await, during);
}
