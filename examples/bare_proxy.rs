//! The baseline for the end-to-end benchmarks: a pingora proxy with the same server settings as
//! `failover_proxy` and no failover library. With `--backup`, it fails over the way a pingora
//! proxy written by hand usually does: a try counter in `CTX`, and one retry of a connect
//! failure, on the backup.
//!
//! ```text
//! cargo run --release --example bare_proxy -- --listen 127.0.0.1:6190 --peer 127.0.0.1:8080 \
//!     [--backup 127.0.0.1:8081] [--connect-timeout-ms 400] [--read-timeout-ms 1000] [--threads 1] \
//!     [--http h2]
//! ```
//!
//! It allocates through mimalloc, as `failover_proxy` does, so that the benchmarks compare the
//! proxies and not their allocators.
//!
//! Copy it into your project with `async-trait`, `pingora-core`, `pingora-error`, `pingora-http`,
//! `pingora-proxy` and `mimalloc` as dependencies.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: SocketAddr,
    backup: Option<SocketAddr>,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    /// The upstreams speak HTTP/2 in clear text (h2c, by prior knowledge).
    h2: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    /// Tries so far.
    type CTX = u32;

    fn new_ctx(&self) -> u32 {
        0
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        tries: &mut u32,
    ) -> Result<Box<HttpPeer>> {
        let addr = match (*tries, self.backup) {
            (0, _) | (_, None) => self.peer,
            (_, Some(backup)) => backup,
        };
        *tries += 1;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = self.connect_timeout;
        peer.options.read_timeout = self.read_timeout;
        if self.h2 {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        tries: &mut u32,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: retry once, on the backup.
        if *tries == 1 && self.backup.is_some() {
            e.set_retry(true);
        }
        e
    }
}

fn main() {
    let (mut listen, mut peer, mut threads) = (None, None, 1usize);
    let (mut backup, mut connect_timeout, mut read_timeout) = (None, None, None);
    let mut h2 = false;
    let ms = |v: &str| Some(Duration::from_millis(v.parse().expect("a number of ms")));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().expect("every flag takes a value");
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--peer" => peer = Some(value.parse().expect("--peer IP:PORT")),
            "--backup" => backup = Some(value.parse().expect("--backup IP:PORT")),
            "--connect-timeout-ms" => connect_timeout = ms(&value),
            "--read-timeout-ms" => read_timeout = ms(&value),
            "--threads" => threads = value.parse().expect("--threads N"),
            "--http" => {
                h2 = match value.as_str() {
                    "h1" => false,
                    "h2" => true,
                    other => panic!("--http h1 | h2, not {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare {
        peer: peer.expect("--peer IP:PORT"),
        backup,
        connect_timeout,
        read_timeout,
        h2,
    };
    let mut service = http_proxy_service(&server.configuration, bare);
    service.add_tcp(&listen.expect("--listen ADDR"));
    server.add_service(service);
    server.run_forever()
}
