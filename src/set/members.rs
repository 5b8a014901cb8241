//! The set as configured: an ordered list of groups, each an address or a name with the peers it
//! resolved to. Only updates touch it, under the set's lock.

use std::collections::{HashMap, HashSet};

use crate::error::ConfigError;
use crate::peer::{Endpoint, Peer, MAX_WEIGHT};

pub(crate) struct Members {
    groups: Vec<Group>,
    next_id: u64,
}

struct Group {
    id: u64,
    /// The peer as given: an address, or a name whose settings each resolved address copies.
    spec: Peer,
    /// The peers the group stands for now: the spec itself for an address, the resolved
    /// addresses for a name.
    peers: Vec<Peer>,
    /// A name that has not resolved yet (and had no addresses from before).
    pending: bool,
}

impl Members {
    /// The members for `peers`, and the names among them (group id, spec) to resolve.
    pub(crate) fn new(peers: Vec<Peer>) -> (Self, Vec<(u64, Peer)>) {
        let mut m = Self {
            groups: Vec::new(),
            next_id: 1,
        };
        let names = m.replace(peers);
        (m, names)
    }

    /// Replaces every group; a name that was there before keeps its addresses until it
    /// resolves again. Returns the names to resolve.
    pub(crate) fn replace(&mut self, peers: Vec<Peer>) -> Vec<(u64, Peer)> {
        let old = std::mem::take(&mut self.groups);
        let mut names = Vec::new();
        let old_names: HashMap<_, &Group> = old
            .iter()
            .filter(|g| g.spec.endpoint().is_name())
            .map(|g| (g.spec.key(), g))
            .collect();
        for spec in peers {
            let kept = old_names
                .get(&spec.key())
                .map(|g| g.peers.clone())
                .unwrap_or_default();
            let group = self.group(spec, kept);
            if group.spec.endpoint().is_name() {
                names.push((group.id, group.spec.clone()));
            }
        }
        names
    }

    /// Adds `spec` at the end; the name to resolve, if it is one.
    pub(crate) fn add(&mut self, spec: Peer) -> Result<Vec<(u64, Peer)>, ConfigError> {
        if self.groups.iter().any(|g| g.spec.key() == spec.key()) {
            return Err(ConfigError::DuplicatePeer {
                peer: spec.to_string(),
            });
        }
        let group = self.group(spec, Vec::new());
        Ok(if group.spec.endpoint().is_name() {
            vec![(group.id, group.spec.clone())]
        } else {
            Vec::new()
        })
    }

    fn group(&mut self, spec: Peer, kept: Vec<Peer>) -> &Group {
        let pending = spec.endpoint().is_name() && kept.is_empty();
        let peers = if spec.endpoint().is_name() {
            kept
        } else {
            vec![spec.clone()]
        };
        self.groups.push(Group {
            id: self.next_id,
            spec,
            peers,
            pending,
        });
        self.next_id += 1;
        self.groups.last().expect("just pushed")
    }

    pub(crate) fn remove(&mut self, endpoint: &Endpoint) -> bool {
        let before = self.groups.len();
        self.groups.retain(|g| g.spec.endpoint() != endpoint);
        self.groups.len() != before
    }

    pub(crate) fn set_weight(
        &mut self,
        endpoint: &Endpoint,
        weight: u32,
    ) -> Result<bool, ConfigError> {
        let Some(group) = self
            .groups
            .iter_mut()
            .find(|g| g.spec.endpoint() == endpoint)
        else {
            return Ok(false);
        };
        if weight == 0 {
            return Err(ConfigError::ZeroWeight {
                peer: endpoint.to_string(),
            });
        }
        if weight > MAX_WEIGHT {
            return Err(ConfigError::WeightTooLarge {
                peer: endpoint.to_string(),
                weight,
                max: MAX_WEIGHT,
            });
        }
        group.spec = group.spec.reweighted(weight);
        group.peers = group.peers.iter().map(|p| p.reweighted(weight)).collect();
        Ok(true)
    }

    /// Sets the peers of name `group`: `Some(changed)`, or `None` when the group is gone.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    pub(crate) fn set_resolved(&mut self, group: u64, peers: Vec<Peer>) -> Option<bool> {
        let g = self.groups.iter_mut().find(|g| g.id == group)?;
        g.pending = false;
        let same = g.peers.len() == peers.len()
            && g.peers
                .iter()
                .zip(&peers)
                .all(|(a, b)| a.key() == b.key() && a.weight() == b.weight());
        if same {
            return Some(false);
        }
        g.peers = peers;
        Some(true)
    }

    /// Whether a name of the set has not resolved yet.
    pub(crate) fn pending(&self) -> bool {
        self.groups.iter().any(|g| g.pending)
    }

    /// The peers in order, with each peer that `current` already has under the same endpoint and
    /// server name kept as it is (or, when its settings changed, given its health), and a peer
    /// that two groups share listed once.
    pub(crate) fn flatten(&mut self, current: &[Peer]) -> Box<[Peer]> {
        let by_key: HashMap<_, &Peer> = current.iter().map(|q| (q.key(), q)).collect();
        let mut out: Vec<Peer> = Vec::new();
        for g in &mut self.groups {
            for p in &mut g.peers {
                if let Some(old) = by_key.get(&p.key()) {
                    if !old.same(p) {
                        *p = if old.same_settings(p) {
                            (*old).clone()
                        } else {
                            p.adopting(old)
                        };
                    }
                }
                out.push(p.clone());
            }
        }
        dedup_by_key(out).into_boxed_slice()
    }
}

/// Checks a list given to a set: no peer (or name) twice.
pub(crate) fn check(peers: &[Peer]) -> Result<(), ConfigError> {
    let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
    for p in peers {
        if !ids.insert(p.id()) || !keys.insert(p.key()) {
            return Err(ConfigError::DuplicatePeer {
                peer: p.to_string(),
            });
        }
    }
    Ok(())
}

/// Without a resolver, names are refused.
#[cfg_attr(feature = "dns", allow(dead_code))]
pub(crate) fn no_names(peers: &[Peer]) -> Result<(), ConfigError> {
    match peers.iter().find(|p| p.endpoint().is_name()) {
        Some(p) => Err(ConfigError::UnresolvedName {
            name: p.endpoint().to_string(),
        }),
        None => Ok(()),
    }
}

/// `peers` with each endpoint and server name once, the first kept (a name and an address, or
/// two names, may stand for the same peer).
fn dedup_by_key(peers: Vec<Peer>) -> Vec<Peer> {
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(peers.len());
        peers.iter().map(|p| seen.insert(p.key())).collect()
    };
    peers
        .into_iter()
        .zip(keep)
        .filter_map(|(p, keep)| keep.then_some(p))
        .collect()
}
