//! Production-grade failover for [Pingora](https://github.com/cloudflare/pingora) HTTP proxies.
//!
//! Pingora hands a proxy two raw hooks, `fail_to_connect` and `error_while_proxy`, and a retry
//! flag. This crate builds the rest on them: which upstream each attempt goes to
//! ([`PeerSelector`]), whether a failure is worth another attempt ([`RetryPolicy`]), and the
//! rules that keep a retry safe (never after the response started, never a non-idempotent
//! request that reached the upstream, never a body that cannot be replayed, never past the
//! attempt cap, the deadline or the [`RetryBudget`]). It fails over on connect failures, on a
//! slow upstream (response header timeout), on a closed reused connection and on chosen statuses.
//!
//! # Quick start
//!
//! ```no_run
//! use std::sync::Arc;
//! use pingora_core::server::{configuration::ServerConf, Server};
//! use pingora_failover::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let selector = OrderedList::new(vec![
//!     Peer::new("127.0.0.1:8080")?, // primary
//!     Peer::new("127.0.0.1:8081")?, // backup
//! ])?;
//! let proxy = FailoverProxy::new(selector, StandardPolicy::default())?;
//!
//! let mut server = Server::new(None)?;
//! server.bootstrap();
//! let mut service = proxy.into_service(&server.configuration)?;
//! service.add_tcp("127.0.0.1:6188");
//! server.add_service(service);
//! server.run_forever();
//! # }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
// Unsafe code is denied everywhere but in the platform part of the cut (`cut::sys`), which
// borrows a connection's descriptor.
#![deny(unsafe_code)]

mod cell;
pub mod classify;
pub mod ctx;
mod cut;
pub mod discovery;
pub mod error;
mod fork;
pub mod health;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod peer;
pub mod proxy;
pub mod retry;
mod rng;
pub mod select;
pub mod set;
mod sync;

pub use ctx::{AttemptRecord, FailoverCtx, Outcome, StopReason, Verdict};
pub use cut::AdaptiveTimeouts;
#[cfg(feature = "discovery")]
pub use discovery::Discovered;
#[cfg(feature = "dns")]
pub use discovery::Resolver;
pub use discovery::{
    Feed, PeersFile, Source, SourceEvent, SourceService, SourceState, SourceStatus,
};
pub use error::ConfigError;
#[cfg(feature = "active-health")]
pub use health::ActiveHealthCheck;
pub use health::{
    Admission, HealthChange, HealthEvent, HealthState, OutlierDetection, PeerHealth, RecoveryProbe,
};
#[cfg(feature = "metrics")]
pub use metrics::Metrics;
pub use peer::{Endpoint, HttpVersion, Peer, PeerBuilder};
pub use proxy::{Failover, FailoverBuilder, FailoverProxy, Hedging, WarmUp};
pub use retry::{
    Backoff, Failure, FailureKind, RetryBudget, RetryDecision, RetryPolicy, StandardPolicy,
};
#[cfg(feature = "discovery")]
pub use select::LoadBalancerSelector;
pub use select::{
    Attempt, Cost, HashKey, HashRing, InFlight, LeastRequest, OrderedList, PanicThreshold,
    PeakEwma, PeakLatency, PeerSelector, PriorityTiers, RoundRobin, SlowStart, TwoChoices,
};
pub use set::{PeerSet, PeerSetBuilder, Snapshot};

/// The pingora types this crate's API hands you, from the versions it was built with: write
/// hooks and embed the engine without naming four pingora crates (and matching their versions)
/// yourself.
pub mod pingora {
    pub use pingora_core::protocols::Digest;
    pub use pingora_core::server::configuration::ServerConf;
    pub use pingora_core::server::Server;
    pub use pingora_core::upstreams::peer::HttpPeer;
    pub use pingora_error::{Error, ErrorSource, ErrorType, Result};
    pub use pingora_http::{RequestHeader, ResponseHeader};
    pub use pingora_proxy::{http_proxy_service, FailToProxy, HttpProxy, ProxyHttp, Session};

    /// The attribute pingora's `ProxyHttp` trait (and the crate's [`Source`](crate::Source)) is
    /// written with, for implementing it.
    pub use async_trait::async_trait;
}

/// The prometheus crate this crate's [`Metrics`] registers on, at the version pingora serves.
#[cfg(feature = "metrics")]
pub use prometheus;

/// The types most proxies need.
pub mod prelude {
    pub use crate::{
        Attempt, ConfigError, Failover, FailoverCtx, FailoverProxy, OrderedList, Peer,
        PeerSelector, PeerSet, RetryPolicy, RoundRobin, StandardPolicy,
    };
}
