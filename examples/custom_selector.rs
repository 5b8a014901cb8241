//! A `PeerSelector` written outside the crate, as a user would: requests carrying
//! `x-tenant: NAME` go to that tenant's dedicated upstream, and fall back to the shared pool in
//! order when it fails. Runs in-process against two upstreams of its own, then exits.
//!
//! ```text
//! cargo run --example custom_selector
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;

use pingora_failover::{Attempt, FailoverProxy, Peer, PeerSelector, StandardPolicy};
use support::{client, start_proxy, Mode, Upstream};

/// Dedicated peers by tenant, then a shared pool.
struct TenantSelector {
    dedicated: HashMap<String, Peer>,
    shared: Vec<Peer>,
}

impl PeerSelector for TenantSelector {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let tenant = attempt
            .request()
            .and_then(|r| r.headers.get("x-tenant"))
            .and_then(|v| v.to_str().ok())
            .and_then(|t| self.dedicated.get(t));
        // The tenant's own peer first, then the pool: the first that is untried and healthy (or
        // this request's probe of an ejected peer), and if none is, the best untried one.
        let candidates = tenant.into_iter().chain(&self.shared);
        candidates
            .clone()
            .find(|p| attempt.admits(p))
            .or_else(|| attempt.best_untried(candidates))
            .cloned()
    }
}

#[tokio::main]
async fn main() {
    let acme = Upstream::start("acme-dedicated", Mode::Ok).await;
    let pool = Upstream::start("shared-pool", Mode::Ok).await;
    let selector = TenantSelector {
        dedicated: HashMap::from([("acme".to_owned(), Peer::new(&acme.peer_addr()).unwrap())]),
        shared: vec![Peer::new(&pool.peer_addr()).unwrap()],
    };
    let proxy = FailoverProxy::new(selector, StandardPolicy::default()).unwrap();
    let (proxy, _log) = start_proxy(proxy).await;
    let http = client();

    for (tenant, note) in [
        (Some("acme"), "dedicated upstream up"),
        (None, "no tenant"),
        (Some("acme"), "dedicated upstream down"),
    ] {
        if note.ends_with("down") {
            acme.stop();
        }
        let mut req = http.get(proxy.url("/"));
        if let Some(t) = tenant {
            req = req.header("x-tenant", t);
        }
        let body = req.send().await.unwrap().text().await.unwrap();
        println!(
            "tenant {:<6} ({note}): answered by {body}",
            tenant.unwrap_or("-")
        );
    }
}
