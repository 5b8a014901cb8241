//! Primary first, then backups in order.

use crate::error::ConfigError;
use crate::peer::{check_peers, Peer};
use crate::select::{Attempt, PeerSelector};

/// A priority list: every request goes to the first healthy peer it has not tried yet.
///
/// This is the classic active/backup pair, or a longer chain of fallbacks: the primary serves
/// all traffic while it works, and each retry moves one step down the list. An ejected primary
/// is skipped, so requests go straight to the first healthy backup; once its ejection ends, one
/// request probes it, and traffic returns to it when the probe succeeds. When every untried peer
/// is ejected, the one whose ejection ends first is tried anyway.
///
/// # Examples
///
/// ```
/// use pingora_failover::{Attempt, OrderedList, Peer, PeerSelector};
///
/// let primary = Peer::new("127.0.0.1:8080")?;
/// let backup = Peer::new("127.0.0.1:8081")?;
/// let list = OrderedList::new(vec![primary.clone(), backup])?;
/// assert_eq!(list.select(&Attempt::new(&[], None)), Some(primary));
/// # Ok::<(), pingora_failover::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OrderedList {
    peers: Box<[Peer]>,
}

impl OrderedList {
    /// A list tried in the order given.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoPeers`] for an empty list, [`ConfigError::DuplicatePeer`] when a peer
    /// appears twice.
    pub fn new(peers: Vec<Peer>) -> Result<Self, ConfigError> {
        check_peers(&peers)?;
        Ok(Self {
            peers: peers.into_boxed_slice(),
        })
    }

    /// The peers, in priority order.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }
}

impl PeerSelector for OrderedList {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        self.peers
            .iter()
            .find(|p| attempt.admits(p))
            .or_else(|| attempt.best_untried(self.peers.iter()))
            .cloned()
    }
}
