//! Peers from etcd, end to end (feature `etcd`; `make bench`). Needs the release example
//! `failover_proxy` built with `--features etcd`, and etcd installed (`make test` installs it).
//!
//! 1. **Put to traffic**: one key names the only peer; 200 times, it is put to name the other
//!    upstream, under 32 closed-loop clients, and the time from the put to the first request
//!    the new upstream answers is taken (polled every millisecond). Target: p99 <= 100 ms.
//! 2. **Churn**: 100 updates a second (puts, deletes, new weights over four upstreams, never
//!    fewer than one peer) for `DISCOVERY_SECONDS` (30), under 32 clients, one request in eight
//!    a POST: failed requests, and POSTs that arrived twice. Target: 0 and 0.
//! 3. **5,000 peers**, in this process, from etcd and from a peers file in the same run: the
//!    first read, the memory the followed set adds, and an update's cost (from the change to
//!    the set holding it, median of 20; the file is polled every 10 ms).

#[cfg(feature = "etcd")]
mod common;
#[cfg(feature = "etcd")]
#[path = "../tests/support/etcd.rs"]
mod test_etcd;

#[cfg(not(feature = "etcd"))]
fn main() {
    println!("discovery: needs --features etcd");
}

#[cfg(feature = "etcd")]
fn main() {
    let Some(runtime) = common::bench_runtime("discovery") else {
        return;
    };
    runtime.block_on(run::all());
}

#[cfg(feature = "etcd")]
mod run {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use pingora_failover::discovery::etcd::Etcd;
    use pingora_failover::{PeerSet, PeersFile, SourceService};

    use crate::common::{self, Mode, Record, Upstream};
    use crate::test_etcd::TestEtcd;

    const CLIENTS: usize = 32;

    pub async fn all() {
        put_to_traffic_and_churn().await;
        five_thousand().await;
    }

