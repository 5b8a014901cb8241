//! Consistent hashing: a request key always maps to the same peer, through a Ketama ring.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_ketama::{Bucket, Continuum};

use crate::error::ConfigError;
use crate::peer::{Endpoint, Peer};
use crate::select::{Attempt, PanicThreshold, PeerSelector};
use crate::set::{Derive, PeerSet, Snapshot};

/// What a request is hashed by: a header, the path, the URI, the client's address, or a hash of
/// the caller's own.
#[derive(Clone)]
pub struct HashKey(Key);

#[derive(Clone)]
enum Key {
    /// Lowercase, checked to be a header name.
    Header(Box<str>),
    Path,
    Uri,
    ClientIp,
    Custom(CustomKey),
}

/// A caller's hash of an attempt.
type CustomKey = Arc<dyn Fn(&Attempt<'_>) -> Option<u64> + Send + Sync>;

impl HashKey {
    /// The value of the request header `name`; requests without it are hashed by their path.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] when `name` is not a valid header name.
    pub fn header(name: &str) -> Result<Self, ConfigError> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(ConfigError::OutOfRange {
                what: "hash key header name",
                value: name.to_owned(),
                range: "a valid HTTP header name",
            });
        }
        Ok(Self(Key::Header(name.to_ascii_lowercase().into())))
    }

    /// The request path, without the query.
    pub fn path() -> Self {
        Self(Key::Path)
    }

    /// The path and the query.
    pub fn uri() -> Self {
        Self(Key::Uri)
    }

    /// The client's IP address (nginx's `hash $remote_addr consistent`); requests with no
    /// known client address are hashed by their path.
    pub fn client_ip() -> Self {
        Self(Key::ClientIp)
    }

    /// A hash of the caller's choosing, computed from the attempt; `None` falls back to the
    /// path.
    pub fn custom(f: impl Fn(&Attempt<'_>) -> Option<u64> + Send + Sync + 'static) -> Self {
        Self(Key::Custom(Arc::new(f)))
    }

    /// Feeds the attempt's key to `f`; nothing is allocated.
    fn with_key<R>(&self, attempt: &Attempt<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
        let request = attempt.request();
        let path = || request.map_or(&b""[..], |r| r.uri.path().as_bytes());
        match &self.0 {
            Key::Header(name) => {
                let value = request.and_then(|r| r.headers.get(&**name));
                f(value.map_or_else(path, |v| v.as_bytes()))
            }
            Key::Path => f(path()),
            Key::Uri => f(request.map_or(&b""[..], |r| {
                r.uri
                    .path_and_query()
                    .map_or(r.uri.path().as_bytes(), |pq| pq.as_str().as_bytes())
            })),
            Key::ClientIp => match attempt.client_ip() {
                Some(std::net::IpAddr::V4(ip)) => f(&ip.octets()),
                Some(std::net::IpAddr::V6(ip)) => f(&ip.octets()),
                None => f(path()),
            },
            Key::Custom(key) => match key(attempt) {
                Some(hash) => f(&hash.to_le_bytes()),
                None => f(path()),
            },
        }
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Key::Header(name) => write!(f, "HashKey::header({name:?})"),
            Key::Path => f.write_str("HashKey::path()"),
            Key::Uri => f.write_str("HashKey::uri()"),
            Key::ClientIp => f.write_str("HashKey::client_ip()"),
            Key::Custom(_) => f.write_str("HashKey::custom(..)"),
        }
    }
}

/// The ring for one snapshot of the set: Ketama points per peer (160 per unit of weight, as
/// nginx), and the way back from a point's address to the peer.
struct Ring {
    /// The snapshot the ring was built from: a selection reads its peers here, so ring and
    /// peers always agree.
    snapshot: Arc<Snapshot>,
    continuum: Continuum,
    /// Ring addresses, sorted, with the index of their peer in the snapshot.
    index: Box<[(SocketAddr, u32)]>,
    points: usize,
}

