//! Places in flight: an attempt takes one below its peer's limit, and a new request that finds
//! every peer full may wait for one in the queue (Envoy's `max_pending_requests`, HAProxy's
//! queue and `timeout queue`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use pingora_error::Result;
use pingora_proxy::Session;

use super::engine::{no_peer, Failover};
use super::hedge::Leg;
use super::walk::client_ip;
use crate::cell::PeerHealth;
use crate::ctx::{AttemptRecord, FailoverCtx, Next, StopReason, Verdict};
use crate::error::{check_timeout, ConfigError};
use crate::retry::RetryPolicy;
use crate::select::{Attempt, PeerSelector};

/// The longest a request may wait in the queue.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Gives back a place in flight on the peer of `health`, and lets the requests waiting in
/// `queue`, if any, look again.
pub(crate) fn give_back(health: &PeerHealth, queue: Option<&Queue>) {
    health.end_request();
    if let Some(queue) = queue {
        queue.freed();
    }
}

/// Why a request left the queue without a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turned {
    /// The queue was full when it came.
    Full,
    /// It waited as long as allowed.
    Timeout,
}

impl Turned {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Timeout => "timeout",
        }
    }
}

/// New requests waiting for a place in flight when every peer is at its limit.
#[derive(Debug)]
pub(crate) struct Queue {
    max: usize,
    wait: Duration,
    waiting: AtomicUsize,
    freed: Notify,
}

impl Queue {
    /// At most `max` requests waiting at once (1 or more), each for at most `wait` (up to 60 s).
    pub(crate) fn new(max: usize, wait: Duration) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::OutOfRange {
                what: "queue length",
                value: "0".into(),
                range: "1 or more",
            });
        }
        check_timeout("queue timeout", wait, MAX_WAIT)?;
        Ok(Self {
            max,
            wait,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// A place in flight was given back: the waiting requests look again.
    pub(crate) fn freed(&self) {
        if self.waiting.load(Ordering::Acquire) != 0 {
            self.freed.notify_waiters();
        }
    }

    /// Waits until `take` gets a place, each time one is freed; why not when the queue was
    /// full (at once) or the wait ran out.
    pub(crate) async fn wait<T>(&self, mut take: impl FnMut() -> Option<T>) -> Result<T, Turned> {
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if joined.is_err() {
            return Err(Turned::Full);
        }
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _leave = Leave(&self.waiting);
        let until = Instant::now() + self.wait;
        loop {
            // Listening before looking: a place freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(taken) = take() {
                return Ok(taken);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return Err(Turned::Timeout);
            }
        }
    }
}

impl<S: PeerSelector, R: RetryPolicy> Failover<S, R> {
    /// Takes the chosen peer a place in flight below its limit; a peer that filled up since it
    /// was chosen (another request took its last place) is passed over for another, chosen
    /// again. With no peer to offer, a new request waits in the queue for a place, when there
    /// is one. A 503 error when none is left: the retry that was decided, if any, is recorded
    /// as stopped for [`StopReason::Full`].
    pub(super) async fn place(
        &self,
        session: &Session,
        ctx: &mut FailoverCtx,
        mut next: Option<Next>,
    ) -> Result<Next> {
        // An attempt of a hedged request, chosen again, avoids the other attempt's peer.
        let avoided: &[AttemptRecord] = Leg::of(session)
            .and_then(|leg| leg.avoid.as_ref())
            .map(std::slice::from_ref)
            .unwrap_or_default();
        fn attempt<'a>(
            ctx: &'a FailoverCtx,
            avoided: &'a [AttemptRecord],
            session: &'a Session,
        ) -> Attempt<'a> {
            let tried = match ctx.attempts() {
                [] => avoided,
                tried => tried,
            };
            Attempt::new(tried, Some(session.req_header())).with_client_ip(client_ip(session))
        }
        // Each pass finds the peer full: a bound for a pool whose places come and go.
        for _ in 0..8 {
            let Some(mut n) = next.take() else {
                break;
            };
            if n.peer.reserve() {
                return Ok(n);
            }
            next = self
                .choose(&attempt(ctx, avoided, session))
                .map(|(peer, probe)| {
                    n.peer = peer;
                    n.probe = probe;
                    n
                });
        }
        let attempt = attempt(ctx, avoided, session);
        // Only a pool with a peer that is only full is worth waiting for.
        if let Some(queue) = self
            .queue
            .as_ref()
            .filter(|_| ctx.attempts().is_empty() && self.pool_full(&attempt) != Some(false))
        {
            // Boxed: an attempt that finds a place at once does not carry the queue's wait.
            let placed = Box::pin(queue.wait(|| {
                let (peer, probe) = self.choose(&attempt)?;
                peer.reserve().then_some((peer, probe))
            }))
            .await;
            match placed {
                Ok((peer, probe)) => {
                    self.feed.signals.queued("placed");
                    return Ok(Next::to(peer, probe));
                }
                Err(turned) => self.feed.signals.queued(turned.label()),
            }
        }
        if let Some(rec) = ctx.current_mut() {
            rec.set_verdict(Verdict::Stopped(StopReason::Full));
        }
        Err(no_peer(ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_takes_a_freed_place_and_the_queue_is_bounded() {
        let queue = Arc::new(Queue::new(1, Duration::from_secs(1)).unwrap());
        let free = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (queue, free) = (queue.clone(), free.clone());
            tokio::spawn(async move {
                queue
                    .wait(|| free.load(Ordering::SeqCst).then_some(7))
                    .await
            })
        };
        tokio::task::yield_now().await;
        let turned = queue.wait(|| None::<u8>).await;
        assert_eq!(turned, Err(Turned::Full), "full: turned away at once");
        free.store(true, Ordering::SeqCst);
        queue.freed();
        assert_eq!(waiter.await.unwrap(), Ok(7));
        // Nothing freed: the wait runs out.
        assert_eq!(queue.wait(|| None::<u8>).await, Err(Turned::Timeout));
        assert!(Queue::new(0, Duration::from_secs(1)).is_err());
        assert!(Queue::new(1, Duration::ZERO).is_err());
    }
}
