//! Where a [`PeerSet`](crate::PeerSet)'s peers come from besides a static list: names resolved
//! by DNS, a peers file, and pingora-load-balancing's discovery.

#[cfg(feature = "dns")]
pub(crate) mod dns;
mod file;
#[cfg(feature = "discovery")]
mod lb;

#[cfg(feature = "dns")]
pub use dns::Resolver;
pub use file::PeersFile;
#[cfg(feature = "discovery")]
pub use lb::{Discovered, LoadBalancerSelector};
