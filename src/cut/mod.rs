//! The cut: an attempt that runs far past what its peer, and its kind of request, have shown is
//! ended early, on evidence that the peer is stuck, and the request goes to the next peer.
//!
//! - [`AdaptiveTimeouts`]: the settings, and what they make of one attempt ([`Cut`]);
//! - `evidence`: the rules that tell a stuck peer from a slow request or a stalled proxy;
//! - `watch`: the watchdog that applies them to each waiting attempt, on a thread of its own;
//! - `liveness`: the check of a peer on a connection of its own, which the evidence asks for;
//! - `routes`: what each kind of request typically takes, learned across peers;
//! - `sys`: the platform's part (transport counters, shutting a connection down), with
//!   `fork.rs` the only `unsafe` code of the crate.
//!
//! This module sits below the per-request record ([`FailoverCtx`](crate::FailoverCtx)) and
//! above peers and health: it imports neither the engine nor the selectors.

mod adaptive;
mod evidence;
mod liveness;
mod routes;
mod sys;
mod watch;
mod watchdog;

pub use adaptive::AdaptiveTimeouts;
pub(crate) use adaptive::{Cut, Pool, Unarmed};

pub(crate) use routes::{RouteKey, Routes};
pub(crate) use watch::MayCut;
pub(crate) use watchdog::{Armed, Watchdog};
