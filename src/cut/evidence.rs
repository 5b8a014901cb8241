//! Whether a late header is the peer's fault: the rules the watchdog applies to what it can see
//! of one waiting attempt. Plain data in, a verdict out.
//!
//! A wait that runs past its limit proves nothing by itself: the request may be slow by nature
//! (a report, an export), or the proxy itself may have stalled with the answer already in its
//! socket. So a cut needs evidence that the *peer* is stuck, taken in this order:
//! 1. **The attempt's own transport** (Linux `TCP_INFO` and `FIONREAD`): an answer waiting
//!    unread in the proxy's socket means the stall is the proxy's own; a request still being
//!    sent (an upload) is not a wait for a header; retransmitted, and nothing acknowledged for
//!    two round trips after the last transmission, means the peer is unreachable. Counted from
//!    when the attempt took the connection (read then only for a request that may move when
//!    undelivered, and on a connection that carries several requests at once, as it costs a
//!    system call on the request's path), more is known: any byte
//!    received is the answer, nothing sent yet is no wait, and none of the request
//!    acknowledged means the peer never received it, so that even a non-idempotent request
//!    may move (once the connection is aborted). Otherwise the counters count from the
//!    watch's first look. Silence before a retransmission proves nothing: a peer that
//!    received the request may hold its acknowledgement back for up to 200 ms on Linux (a
//!    delayed ACK, while its application works), but answers a retransmission at once.
//! 2. **Answers to other requests**: a peer that answered anything since the wait began (or in
//!    the last `limit`) is alive.
//! 3. **The peer's liveness on another path**: one check per peer at a time (the recovery
//!    probe's request, on a connection of its own), shared by every request waiting on it. A
//!    check that began after this wait and passed shows the peer alive, so the request is slow,
//!    and keeps its full timeout; one that failed while this request waited shows the peer
//!    stuck, and the request is cut at once. A check starts when a quiet wait reaches a quarter
//!    of its limit and fails when unanswered for half the limit: a peer that answers its check
//!    at all answers it in a fraction of what its requests typically take, which the limit is
//!    ten times. Its answer is given longer where the peer's checks are known to take longer
//!    (ten times their time, at most 1 s), and 1 s for a peer that has answered nothing of its
//!    own: such a check may end after the limit, and the cut waits for it.

use std::time::Duration;

use super::sys::Counters;
pub(crate) use crate::cell::suspicion::Live;

/// What the watchdog sees of one waiting attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    /// How long the peer has answered nothing: since the wait began, or its last answer if
    /// later.
    pub(crate) quiet: Duration,
    /// The cut's limit for this attempt.
    pub(crate) limit: Duration,
    /// What the connection shows; `None` where the platform does not tell.
    pub(crate) transport: Option<Transport>,
    /// What the peer's liveness checks say about the time since the wait began.
    pub(crate) liveness: Live,
    /// The connection carries other requests at the same time (HTTP/2 with more than one
    /// stream allowed), which a cut would end too: only the transport may show the peer stuck
    /// (a retransmission left unanswered), bytes received may be the others' answers, and
    /// nothing acknowledged does not tell whose bytes the peer never received. An HTTP/2
    /// connection of one stream at a time (pingora's default) is judged as an HTTP/1 one.
    pub(crate) shared: bool,
}

/// What one attempt's connection shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transport {
    /// What moved on the connection since `from_start` says, and what waits unread now.
    pub(crate) moved: Counters,
    /// `moved` counts from when the attempt took the connection, before its request was
    /// sent (otherwise from the watch's first look).
    pub(crate) from_start: bool,
    /// More was first sent since the last look: the request is still being sent (on a shared
    /// connection, or another request's bytes).
    pub(crate) sending: bool,
}

impl Transport {
    /// Retransmitted, and still nothing acknowledged: the transport's own proof that the peer
    /// is unreachable (once a retransmission had time to be answered).
    pub(crate) fn unreachable(&self) -> bool {
        self.moved.acked == 0 && self.moved.retransmitted > 0
    }
}

/// The watchdog's verdict on one waiting attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Look again after this long.
    Later(Duration),
    /// Start a liveness check of the peer, and look again after this long.
    Check(Duration),
    /// The peer is stuck: cut the attempt if its request allows it. `undelivered`: the
    /// transport shows the peer never received any of the request.
    Stuck {
        /// The peer acknowledged none of the request.
        undelivered: bool,
    },
    /// The peer is alive and the request slow: leave it to its full timeout.
    Leave,
}

/// How often a pending check is looked at.
pub(crate) const CHECK_POLL: Duration = Duration::from_millis(5);
/// The least time a retransmission is given to be acknowledged (whatever the measured
/// round trip, which loopback puts near zero).
const RETRANSMIT_ANSWER: Duration = Duration::from_millis(20);

