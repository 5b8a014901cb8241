//! Choosing the upstream for each attempt of a request.
//!
//! A [`PeerSelector`] is asked once per attempt. It sees an [`Attempt`]: which attempt this is,
//! which peers the request already tried and how they failed, and the request header (for
//! routing by path or header). The stock selectors are [`OrderedList`] (primary, then backups)
//! and [`RoundRobin`] (weighted, lock-free).

mod ordered;
mod round_robin;

pub use ordered::OrderedList;
pub use round_robin::RoundRobin;

use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::ctx::AttemptRecord;
use crate::peer::Peer;

/// Chooses the upstream for one attempt of one request.
///
/// Shared by every request on every thread, so it takes `&self`: keep shared state in atomics.
/// The trait is object-safe; `Box<dyn PeerSelector>` and `Arc<dyn PeerSelector>` are selectors
/// too.
///
/// # Examples
///
/// A selector that sends `/admin` to its own peer and everything else to the rest:
///
/// ```
/// use pingora_failover::{Attempt, Peer, PeerSelector};
///
/// struct AdminSplit { admin: Peer, others: Vec<Peer> }
///
/// impl PeerSelector for AdminSplit {
///     fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
///         let admin = attempt.request().is_some_and(|r| r.uri.path().starts_with("/admin"));
///         let first = admin.then_some(&self.admin).into_iter();
///         first.chain(&self.others).find(|p| !attempt.has_tried(p)).cloned()
///     }
/// }
/// ```
pub trait PeerSelector: Send + Sync + 'static {
    /// The peer for this attempt, or `None` when no candidate is left.
    ///
    /// A selector should not return a peer the request already tried
    /// ([`Attempt::has_tried`]) while an untried one remains.
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer>;
}

impl<T: PeerSelector + ?Sized> PeerSelector for Box<T> {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        (**self).select(attempt)
    }
}

impl<T: PeerSelector + ?Sized> PeerSelector for Arc<T> {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        (**self).select(attempt)
    }
}

/// What a selector knows about the attempt it chooses for.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    tried: &'a [AttemptRecord],
    request: Option<&'a RequestHeader>,
}

impl<'a> Attempt<'a> {
    /// An attempt that follows the `tried` ones, for `request` when there is one.
    pub fn new(tried: &'a [AttemptRecord], request: Option<&'a RequestHeader>) -> Self {
        Self { tried, request }
    }

    /// The attempt number, starting at 1.
    pub fn number(&self) -> u32 {
        self.tried.len() as u32 + 1
    }

    /// Whether this is a retry (not the first attempt).
    pub fn is_retry(&self) -> bool {
        !self.tried.is_empty()
    }

    /// Whether this request already tried `peer`.
    pub fn has_tried(&self, peer: &Peer) -> bool {
        self.tried.iter().any(|r| r.peer().same(peer))
    }

    /// The earlier attempts of this request, oldest first.
    pub fn tried(&self) -> &'a [AttemptRecord] {
        self.tried
    }

    /// The request being proxied (absent when a selector is driven outside a proxy).
    pub fn request(&self) -> Option<&'a RequestHeader> {
        self.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_is_object_safe() {
        let s: Box<dyn PeerSelector> =
            Box::new(OrderedList::new(vec![Peer::new("127.0.0.1:1").unwrap()]).unwrap());
        let shared: Arc<dyn PeerSelector> = Arc::new(s);
        assert!(shared.select(&Attempt::new(&[], None)).is_some());
    }
}
