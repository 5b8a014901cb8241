//! Where a [`PeerSet`](crate::PeerSet)'s peers come from besides a static list: names resolved
//! by DNS, a peers file, and pingora-load-balancing's discovery.

#[cfg(feature = "dns")]
pub(crate) mod dns;
mod file;
#[cfg(feature = "discovery")]
mod lb;

#[cfg(feature = "dns")]
pub use dns::Resolver;

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
pub use lb::{Discovered, LoadBalancerSelector};
