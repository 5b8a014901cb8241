//! Embedding the engine in a `ProxyHttp` of one's own: what a missing delegation does.

mod support;

use async_trait::async_trait;
use pingora_failover::pingora::{Error, HttpPeer, ProxyHttp, Result, Session};
use pingora_failover::{Failover, FailoverCtx, OrderedList, Peer, RetryBudget, StandardPolicy};
use pingora_proxy::http_proxy;
use std::sync::Arc;
use std::time::Duration;
use support::{client, refused_addr, server_conf, Mode, ProxyServer, Upstream};

/// Which of the failure hooks the proxy hands to the engine.
#[derive(Clone, Copy, PartialEq)]
enum Wiring {
    /// `upstream_peer` and `fail_to_connect` (the only failure these tests meet); no `logging`.
    WithoutLogging,
    /// `upstream_peer` only: failures are marked for retry by the proxy itself.
    PeerOnly,
}

struct Embedder {
    failover: Arc<Failover<OrderedList, StandardPolicy>>,
    wiring: Wiring,
}

#[async_trait]
impl ProxyHttp for Embedder {
    type CTX = FailoverCtx;

    fn new_ctx(&self) -> FailoverCtx {
        FailoverCtx::new()
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut FailoverCtx,
    ) -> Result<Box<HttpPeer>> {
        self.failover.upstream_peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut FailoverCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if self.wiring == Wiring::PeerOnly {
            // The proxy's own rule, bypassing the engine.
            e.set_retry(true);
            return e;
        }
        self.failover.fail_to_connect(session, peer, ctx, e)
    }
}

fn selector(peers: &[String]) -> OrderedList {
    OrderedList::new(peers.iter().map(|a| Peer::new(a).unwrap()).collect()).unwrap()
}

#[tokio::test]
async fn a_retry_that_bypasses_the_engine_fails_loudly_instead_of_skipping_its_rules() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let conf = server_conf();
    let peers = [refused_addr(), backup.peer_addr()];
    let failover = Failover::new(selector(&peers), StandardPolicy::default(), &conf).unwrap();
    let app = Embedder {
        failover: Arc::new(failover),
        wiring: Wiring::PeerOnly,
    };
    let proxy = ProxyServer::start(http_proxy(&conf, app)).await;
    let resp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(backup.hits(), 0, "the unchecked retry was not sent");
}

#[tokio::test]
async fn a_retry_decided_but_never_made_goes_back_to_the_budget_without_logging() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = [refused_addr(), backup.peer_addr()];
    // The engine is checked against a server allowing its two attempts, then runs under one
    // allowing a single attempt: every retry it decides is cut short by pingora.
    let checked = pingora_failover::pingora::ServerConf {
        max_retries: 2,
        ..Default::default()
    };
    let policy = StandardPolicy::builder().with_max_attempts(2).build();
    let failover = Failover::builder(selector(&peers), policy.unwrap())
        .with_budget(RetryBudget::new(0.0, 5, Duration::from_secs(10)).unwrap())
        .without_outlier_detection()
        .build(&checked)
        .unwrap();
    let failover = Arc::new(failover);
    let app = Embedder {
        failover: failover.clone(),
        wiring: Wiring::WithoutLogging,
    };
    let running = Arc::new(pingora_failover::pingora::ServerConf {
        max_retries: 1,
        ..Default::default()
    });
    let proxy = ProxyServer::start(http_proxy(&running, app)).await;
    let before = failover.budget().unwrap().remaining();
    let http = client();
    for _ in 0..3 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 502, "pingora's cap ends the request");
    }
    assert_eq!(backup.hits(), 0);
    assert_eq!(
        failover.budget().unwrap().remaining(),
        before,
        "each retry paid for and never made was given back"
    );
}
