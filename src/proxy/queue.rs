//! The queue of requests waiting for a place on a full pool (Envoy's `max_pending_requests`,
//! HAProxy's queue and `timeout queue`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{check_timeout, ConfigError};

/// The longest a request may wait in the queue.
const MAX_WAIT: Duration = Duration::from_secs(60);

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
