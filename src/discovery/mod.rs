//! Where a [`PeerSet`](crate::PeerSet)'s peers come from besides a static list: names resolved
//! by DNS, a peers file, pingora-load-balancing's discovery, etcd, and any [`Source`] of your
//! own, run by a [`SourceService`].

#[cfg(feature = "etcd")]
pub mod etcd;
mod file;
#[cfg(feature = "discovery")]
mod lb;
mod service;
mod source;

// Names are members of a set (each expands in its place in the order), so resolving them is the
// set's own work: the resolver lives in `set::dns`, and is offered here beside the other sources.
#[cfg(feature = "dns")]
pub use crate::set::dns::Resolver;

use std::sync::Arc;

use crate::peer::{Peer, PeerBuilder};

/// Settings a source applies to every peer it makes (timeouts, TLS, ...).
pub(crate) type PeerSettings = Arc<dyn Fn(PeerBuilder) -> PeerBuilder + Send + Sync>;

/// A builder for a peer at `addr` that a source made, with its `settings` applied.
pub(crate) fn builder(addr: impl Into<String>, settings: Option<&PeerSettings>) -> PeerBuilder {
    let builder = Peer::builder(addr);
    match settings {
        Some(f) => f(builder),
        None => builder,
    }
}
pub use file::PeersFile;
#[cfg(feature = "discovery")]
pub(crate) use lb::peer_of;
#[cfg(feature = "discovery")]
pub use lb::Discovered;
pub use service::{SourceService, SourceStatus};
pub use source::{Feed, Source, SourceEvent, SourceState};