/// When a quiet wait is first looked at, as a share of its limit: a liveness check starts
/// then, and is given [`CHECK_SHARE`] of the limit to be answered.
pub(crate) const FIRST_LOOK: u32 = 4;
/// How long a liveness check is given, as a share of the limit: started at a quarter, it has
/// failed by three quarters (unless its answer is given longer, [`CHECK_FACTOR`],
/// [`COLD_CHECK`]).
pub(crate) const CHECK_SHARE: u32 = 2;
/// A liveness check's answer is given at least this many times what the peer's checks take,
/// where that is known (at most [`COLD_CHECK`]): a peer slow at everything, its checks too, is
/// not taken for a stuck one.
pub(crate) const CHECK_FACTOR: u32 = 10;
/// What a liveness check of a peer that has answered nothing yet, neither a request nor a
/// check, is given at least (Kubernetes' default readiness probe timeout): such a peer may be
/// slower than the rest at everything, so its check is not judged by their times.
pub(crate) const COLD_CHECK: Duration = Duration::from_secs(1);

/// The verdict on `look`. A liveness check starts at a quarter of the limit and is given half
/// of it, so that its answer is in before the limit passes (where it is not given longer).
pub(crate) fn judge(look: &Look) -> Verdict {
    let first = look.limit / FIRST_LOOK;
    if look.quiet < first {
        return Verdict::Later(first - look.quiet);
    }
    let until_limit = look.limit.saturating_sub(look.quiet);
    if let Some(
        transport @ Transport {
            moved,
            from_start,
            sending,
        },
    ) = look.transport
    {
        // On a connection of its own, anything received (since the start or the first look)
        // is this request's answer; on a shared one, only bytes waiting unread say the proxy
        // itself stalled.
        let answered = moved.unread > 0 || (!look.shared && moved.received > 0);
        if answered || sending || (from_start && moved.sent == 0) {
            // The answer has come and waits to be read (the stall is the proxy's own), or the
            // request is not yet, or not yet fully, sent: no wait for a header to judge yet.
            return Verdict::Later(look.limit);
        }
        if transport.unreachable() {
            // Sent again, and still nothing acknowledged: the peer is unreachable, once a
            // retransmission had time to be answered. Counted from the start, the peer also
            // never received any of the request.
            let answer_time =
                Duration::from_micros(u64::from(moved.rtt_us) * 2).max(RETRANSMIT_ANSWER);
            let since_send = Duration::from_millis(u64::from(moved.last_send_ms));
            return match (until_limit.is_zero(), answer_time.checked_sub(since_send)) {
                (true, None | Some(Duration::ZERO)) => Verdict::Stuck {
                    undelivered: from_start && !look.shared,
                },
                (_, wait) => {
                    Verdict::Later(until_limit.max(wait.unwrap_or_default()).max(CHECK_POLL))
                }
            };
        }
    }
    if look.shared {
        // Neither a silent connection nor a failed check proves the peer unreachable: a live
        // peer may hold back its acknowledgement while its application works, and refuse new
        // connections while this one works. Only a retransmission left unanswered does. (On
        // a connection of its own, that risk is the one request's, which may run twice; here
        // it would be every request on the connection's.)
        return Verdict::Later(first);
    }
    match look.liveness {
        Live::Passed => Verdict::Leave,
        // The peer left a check unanswered while this request waited: that is the evidence,
        // whether or not this request has waited its whole limit yet.
        Live::Failed => Verdict::Stuck { undelivered: false },
        Live::Checking => Verdict::Later(CHECK_POLL),
        Live::Unknown => Verdict::Check(CHECK_POLL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn look(quiet: u64, transport: Option<Transport>, liveness: Live) -> Look {
        Look {
            quiet: MS(quiet),
            limit: MS(100),
            transport,
            liveness,
            shared: false,
        }
    }

    /// `moved`, counted from when the attempt took the connection (`from_start`) or from the
    /// first look, nothing being sent.
    fn counted(moved: Counters, from_start: bool) -> Option<Transport> {
        Some(Transport {
            moved,
            from_start,
            sending: false,
        })
    }

    fn from_start(moved: Counters) -> Option<Transport> {
        counted(moved, true)
    }

    fn from_first_look(moved: Counters) -> Option<Transport> {
        counted(moved, false)
    }

    fn moved(sent: u64, acked: u64, received: u64) -> Option<Transport> {
        from_start(Counters {
            sent,
            acked,
            received,
            ..Counters::default()
        })
    }

    /// Sent, retransmitted `ms` ago, and none of it acknowledged.
    fn unanswered(ms: u32) -> Counters {
        Counters {
            sent: 160,
            retransmitted: 80,
            last_send_ms: ms,
            rtt_us: 100,
            ..Counters::default()
        }
    }

    #[test]
    fn nothing_is_judged_before_a_quarter_of_the_limit() {
        assert_eq!(judge(&look(20, None, Live::Failed)), Verdict::Later(MS(5)));
    }

    #[test]
    fn an_answer_in_the_socket_is_the_proxys_stall() {
        let v = judge(&look(500, moved(100, 100, 1), Live::Failed));
        assert_eq!(v, Verdict::Later(MS(100)));
    }

    #[test]
    fn a_request_not_yet_sent_or_still_sending_is_not_waiting() {
        assert_eq!(
            judge(&look(500, moved(0, 0, 0), Live::Failed)),
            Verdict::Later(MS(100))
        );
        let sending = Some(Transport {
            moved: Counters {
                sent: 10,
                acked: 10,
                ..Counters::default()
            },
            from_start: true,
            sending: true,
        });
        assert_eq!(
            judge(&look(500, sending, Live::Failed)),
            Verdict::Later(MS(100))
        );
    }

    #[test]
    fn a_retransmission_unanswered_past_the_limit_is_undelivered() {
        assert_eq!(
            judge(&look(300, from_start(unanswered(30)), Live::Unknown)),
            Verdict::Stuck { undelivered: true }
        );
        assert_eq!(
            judge(&look(60, from_start(unanswered(30)), Live::Unknown)),
            Verdict::Later(MS(40))
        );
        assert_eq!(
            judge(&look(300, from_start(unanswered(5)), Live::Unknown)),
            Verdict::Later(MS(15)),
            "the retransmission is given time to be answered"
        );
    }

    #[test]
    fn silence_before_a_retransmission_proves_nothing() {
        // A delayed acknowledgement: the peer may hold the request.
        assert_eq!(
            judge(&look(100, moved(80, 0, 0), Live::Unknown)),
            Verdict::Check(CHECK_POLL)
        );
        assert_eq!(
            judge(&look(100, moved(80, 0, 0), Live::Passed)),
            Verdict::Leave
        );
    }

    #[test]
    fn an_acknowledged_request_needs_a_failed_check_to_be_cut() {
        let acked = moved(80, 80, 0);
        assert_eq!(
            judge(&look(60, acked, Live::Unknown)),
            Verdict::Check(CHECK_POLL)
        );
        assert_eq!(
            judge(&look(60, acked, Live::Checking)),
            Verdict::Later(CHECK_POLL)
        );
        assert_eq!(
            judge(&look(60, acked, Live::Failed)),
            Verdict::Stuck { undelivered: false }
        );
    }

    #[test]
    fn a_peer_alive_on_another_path_leaves_a_slow_request_alone() {
        assert_eq!(
            judge(&look(900, moved(80, 80, 0), Live::Passed)),
            Verdict::Leave
        );
        assert_eq!(judge(&look(900, None, Live::Passed)), Verdict::Leave);
    }

    #[test]
    fn without_transport_counters_liveness_decides() {
        assert_eq!(
            judge(&look(100, None, Live::Failed)),
            Verdict::Stuck { undelivered: false }
        );
        assert_eq!(
            judge(&look(60, None, Live::Unknown)),
            Verdict::Check(CHECK_POLL)
        );
    }

    #[test]
    fn counted_from_the_first_look_an_answer_is_what_came_since_or_waits_unread() {
        // On a connection of its own, bytes received since the first look are the answer.
        let received = from_first_look(Counters {
            received: 100,
            ..Counters::default()
        });
        assert_eq!(
            judge(&look(60, received, Live::Failed)),
            Verdict::Later(MS(100))
        );
        let unread = from_first_look(Counters {
            unread: 17,
            ..Counters::default()
        });
        assert_eq!(
            judge(&look(60, unread, Live::Failed)),
            Verdict::Later(MS(100))
        );
        // Nothing moved since the first look: nothing to judge by the transport.
        assert_eq!(
            judge(&look(
                60,
                from_first_look(Counters::default()),
                Live::Failed
            )),
            Verdict::Stuck { undelivered: false }
        );
    }

    #[test]
    fn counted_from_the_first_look_an_unanswered_retransmission_is_stuck_not_undelivered() {
        assert_eq!(
            judge(&look(300, from_first_look(unanswered(30)), Live::Passed)),
            Verdict::Stuck { undelivered: false }
        );
    }

    #[test]
    fn on_a_shared_connection_only_the_transport_shows_a_peer_stuck() {
        let shared = |quiet, transport, liveness| Look {
            shared: true,
            ..look(quiet, transport, liveness)
        };
        assert_eq!(
            judge(&shared(60, moved(80, 0, 0), Live::Failed)),
            Verdict::Later(MS(25)),
            "a failed check does not end the other requests on the connection"
        );
        assert_eq!(
            judge(&shared(60, moved(80, 0, 0), Live::Unknown)),
            Verdict::Later(MS(25)),
            "no liveness check: a silent connection alone proves nothing"
        );
        assert_eq!(
            judge(&shared(60, None, Live::Unknown)),
            Verdict::Later(MS(25))
        );
        assert_eq!(
            judge(&shared(300, from_first_look(unanswered(30)), Live::Passed)),
            Verdict::Stuck { undelivered: false }
        );
        // Counted from the start, nothing acknowledged shows the peer unreachable, not which
        // request it never received; and bytes received may be another request's answer.
        assert_eq!(
            judge(&shared(300, from_start(unanswered(30)), Live::Passed)),
            Verdict::Stuck { undelivered: false }
        );
        assert_eq!(
            judge(&shared(60, moved(80, 0, 500), Live::Unknown)),
            Verdict::Later(MS(25))
        );
    }
}