impl Ring {
    fn new(snapshot: Arc<Snapshot>) -> Self {
        let mut index: Vec<(SocketAddr, u32)> = snapshot
            .peers()
            .iter()
            .enumerate()
            .map(|(i, p)| (ring_addr(p), i as u32))
            .collect();
        let buckets: Vec<Bucket> = snapshot
            .peers()
            .iter()
            .map(|p| Bucket::new(ring_addr(p), p.weight().max(1)))
            .collect();
        index.sort_unstable();
        let per_unit = pingora_ketama::DEFAULT_POINT_MULTIPLE as usize;
        let points = snapshot
            .peers()
            .iter()
            .map(|p| p.weight().max(1) as usize * per_unit)
            .sum();
        Self {
            snapshot,
            continuum: Continuum::new(&buckets),
            index: index.into_boxed_slice(),
            points,
        }
    }

    fn peer_index(&self, addr: &SocketAddr) -> Option<usize> {
        self.index
            .binary_search_by(|(a, _)| a.cmp(addr))
            .ok()
            .map(|i| self.index[i].1 as usize)
    }
}

/// The address a peer has on the ring: its socket address, so that the ring is nginx's for the
/// same servers; a Unix socket gets a stable stand-in (an address from its path's hash in
/// `fd00::/8`, never connected to).
fn ring_addr(peer: &Peer) -> SocketAddr {
    match peer.endpoint() {
        Endpoint::Inet(addr) => *addr,
        other => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            other.to_string().hash(&mut h);
            let bits = (u128::from(h.finish()) << 56) | 0xfd << 120;
            SocketAddr::from((Ipv6Addr::from(bits), 1))
        }
    }
}

/// Consistent hashing over a Ketama ring (pingora-ketama; nginx's `hash ... consistent`,
/// HAProxy's `balance uri|hdr` with `hash-type consistent`, Envoy's ring hash).
///
/// A request's key (see [`HashKey`]) maps to the same peer every time, for caches and sticky
/// sessions. Each peer has 160 points on the ring per unit of weight.
/// - **Retries** go to the next distinct peer clockwise on the ring that the request has not
///   tried, so a key's retries are as stable as its first attempts.
/// - **Ejection** skips the peer: only its keys move, to the peers that follow it on the ring,
///   and they move back when it is re-admitted.
/// - **Set changes** rebuild the ring once per change, in the update that makes the new
///   snapshot and before it is published, never on the request path: adding or removing one of
///   n peers moves about 1/n of the keys, and no others. (A ring of 200 peers of weight 100 has
///   3.2 million points.)
/// - **Bounded load**, when asked for ([`with_bounded_load`](Self::with_bounded_load)): a key's
///   peer loaded past `c` times the average moves the request on to the next peer clockwise.
///
/// Selection allocates nothing.
pub struct HashRing {
    set: PeerSet,
    key: HashKey,
    ring: Arc<RingCell>,
    panic: PanicThreshold,
    /// The bounded-load factor `c`, when on.
    balance: Option<f64>,
}

/// The ring of the set's current snapshot, rebuilt by each update of the set.
struct RingCell(ArcSwap<Ring>);

impl Derive for RingCell {
    fn rebuild(&self, snapshot: &Arc<Snapshot>) {
        self.0.store(Arc::new(Ring::new(snapshot.clone())));
    }
}

