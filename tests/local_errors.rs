//! A failure of the proxy's own making never counts against a peer: a proxy out of file
//! descriptors fails its connects with `EMFILE`, and must not eject its healthy peers one by one.
//!
//! The test lowers this process's descriptor limit, so it is alone in its binary.

mod support;

use std::time::Duration;

use pingora_failover::{
    Failover, FailoverProxy, FailureKind, HealthState, OrderedList, Peer, StandardPolicy, Verdict,
};
use support::{client, failed, start_proxy, Events, Mode, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The lowest descriptor number free in this process: every lower one is open.
fn lowest_free_fd() -> u64 {
    let file = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    file.as_raw_fd() as u64
}

fn set_soft_fd_limit(limit: u64) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl), 0);
        let old = rl.rlim_cur;
        rl.rlim_cur = limit;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rl), 0);
        old
    }
}

/// Whether this process holds the proxy's end of the connection from `client`: a TCP socket
/// from `proxy` to `client` (`/proc/self/net/tcp`) whose inode one of this process's
/// descriptors names. (Counting descriptors could be fooled by any other one opening.)
fn accepted(proxy: std::net::SocketAddr, client: std::net::SocketAddr) -> bool {
    let hex = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => {
            format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), a.port())
        }
        std::net::IpAddr::V6(_) => String::new(),
    };
    let (local, remote) = (hex(proxy), hex(client));
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    let Some(inode) = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
            .flatten()
    }) else {
        return false;
    };
    std::fs::read_dir("/proc/self/fd").unwrap().any(|e| {
        e.ok()
            .and_then(|e| std::fs::read_link(e.path()).ok())
            .is_some_and(|target| target.to_string_lossy() == inode)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_out_of_file_descriptors_ejects_no_peer() {
    let primary = Upstream::start("primary", Mode::Ok).await;
    let backup = Upstream::start("backup", Mode::Ok).await;
    let peers = [
        Peer::new(&primary.peer_addr()).unwrap(),
        Peer::new(&backup.peer_addr()).unwrap(),
    ];
    let events = Events::default();
    let engine = Failover::builder(
        OrderedList::new(peers.to_vec()).unwrap(),
        StandardPolicy::default(),
    )
    .on_health_change(events.observer());
    let (proxy, log) = start_proxy(FailoverProxy::from_builder(engine).unwrap()).await;

    // A client connection the proxy has accepted: the descriptors it needs are open.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let client_end = conn.local_addr().unwrap();
    support::eventually("the proxy accepted", || accepted(proxy.addr, client_end)).await;

    // From here on, no new descriptor: every connect to an upstream fails with EMFILE.
    let old = set_soft_fd_limit(lowest_free_fd());
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    set_soft_fd_limit(old);
    read.expect("the proxy answered").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");

    // Both peers were tried, as often as the policy allows, and neither is to blame.
    let records = log.wait_for(1).await;
    let attempts = &records[0];
    assert_eq!(attempts.len(), 3, "{records:?}");
    assert!(
        attempts[..2]
            .iter()
            .all(|a| a.outcome() == failed(FailureKind::Local, Verdict::Retried)),
        "{records:?}"
    );
    assert_eq!((primary.hits(), backup.hits()), (0, 0));
    for peer in &peers {
        assert_eq!(peer.health().state(), HealthState::Healthy, "{peer}");
    }
    assert!(events.all().is_empty(), "{:?}", events.all());

    // With descriptors back, the primary serves at once.
    assert_eq!(proxy.get_text(&client(), "/").await, "primary");
}
