//! The set as configured: an ordered list of groups, each an address or a name with the peers it
//! resolved to. Only updates touch it, under the set's lock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::error::ConfigError;
use crate::peer::{Endpoint, Peer, MAX_WEIGHT};

pub(crate) struct Members {
    groups: Vec<Group>,
    next_id: u64,
}

/// One address a name resolved to, with the weight its SRV record gave (none for A/AAAA).
pub(crate) type Resolved = (SocketAddr, Option<u32>);

struct Group {
    id: u64,
    /// The peer as given: an address, or a name whose settings each resolved address copies.
    spec: Peer,
    /// For a name, the addresses it resolved to last.
    resolved: Vec<Resolved>,
    /// The peers the group stands for now: the spec itself for an address, one peer per
    /// resolved address (built from the spec) for a name.
    peers: Vec<Peer>,
    /// A name that has not resolved yet (and had no addresses from before).
    pending: bool,
}

impl Group {
    /// The peers of a name: its spec's settings at each resolved address.
    fn rebuild(&mut self) {
        self.peers = self
            .resolved
            .iter()
            .map(|(addr, weight)| self.spec.resolved(*addr, *weight))
            .collect();
    }
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

    /// Replaces every group; a name that was there before keeps its addresses (with the new
    /// settings) until it resolves again. Returns the names to resolve.
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
                .map(|g| g.resolved.clone())
                .unwrap_or_default();
            let group = self.group(spec, kept);
            if group.spec.endpoint().is_name() {
                names.push((group.id, group.spec.clone()));
            }
        }
        names
    }

    /// Every name of the set (group id, spec), to resolve again.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    pub(crate) fn names(&self) -> Vec<(u64, Peer)> {
        self.groups
            .iter()
            .filter(|g| g.spec.endpoint().is_name())
            .map(|g| (g.id, g.spec.clone()))
            .collect()
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

    fn group(&mut self, spec: Peer, resolved: Vec<Resolved>) -> &Group {
        let name = spec.endpoint().is_name();
        let mut group = Group {
            id: self.next_id,
            pending: name && resolved.is_empty(),
            peers: vec![spec.clone()],
            spec,
            resolved,
        };
        if name {
            group.rebuild();
        }
        self.next_id += 1;
        self.groups.push(group);
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
        if group.spec.endpoint().is_name() {
            // The spec's weight applies to A/AAAA addresses; SRV records keep their own.
            group.rebuild();
        } else {
            group.peers = vec![group.spec.clone()];
        }
        Ok(true)
    }

    /// Sets the addresses of name `group`: `Some(changed)`, or `None` when the group is gone.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    pub(crate) fn set_resolved(&mut self, group: u64, resolved: Vec<Resolved>) -> Option<bool> {
        let g = self.groups.iter_mut().find(|g| g.id == group)?;
        g.pending = false;
        if g.resolved == resolved {
            return Some(false);
        }
        g.resolved = resolved;
        g.rebuild();
        Some(true)
    }

    /// Whether a name of the set has not resolved yet.
    pub(crate) fn pending(&self) -> bool {
        self.groups.iter().any(|g| g.pending)
    }

    /// Whether the set stands for no peer at all now.
    pub(crate) fn flatten_is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.peers.is_empty())
    }

    /// The peers in order. A peer that `current` already has under the same endpoint and
    /// server name keeps its handle if nothing about it changed, and its health (and so its
    /// identity) if its weight or settings did. A peer that two groups share is listed once.
    pub(crate) fn flatten(&mut self, current: &[Peer]) -> Box<[Peer]> {
        let by_key: HashMap<_, &Peer> = current.iter().map(|q| (q.key(), q)).collect();
        let mut out: Vec<Peer> = Vec::new();
        for g in &mut self.groups {
            for p in &mut g.peers {
                if let Some(old) = by_key.get(&p.key()) {
                    if !old.same(p) {
                        *p = p.adopting(old);
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
