//! Every way a configuration can be wrong.

use std::time::Duration;

/// A configuration the crate refuses to build.
///
/// Every constructor that takes user input returns this instead of panicking. The messages are
/// lowercase and say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A selector was given an empty list of peers.
    #[error("no peers: give the selector at least one upstream peer")]
    NoPeers,

    /// A peer address is none of the accepted forms.
    #[error(
        "invalid peer address {address:?}: expected IP:PORT (127.0.0.1:8080, [::1]:8080), \
         HOST:PORT (api.internal:8080), an SRV name (_http._tcp.api.internal) or unix:/path"
    )]
    InvalidAddress {
        /// The address as given.
        address: String,
    },

    /// A peer address has port 0, which no upstream listens on.
    #[error(
        "invalid peer address {address:?}: port 0 cannot be connected to; give the upstream's port"
    )]
    ZeroPort {
        /// The address as given.
        address: String,
    },

    /// The same peer appears twice in one selector.
    #[error(
        "peer {peer} is listed twice: list each upstream once and use its weight to favour it"
    )]
    DuplicatePeer {
        /// The repeated peer.
        peer: String,
    },

    /// A peer weight of zero.
    #[error("peer {peer}: weight must be at least 1; remove the peer instead of weighting it 0")]
    ZeroWeight {
        /// The peer.
        peer: String,
    },

    /// A peer weight above the maximum (`peer::MAX_WEIGHT`, given in `max`).
    #[error("peer {peer}: weight {weight} is above the maximum of {max}; scale the weights down")]
    WeightTooLarge {
        /// The peer.
        peer: String,
        /// The weight given.
        weight: u32,
        /// The largest weight accepted.
        max: u32,
    },

    /// A timeout of zero, which would fail every request at once.
    #[error("{what} must be greater than zero")]
    ZeroTimeout {
        /// Which timeout.
        what: &'static str,
    },

    /// A timeout so long it cannot take effect or would hold requests for no purpose.
    #[error("{what} of {value:?} is above the maximum of {max:?}; choose a shorter one")]
    TimeoutTooLong {
        /// Which timeout.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The longest value accepted.
        max: Duration,
    },

    /// A time so short it would busy the proxy and the upstream for no purpose.
    #[error("{what} of {value:?} is below the minimum of {min:?}; choose a longer one")]
    TimeoutTooShort {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest value accepted.
        min: Duration,
    },

    /// A priority tier whose selector does not name the peers it chooses from.
    #[error(
        "priority tier {tier}: its selector does not name its peers, so the tier's health is \
         unknown; use a stock selector or implement PeerSelector::peer_set"
    )]
    TierWithoutPeerSet {
        /// The tier's index, from 0.
        tier: usize,
    },

    /// A retry policy allowing zero attempts, which would never contact an upstream.
    #[error("max attempts must be at least 1 (1 means a single try and no retry)")]
    ZeroAttempts,

    /// A retry policy allowing more attempts than any failover needs.
    #[error(
        "max attempts {value} is above the maximum of {max}; use a retry budget, not a huge count"
    )]
    TooManyAttempts {
        /// The value given.
        value: u32,
        /// The largest value accepted.
        max: u32,
    },

    /// A peer asks for TLS but pingora was built without a TLS back-end.
    #[error(
        "peer {peer} uses TLS but pingora has no TLS back-end: enable the crate feature \
         openssl, boringssl or rustls"
    )]
    TlsUnavailable {
        /// The peer.
        peer: String,
    },

    /// TLS with an empty server name, which would turn every certificate check off.
    #[error(
        "peer {peer}: TLS needs a server name to verify the certificate against; an empty one \
         turns verification off (use without_certificate_verification to mean that)"
    )]
    EmptySni {
        /// The peer.
        peer: String,
    },

    /// A TLS setting on a peer that does not use TLS, or a protocol choice that needs it.
    #[error("peer {peer}: {setting} needs TLS: add with_tls(sni) to the peer")]
    TlsRequired {
        /// The peer.
        peer: String,
        /// The setting.
        setting: &'static str,
    },

    /// Certificates or a key that could not be read.
    #[error("peer {peer}: the {what} could not be read: {reason}")]
    InvalidPem {
        /// The peer.
        peer: String,
        /// What was being read: "trusted CA" or "client certificate".
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// Pingora's own attempt cap would silently cut the retry policy short.
    #[error(
        "pingora's ServerConf::max_retries is {pingora}, below the {policy} attempts the retry \
         policy allows: set max_retries to at least {policy}"
    )]
    PingoraRetryCapTooLow {
        /// `ServerConf::max_retries` (pingora counts attempts, not retries).
        pingora: usize,
        /// The policy's maximum number of attempts.
        policy: u32,
    },

    /// A peer given by name where only addresses can be used.
    #[error(
        "peer {name} is a name: resolve it through a PeerSet (feature dns), which turns it into \
         one peer per address and follows changes"
    )]
    UnresolvedName {
        /// The name.
        name: String,
    },

    /// A name did not resolve when the set was built.
    #[error(
        "could not resolve {name}: {reason}; check the name and the nameservers, or let the set \
         start empty and wait (PeerSetBuilder::start_empty_until_resolved)"
    )]
    Resolve {
        /// The name.
        name: String,
        /// Why, as the resolver said.
        reason: String,
    },

    /// A peers file could not be read or has a bad line.
    #[error("peers file {path}: {reason}")]
    PeersFile {
        /// The file.
        path: String,
        /// What is wrong, with the line number when a line is.
        reason: String,
    },

    /// An etcd endpoint or prefix is not usable, or no endpoint answered.
    #[error("etcd {endpoint}: {reason}")]
    Etcd {
        /// The endpoint (or endpoints).
        endpoint: String,
        /// What is wrong.
        reason: String,
    },

    /// One entry of a source (an etcd key) has a value the crate cannot read; the source leaves
    /// it out.
    #[error("entry {entry}: {reason}")]
    InvalidEntry {
        /// The entry (the key).
        entry: String,
        /// What is wrong with its value.
        reason: String,
    },

    /// A number that must lie in a range does not.
    #[error("{what} is {value}, outside {range}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted range.
        range: &'static str,
    },
}

/// Checks that a time is at least `min` (zero is a [`ConfigError::ZeroTimeout`]) and at most
/// `max`.
pub(crate) fn check_between(
    what: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    if !value.is_zero() && value < min {
        return Err(ConfigError::TimeoutTooShort { what, value, min });
    }
    check_timeout(what, value, max)
}

/// Checks that a timeout is non-zero and at most `max`.
pub(crate) fn check_timeout(
    what: &'static str,
    value: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        Err(ConfigError::ZeroTimeout { what })
    } else if value > max {
        Err(ConfigError::TimeoutTooLong { what, value, max })
    } else {
        Ok(value)
    }
}