impl fmt::Debug for HashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRing")
            .field("set", &self.set)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl HashRing {
    /// A ring over `peers`, hashing requests by `key`.
    ///
    /// # Errors
    ///
    /// As [`PeerSet::new`].
    pub fn new(peers: Vec<Peer>, key: HashKey) -> Result<Self, ConfigError> {
        PeerSet::new(peers).map(|set| Self::from_set(set, key))
    }

    /// A ring over `set`, following its changes: the ring is built here, and again by every
    /// update of the set.
    pub fn from_set(set: PeerSet, key: HashKey) -> Self {
        let ring = Arc::new(RingCell(ArcSwap::from_pointee(Ring::new(set.peers()))));
        set.derive(ring.clone());
        Self {
            set,
            key,
            ring,
            panic: PanicThreshold::NEVER,
            balance: None,
        }
    }

    /// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018; Envoy's
    /// `hash_balance_factor`, HAProxy's `hash-balance-factor`): a peer may have at most
    /// `ceil(factor × (requests in flight + 1) / peers)` requests in flight; a key whose peer is
    /// past it goes on to the next peer clockwise that is not. A hot key spills over a few
    /// peers instead of flattening one, and every other key stays where it is while its peer
    /// has room. `factor` is 1.0 to 10.0 (Envoy suggests 1.25 to 1.5); weights are not taken
    /// into the bound. The loads are read, not claimed: two threads choosing at the same
    /// instant may both take a peer's last place.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a factor outside 1.0..=10.0.
    pub fn with_bounded_load(mut self, factor: f64) -> Result<Self, ConfigError> {
        if !(1.0..=10.0).contains(&factor) {
            return Err(ConfigError::OutOfRange {
                what: "hash balance factor",
                value: factor.to_string(),
                range: "1.0..=10.0",
            });
        }
        self.balance = Some(factor);
        Ok(self)
    }

    /// As [`RoundRobin::with_panic_threshold`](crate::RoundRobin::with_panic_threshold).
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for a share outside 0.0..=1.0.
    pub fn with_panic_threshold(mut self, share: f64) -> Result<Self, ConfigError> {
        self.panic = PanicThreshold::new(share)?;
        Ok(self)
    }

    /// The set the ring is built from.
    pub fn set(&self) -> &PeerSet {
        &self.set
    }

    /// The peer `key` maps to while every peer is healthy, for tests and diagnostics.
    pub fn owner(&self, key: &[u8]) -> Option<Peer> {
        let ring = self.ring.0.load();
        let addr = ring.continuum.node(key)?;
        ring.peer_index(&addr)
            .map(|i| ring.snapshot.peers()[i].clone())
    }
}

impl PeerSelector for HashRing {
    fn select(&self, attempt: &Attempt<'_>) -> Option<Peer> {
        let ring = self.ring.0.load();
        let peers = ring.snapshot.peers();
        if peers.is_empty() {
            return None;
        }
        let panic = self.panic.reached(peers);
        // With bounded loads, what a peer may have in flight now: one pass over the peers.
        let bound = self.balance.map(|factor| {
            let total: u64 = peers
                .iter()
                .map(|p| u64::from(p.health().in_flight()))
                .sum();
            (factor * (total + 1) as f64 / peers.len() as f64).ceil() as u64
        });
        let room = |p: &Peer| bound.is_none_or(|b| u64::from(p.health().in_flight()) < b);
        let mut idx = self.key.with_key(attempt, |k| ring.continuum.node_idx(k));
        // Clockwise from the key's point: the first peer that takes the attempt (and has room,
        // with bounded loads). Every point is visited at most once, so a ring where no peer takes
        // it ends the walk.
        let mut last = None;
        let mut changes = 0;
        // The first peer that takes the attempt but is past its bound: the ring's own choice when
        // no peer has room where the attempt may go.
        let mut over = None;
        for _ in 0..ring.points.max(1) {
            let Some(addr) = ring.continuum.get_addr(&mut idx) else {
                break;
            };
            if last == Some(*addr) {
                continue;
            }
            last = Some(*addr);
            changes += 1;
            // Long past every peer's turn: stop walking if no peer can take the attempt.
            if changes == 4 * peers.len()
                && (over.is_some() || !peers.iter().any(|p| attempt.takes(p, panic)))
            {
                break;
            }
            if let Some(i) = ring.peer_index(addr) {
                if attempt.takes(&peers[i], panic) {
                    if room(&peers[i]) {
                        return Some(peers[i].clone());
                    }
                    over.get_or_insert(i);
                }
            }
        }
        if let Some(i) = over {
            return Some(peers[i].clone());
        }
        attempt.best_untried(peers.iter()).cloned()
    }