    /// 32 clients through the proxy until `stop`.
    fn clients(
        proxy: std::net::SocketAddr,
        seconds: u64,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<Vec<Record>>> {
        let ids = Arc::new(AtomicU64::new(0));
        (0..CLIENTS)
            .map(|_| {
                let (ids, stop) = (ids.clone(), stop.clone());
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let mut all = Vec::new();
                    // In slices of a second, so that the loop ends soon after `stop`.
                    for s in 1..=seconds {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let end = Duration::from_secs(s);
                        all.extend(common::load(proxy, t0, end, Some(ids.clone()), b"-").await);
                    }
                    all
                })
            })
            .collect()
    }

    async fn put_to_traffic_and_churn() {
        let etcd = TestEtcd::start().await;
        let ups = [
            Upstream::start("a", Mode::Up).await,
            Upstream::start("b", Mode::Up).await,
            Upstream::start("c", Mode::Up).await,
            Upstream::start("d", Mode::Up).await,
        ];
        let addr = |i: usize| ups[i].addr.to_string();
        etcd.put("/bench/x", &addr(0)).await;
        let listen = common::free_port();
        let (url, listen_s) = (etcd.url(), listen.to_string());
        let _proxy = common::spawn_proxy(
            "failover_proxy",
            &[
                "--listen",
                &listen_s,
                "--etcd",
                &url,
                "--etcd-prefix",
                "/bench/",
                "--selector",
                "round-robin",
                "--quiet",
            ],
            listen,
        )
        .await;

        // 1. Put to traffic: the key moves between a and b.
        let stop = Arc::new(AtomicBool::new(false));
        let load = clients(listen, 120, stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut took = Vec::new();
        for i in 0..200 {
            let to = 1 - i % 2;
            let before = ups[to].load.hits.load(Ordering::Relaxed);
            let sent = Instant::now();
            etcd.put("/bench/x", &addr(to)).await;
            while ups[to].load.hits.load(Ordering::Relaxed) == before {
                assert!(sent.elapsed() < Duration::from_secs(10), "no traffic moved");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            took.push(sent.elapsed().as_secs_f64());
        }
        took.sort_by(f64::total_cmp);
        println!(
            "discovery: etcd put -> first request on the new peer, 200 puts, {CLIENTS} clients"
        );
        println!(
            "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            common::quantile(&took, 0.5) * 1e3,
            common::quantile(&took, 0.99) * 1e3,
            took.last().unwrap() * 1e3
        );

        // 2. Churn: 100 updates a second over four upstreams; b never leaves.
        let seconds: u64 = std::env::var("DISCOVERY_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30);
        etcd.put("/bench/b", &addr(1)).await;
        let mut updates = 0u64;
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while started.elapsed() < Duration::from_secs(seconds) {
            tick.tick().await;
            let n = updates;
            let value = |i: usize| format!(r#"{{"addr": "{}", "weight": {}}}"#, addr(i), 1 + n % 4);
            match n % 6 {
                0 => etcd.put("/bench/c", &value(2)).await,
                1 => etcd.put("/bench/b", &value(1)).await,
                2 => etcd.delete("/bench/x").await,
                3 => etcd.put("/bench/d", &value(3)).await,
                4 => etcd.put("/bench/x", &value(0)).await,
                _ => {
                    etcd.delete(if n % 12 == 5 { "/bench/c" } else { "/bench/d" })
                        .await
                }
            };
            updates += 1;
        }
        let churn = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        for task in load {
            records.extend(task.await.unwrap());
        }
        let failed = records.iter().filter(|r| r.failed()).count();
        let twice: usize = ups
            .iter()
            .map(|u| u.posts.lock().unwrap().values().filter(|n| **n > 1).count())
            .sum();
        let posts: usize = ups.iter().map(|u| u.posts.lock().unwrap().len()).sum();
        println!(
            "discovery: churn, {updates} updates in {:.1} s ({:.0}/s), {CLIENTS} clients",
            churn.as_secs_f64(),
            updates as f64 / churn.as_secs_f64()
        );
        println!(
            "  {} requests ({posts} POSTs) over both parts: {failed} failed, {twice} POSTs twice",
            records.len()
        );
    }

    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }

    /// The median time from `change(i)` to the set's next snapshot, over 20 changes.
    async fn update_cost<F, Fut>(set: &PeerSet, mut change: F) -> Duration
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut took = Vec::new();
        for i in 0..20 {
            let version = set.snapshot().version();
            let sent = Instant::now();
            change(i).await;
            while set.snapshot().version() == version {
                assert!(sent.elapsed() < Duration::from_secs(10), "no update");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            took.push(sent.elapsed());
        }
        took.sort();
        took[10]
    }

    async fn five_thousand() {
        let addr = |i: usize| format!("127.1.{}.{}:80", i / 250, 1 + i % 250);
        println!("discovery: 5,000 peers in one set, in this process");
        println!(
            "  {:<11} {:>10} {:>14} {:>14}",
            "source", "first read", "rss added", "update (p50)"
        );

        let etcd = TestEtcd::start().await;
        let pairs: Vec<(String, String)> = (0..5_000)
            .map(|i| (format!("/big/{i:05}"), addr(i)))
            .collect();
        for chunk in pairs.chunks(128) {
            etcd.put_all(chunk).await;
        }
        let rss = rss_kib();
        let started = Instant::now();
        let source = Etcd::new(&etcd.url(), "/big/").unwrap();
        let set = source.load_set().await.unwrap();
        let read = started.elapsed();
        SourceService::new("etcd", source, &set).spawn().unwrap();
        let added = rss_kib().saturating_sub(rss);
        let cost = update_cost(&set, |i| {
            let etcd = &etcd;
            async move {
                etcd.put("/big/00000", &format!("127.2.0.{}:80", 1 + i))
                    .await;
            }
        })
        .await;
        println!(
            "  {:<11} {:>7} ms {:>10} KiB {:>11} ms",
            "etcd",
            common::ms(read),
            added,
            common::ms(cost)
        );
        drop(set);

        let path = std::env::temp_dir().join(format!("pf-bench-peers-{}", std::process::id()));
        let lines = |first: String| {
            std::iter::once(first)
                .chain((1..5_000).map(addr))
                .collect::<Vec<_>>()
                .join("\n")
        };
        std::fs::write(&path, lines(addr(0))).unwrap();
        let rss = rss_kib();
        let started = Instant::now();
        let file = PeersFile::new(&path).with_interval(Duration::from_millis(10));
        let set = PeerSet::new(file.load().unwrap()).unwrap();
        let read = started.elapsed();
        file.watch(&set).unwrap();
        let added = rss_kib().saturating_sub(rss);
        let cost = update_cost(&set, |i| {
            let text = lines(format!("127.2.0.{}:80", 1 + i));
            let path = path.clone();
            async move { std::fs::write(&path, text).unwrap() }
        })
        .await;
        println!(
            "  {:<11} {:>7} ms {:>10} KiB {:>11} ms",
            "peers file",
            common::ms(read),
            added,
            common::ms(cost)
        );
        let _ = std::fs::remove_file(&path);
    }
}
