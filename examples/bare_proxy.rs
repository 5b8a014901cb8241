//! The baseline for the end-to-end benchmark: a pingora proxy with no failover logic at all, one
//! fixed upstream, the same server settings as `failover_proxy`.
//!
//! ```text
//! cargo run --release --example bare_proxy -- --listen 127.0.0.1:6190 --peer 127.0.0.1:8080 --threads 1
//! ```

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

struct Bare {
    peer: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }
}

fn main() {
    let (mut listen, mut peer, mut threads) = (None, None, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().expect("every flag takes a value");
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--peer" => peer = Some(value.parse().expect("--peer IP:PORT")),
            "--threads" => threads = value.parse().expect("--threads N"),
            other => panic!("unknown flag {other}"),
        }
    }
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare {
        peer: peer.expect("--peer IP:PORT"),
    };
    let mut service = http_proxy_service(&server.configuration, bare);
    service.add_tcp(&listen.expect("--listen ADDR"));
    server.add_service(service);
    server.run_forever()
}