    fn peer_set(&self) -> Option<&PeerSet> {
        Some(&self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::AttemptRecord;
    use crate::{FailureKind, OutlierDetection};
    use pingora_http::RequestHeader;

    fn ring(n: u16) -> HashRing {
        let peers = (0..n)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 2000 + i)).unwrap())
            .collect();
        HashRing::new(peers, HashKey::path()).unwrap()
    }

    fn request(path: &str) -> RequestHeader {
        RequestHeader::build("GET", path.as_bytes(), None).unwrap()
    }

    fn pick(ring: &HashRing, path: &str, tried: &[AttemptRecord]) -> Peer {
        let req = request(path);
        ring.select(&Attempt::new(tried, Some(&req))).unwrap()
    }

    fn owners(ring: &HashRing, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| pick(ring, &format!("/k{k}"), &[]).name().to_owned())
            .collect()
    }

    #[test]
    fn a_key_maps_to_the_same_peer_every_time() {
        let r = ring(5);
        let first = owners(&r, 200);
        assert_eq!(owners(&r, 200), first);
        // Every peer owns some keys.
        for p in r.set().snapshot().iter() {
            assert!(first.iter().any(|o| o == p.name()), "{p} owns nothing");
        }
    }

    #[test]
    fn a_retry_goes_to_the_next_distinct_untried_peer() {
        let r = ring(4);
        let mut tried = Vec::new();
        for _ in 0..4 {
            let p = pick(&r, "/key", &tried);
            assert!(tried.iter().all(|t: &AttemptRecord| !t.peer().same(&p)));
            tried.push(AttemptRecord::new(p));
        }
        // The same order every time: a key's retries are as stable as its first attempt.
        let again: Vec<_> = (0..4)
            .scan(Vec::new(), |tried: &mut Vec<AttemptRecord>, _| {
                let p = pick(&r, "/key", tried);
                tried.push(AttemptRecord::new(p.clone()));
                Some(p)
            })
            .collect();
        let first: Vec<_> = tried.iter().map(|t| t.peer().clone()).collect();
        assert_eq!(again, first);
    }

    #[tokio::test(start_paused = true)]
    async fn ejecting_a_peer_moves_only_its_keys_and_readmission_moves_them_back() {
        let r = ring(5);
        let before = owners(&r, 500);
        let victim = r.set().snapshot()[2].clone();
        let t = OutlierDetection::new()
            .record_failure(&victim, FailureKind::ConnectRefused)
            .unwrap()
            .time;
        let during = owners(&r, 500);
        for (b, d) in before.iter().zip(&during) {
            if b == victim.name() {
                assert_ne!(d, victim.name());
            } else {
                assert_eq!(b, d, "a key of a healthy peer moved");
            }
        }
        tokio::time::advance(t).await;
        assert!(victim.health().record_success());
        assert_eq!(owners(&r, 500), before);
    }

    #[test]
    fn removing_one_of_n_peers_moves_about_one_nth_of_the_keys_and_no_others() {
        let r = ring(8);
        let before = owners(&r, 2000);
        let gone = r.set().snapshot()[5].name().to_owned();
        assert!(r.set().remove(&gone));
        let after = owners(&r, 2000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        for (b, a) in before.iter().zip(&after) {
            assert!(
                b == a || *b == gone,
                "{b} -> {a}: only the removed peer's keys move"
            );
        }
        let owned = before.iter().filter(|b| **b == gone).count();
        assert_eq!(moved, owned);
        // About 1/8 of 2000, within Ketama's spread.
        assert!((150..=350).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn an_update_builds_the_ring_before_any_request() {
        let r = ring(4);
        let peers: Vec<Peer> = (0..6)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 2100 + i)).unwrap())
            .collect();
        r.set().replace(peers).unwrap();
        // Built by the replace, for the snapshot it published.
        let built = r.ring.0.load();
        assert_eq!(built.snapshot.version(), r.set().snapshot().version());
        assert_eq!(built.snapshot.len(), 6);
        assert_eq!(built.points, 6 * 160);
    }

    #[test]
    fn header_and_client_keys() {
        let peers: Vec<Peer> = (0..4)
            .map(|i| Peer::new(&format!("127.0.0.1:{}", 3000 + i)).unwrap())
            .collect();
        let by_user = HashRing::new(peers.clone(), HashKey::header("X-User").unwrap()).unwrap();
        let mut req = request("/a");
        req.insert_header("x-user", "alice").unwrap();
        let a = by_user.select(&Attempt::new(&[], Some(&req))).unwrap();
        let mut other = request("/b");
        other.insert_header("x-user", "alice").unwrap();
        assert_eq!(by_user.select(&Attempt::new(&[], Some(&other))).unwrap(), a);
        assert!(HashKey::header("bad header").is_err());

        let by_ip = HashRing::new(peers, HashKey::client_ip()).unwrap();
        let ip = Some("10.1.2.3".parse().unwrap());
        let first = by_ip
            .select(&Attempt::new(&[], None).with_client_ip(ip))
            .unwrap();
        for _ in 0..5 {
            let again = by_ip.select(&Attempt::new(&[], None).with_client_ip(ip));
            assert_eq!(again.unwrap(), first);
        }
    }
}
