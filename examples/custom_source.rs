//! A `Source` written outside the crate, as a user would for a registry the crate does not
//! know (a control plane, Consul, Kubernetes endpoints): here, a "registry" that moves the
//! service from one upstream to another every second. The source runs as a pingora background
//! service, so it starts in the process that serves (after the fork of daemon mode) and stops
//! at shutdown. It starts two upstreams on loopback, runs a pingora `Server` on 127.0.0.1:6195,
//! sends a request every 300 ms for three seconds, printing who answered, and exits:
//!
//! ```text
//! cargo run --example custom_source
//! ```
//!
//! Copy it into your project with `pingora-failover`, `tokio` (features `rt-multi-thread`,
//! `macros`, `net`, `time`), `axum` and `reqwest` as dependencies.

use std::time::Duration;

use pingora_failover::pingora::{async_trait, Server};
use pingora_failover::{
    ConfigError, FailoverProxy, Feed, OrderedList, Peer, PeerSet, Source, SourceEvent,
    SourceService, StandardPolicy,
};

const LISTEN: &str = "127.0.0.1:6195";

/// The registry: which upstream serves the service at its `revision`. A real source would ask
/// its registry here (a blocking query, a watch, a poll).
struct Registry {
    upstreams: Vec<String>,
}

impl Registry {
    fn lookup(&self, revision: u64) -> Result<Vec<Peer>, ConfigError> {
        let i = usize::try_from(revision).unwrap_or(0) % self.upstreams.len();
        Ok(vec![Peer::new(&self.upstreams[i])?])
    }
}

#[async_trait]
impl Source for Registry {
    async fn run(&self, feed: &Feed) {
        // Start where the last run (or the first read) left off.
        let mut revision = feed.state().revision.unwrap_or(0);
        loop {
            revision += 1;
            match self.lookup(revision) {
                // Peers that stay keep their health; a refused list keeps the set as it was,
                // and the feed reports it.
                Ok(peers) => {
                    let _ = feed.replace(peers, Some(revision));
                }
                Err(e) => feed.failed(&e),
            }
            if !feed.sleep(Duration::from_secs(1)).await {
                return; // the server is shutting down
            }
        }
    }
}

/// A loopback upstream answering `name` to everything, on its own thread.
fn upstream(name: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(move || async move { name });
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr.to_string()
}

/// Sends a request every 300 ms for three seconds once the proxy listens, then ends the
/// process.
fn drive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        while tokio::net::TcpStream::connect(LISTEN).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..10 {
            let r = http.get(format!("http://{LISTEN}/")).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            println!("request {i}: {status} from {body}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    std::process::exit(0);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry {
        upstreams: vec![upstream("blue"), upstream("green")],
    };
    // The first peers, read before the server starts; the source keeps them in step after.
    let set = PeerSet::new(registry.lookup(0)?)?;
    let source = SourceService::new("registry", registry, &set).on_event(|name, event| {
        if let SourceEvent::Updated { peers, revision } = event {
            println!("{name}: {peers} peer(s) at revision {revision:?}");
        }
    });
    let proxy = FailoverProxy::new(OrderedList::from_set(set), StandardPolicy::default())?;

    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = proxy.into_service(&server.configuration)?;
    service.add_tcp(LISTEN);
    server.add_service(service);
    server.add_service(source.into_service());

    std::thread::spawn(drive);
    server.run_forever()
}
