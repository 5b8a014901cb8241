//! The rows of the classification table (`pingora_failover::classify`) that only a hand-made
//! upstream produces: one that never reads the request, one that closes a fresh connection
//! without answering, one that answers garbage. Each test checks the kind recorded, what the
//! default policy did, and the status the client got.

mod support;

use std::time::Duration;

use pingora_failover::{
    FailureKind, OrderedList, Outcome, Peer, StandardPolicy, StopReason, Verdict,
};
use support::{client, failed, start_failover, stopped, Mode, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a raw upstream does with each connection once its request head has arrived.
#[derive(Clone, Copy)]
enum Raw {
    /// Never reads past the head, never answers.
    StopReading,
    /// Closes the connection unanswered.
    Close,
    /// Answers with a status line that is not HTTP.
    Garbage,
}

async fn raw_upstream(raw: Raw) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            match raw {
                Raw::StopReading => held.push(s),
                Raw::Close => drop(s),
                Raw::Garbage => {
                    let _ = s.write_all(b"HTTP/1.1 two hundred\r\n\r\n").await;
                    held.push(s);
                }
            }
        }
    });
    (addr, task)
}

/// The raw upstream first, then a healthy backup.
async fn behind_raw(
    raw: Raw,
    timeouts: Duration,
) -> (Upstream, support::ProxyServer, support::RequestLog) {
    // Dropping the handle detaches the task: it lives as long as the test's runtime.
    let (addr, _) = raw_upstream(raw).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = vec![
        Peer::builder(addr)
            .with_read_timeout(timeouts)
            .with_write_timeout(timeouts)
            .build()
            .unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ];
    let (proxy, log) =
        start_failover(OrderedList::new(peers).unwrap(), StandardPolicy::default()).await;
    (backup, proxy, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_connection_closed_unanswered_is_io_retried_for_get_only() {
    let (backup, proxy, log) = behind_raw(Raw::Close, Duration::from_secs(5)).await;
    assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    let post = client()
        .post(proxy.url("/"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502, "a reset is not a timeout");
    assert_eq!(
        backup.hits(),
        1,
        "the POST may have been read: not replayed"
    );
    // Each request is logged after its answer went out: the two may be logged in either order.
    let firsts = log.first_outcomes(2).await;
    assert!(firsts.contains(&failed(FailureKind::Io, Verdict::Retried)));
    assert!(firsts.contains(&stopped(FailureKind::Io, StopReason::NotIdempotent)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_is_not_http_is_retried_for_get_and_ejects_its_peer() {
    let (backup, proxy, log) = behind_raw(Raw::Garbage, Duration::from_secs(5)).await;
    // The upstream may have acted on a POST: it is not replayed.
    let post = client()
        .post(proxy.url("/"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    assert_eq!(backup.hits(), 0);
    let records = log.wait_for(1).await;
    assert_eq!(
        records[0][0].outcome(),
        stopped(FailureKind::Malformed, StopReason::NotIdempotent)
    );
    // GETs go on to the backup, and five failures in a row (the default) eject the peer that
    // does not speak HTTP: the GETs after that go straight to the backup.
    for _ in 0..7 {
        assert_eq!(proxy.get_text(&client(), "/").await, "backup");
    }
    let records = log.wait_for(8).await;
    let retried = records
        .iter()
        .filter(|r| {
            r.len() == 2 && r[0].outcome() == failed(FailureKind::Malformed, Verdict::Retried)
        })
        .count();
    let straight = records
        .iter()
        .filter(|r| r.len() == 1 && r[0].outcome() == Outcome::Responded { status: 200 })
        .count();
    assert_eq!((retried, straight), (4, 3), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_is_a_timeout_and_answers_504() {
    let (backup, proxy, log) = behind_raw(Raw::StopReading, Duration::from_millis(300)).await;
    // Far more than loopback socket buffers hold, so the write has to wait on the upstream.
    let body = vec![b'x'; 64 << 20];
    let resp = client()
        .put(proxy.url("/"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        backup.hits(),
        0,
        "a body past the replay buffer is never sent twice"
    );
    let records = log.wait_for(1).await;
    let outcome = records[0][0].outcome();
    // Pingora reports the stalled write, or the response it then waited for in vain.
    assert!(
        outcome == stopped(FailureKind::WriteTimeout, StopReason::BodyNotReplayable)
            || outcome == stopped(FailureKind::HeaderTimeout, StopReason::BodyNotReplayable),
        "{outcome:?}"
    );
}
