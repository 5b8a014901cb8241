//! The reference proxy (`examples/failover_proxy`) run as a process: flags and its TOML file give
//! the same failover, every request gets an access log line, bad configurations exit non-zero
//! naming what is wrong, and `--check` validates without serving.

mod support;
#[cfg(feature = "etcd")]
#[path = "support/etcd.rs"]
mod test_etcd;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{client, free_addr, refused_addr, Mode, TempPath, Upstream};

/// The example binary, built by `cargo test` next to the test binaries.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("failover_proxy");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = newest(&root.join("src")).max(newest(&root.join("examples/failover_proxy")));
    // `cargo test --test reference_proxy` alone does not rebuild examples: a stale binary
    // would test old code.
    assert!(
        built.as_ref().is_ok_and(|b| *b >= sources),
        "{} is missing or older than the sources: cargo test --all-targets builds it \
         (or cargo build --example failover_proxy with the same features)",
        bin.display()
    );
    bin
}

/// The newest modification time of a file under `dir`.
/// The newest Rust source under `dir` (a sample file beside them is not built into anything).
fn newest(dir: &std::path::Path) -> std::time::SystemTime {
    let mut latest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().and_then(|m| m.modified()).unwrap()
        } else {
            continue;
        };
        latest = latest.max(t);
    }
    latest
}

/// A running proxy: its stdout lines arrive on `lines`; killed on drop. It listens on a port
/// that was free a moment ago (`free_addr`).
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    listen: String,
}

impl Running {
    async fn start(args: &[&str], listen: &str) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let running = Self {
            child,
            lines,
            listen: listen.to_owned(),
        };
        // Listening is the condition; the bound only keeps a broken start from hanging.
        tokio::time::timeout(Duration::from_secs(20), async {
            while tokio::net::TcpStream::connect(listen).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the proxy never listened");
        running
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// The next `n` access log lines.
    fn log_lines(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.lines
                    .recv_timeout(Duration::from_secs(10))
                    .expect("an access log line per request")
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

/// Three GETs through a proxy whose primary refuses: each answered by the backup, each logged,
/// the first after failing over and the others straight to the backup (the primary ejected).
async fn fails_over_and_logs(proxy: &Running, backup: &Upstream) {
    let http = client();
    for _ in 0..3 {
        let resp = http.get(proxy.url("/items")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "backup");
    }
    let lines = proxy.log_lines(3);
    let backup = backup.peer_addr();
    for line in &lines {
        // nginx's combined format: `[26/Nov/2026:07:21:33 +0000]`.
        let time = line.split(['[', ']']).nth(1).unwrap_or_default();
        assert!(time.len() == 26 && time.ends_with(" +0000"), "{line}");
        assert!(line.contains("\"GET /items HTTP/1.1\" 200 "), "{line}");
        assert!(line.contains(&format!("upstream={backup}")), "{line}");
    }
    assert!(
        lines[0].contains("attempts=2 outcome=retried failover=\"#1 "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("connection refused"), "{}", lines[0]);
    assert!(lines[1].contains("attempts=1 outcome=ok"), "{}", lines[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_and_the_config_file_give_the_same_failover_with_an_access_log_line_per_request() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let primary = refused_addr();

    let listen = free_addr();
    let flags = [
        "--listen",
        &listen,
        "--peer",
        &primary,
        "--peer",
        &backup.peer_addr(),
        "--connect-timeout-ms",
        "400",
        "--max-attempts",
        "3",
    ];
    let proxy = Running::start(&flags, &listen).await;
    fails_over_and_logs(&proxy, &backup).await;
    drop(proxy);

    let listen = free_addr();
    let file = TempPath::with_text(
        "failover-proxy.toml",
        &format!(
            "listen = \"{listen}\"\npeers = [\"{primary}\", {{ addr = \"{}\", weight = 1 }}]\n\
         [timeouts]\nconnect_ms = 400\n[policy]\nmax_attempts = 3\n",
            backup.peer_addr()
        ),
    );
    let proxy = Running::start(&["--config", file.as_str()], &listen).await;
    fails_over_and_logs(&proxy, &backup).await;
    assert_eq!(backup.hits(), 6);
}

/// Limits on requests in flight: a pool default (the flag, or `[limits]`) and a peer's own (its
/// table in the file). Five slow GETs at once: each peer takes its limit, and the rest are
/// answered 503 at once, or wait in the queue when there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_limit_comes_from_the_pool_default_or_the_peers_own() {
    let slow = Mode::Slow(Duration::from_millis(600));
    let (a, b) = (
        Upstream::start("a", slow).await,
        Upstream::start("b", slow).await,
    );
    let listen = free_addr();
    let flags = [
        "--listen",
        &listen,
        "--peer",
        &a.peer_addr(),
        "--peer",
        &b.peer_addr(),
        "--max-requests-per-peer",
        "1",
        "--quiet",
    ];
    let proxy = Running::start(&flags, &listen).await;
    assert_eq!(
        support::concurrent_statuses(&proxy.url("/"), 5).await,
        [200, 200, 503, 503, 503]
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
    drop(proxy);

    let listen = free_addr();
    let file = TempPath::with_text(
        "failover-proxy.toml",
        &format!(
            "listen = \"{listen}\"\npeers = [{{ addr = \"{}\", max_requests = 3 }}, \"{}\"]\n\
             log.access = false\n[limits]\nmax_requests_per_peer = 1\n",
            a.peer_addr(),
            b.peer_addr()
        ),
    );
    let proxy = Running::start(&["--config", file.as_str()], &listen).await;
    assert_eq!(
        support::concurrent_statuses(&proxy.url("/"), 5).await,
        [200, 200, 200, 200, 503]
    );
    assert_eq!((a.hits(), b.hits()), (1 + 3, 1 + 1));
    drop(proxy);

    // With a queue of 2: two wait for a place and are served, the fifth is turned away.
    let listen = free_addr();
    let mut queued = flags.to_vec();
    queued[1] = &listen;
    queued.extend(["--queue", "2", "--queue-timeout-ms", "5000"]);
    let proxy = Running::start(&queued, &listen).await;
    assert_eq!(
        support::concurrent_statuses(&proxy.url("/"), 5).await,
        [200, 200, 200, 200, 503]
    );
    assert_eq!(a.hits() + b.hits(), 6 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_file() {
    let (a, b) = (
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
    );
    let listen = free_addr();
    let file = TempPath::with_text(
        "failover-proxy.toml",
        &format!(
            "listen = \"127.0.0.1:1\"\npeers = [\"{}\"]\n",
            a.peer_addr()
        ),
    );
    let args = [
        "--config",
        file.as_str(),
        "--listen",
        &listen,
        "--peer",
        &b.peer_addr(),
        "--quiet",
    ];
    let proxy = Running::start(&args, &listen).await;
    let body = client().get(proxy.url("/")).send().await.unwrap().text();
    assert_eq!(body.await.unwrap(), "b");
    assert_eq!(a.hits(), 0);
}

#[test]
fn a_bad_configuration_exits_non_zero_and_names_what_is_wrong() {
    let cases = [
        (
            "peers = [\"127.0.0.1:1\"]\n[timeouts]\nconect_ms = 5\n",
            "conect_ms",
        ),
        ("peers = [\"127.0.0.1:1\"]\nthreads = 0\n", "threads"),
        (
            "peers = [\"127.0.0.1:1\"]\n[limits]\nqueue = 5\n",
            "limits.queue: needs limits.max_requests_per_peer",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\nthreads = 100000\n",
            "threads: 100000 is above the maximum of 1024",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\nselector = \"random\"\n",
            "selector",
        ),
        ("peers = []\n", "no peers"),
        ("peers = [\"not an address\"]\n", "not an address"),
        (
            "peers = [\"127.0.0.1:1\"]\n[timeouts]\nconnect_ms = 0\n",
            "connect timeout must be greater than zero",
        ),
        (
            "peers = [{ addr = \"127.0.0.1:1\", http = \"h3\" }]\n",
            "peers.http",
        ),
        ("peers = [{ addr = \"127.0.0.1:1\", tsl = \"x\" }]\n", "tsl"),
        (
            "peers = [\"127.0.0.1:1\"]\nselector = \"hash\"\nhash_key = \"cookie\"\n",
            "hash_key",
        ),
        (
            "peers = [{ addr = \"127.0.0.1:1\", tls = \"\" }]\n",
            "server name",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\nslow_start_ms = 30000\n",
            "slow_start_ms",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\n[health]\nrecovery_probe = \"sometimes\"\n",
            "recovery_probe",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\n[health]\nprobe_interval_ms = 0\n",
            "recovery probe interval must be greater than zero",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\n[health]\nrecovery_probe = \"off\"\nprobe_interval_ms = 100\n",
            "probe_interval_ms",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\nselector = \"ewma\"\nslow_start_ms = 0\n",
            "slow start window must be greater than zero",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\n[timeouts]\nstall_cut = false\nstall_cut_ms = 50\n",
            "stall_cut_ms",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\n[timeouts]\nstall_cut_ms = 0\n",
            "adaptive timeout floor must be greater than zero",
        ),
        (
            "peers = [\"127.0.0.1:1\"]\n[timeouts]\nadaptive = false\nstall_cut_ms = 50\n",
            "stall_cut_ms: no timeout is learned",
        ),
    ];
    for (text, named) in cases {
        let file = TempPath::with_text("failover-proxy.toml", text);
        for check in [true, false] {
            let mut args = vec!["--config", file.as_str()];
            if check {
                args.push("--check");
            }
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
            assert!(stderr.contains(named), "{text}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    for (args, named) in [
        (
            &["--listen", "nonsense", "--peer", "127.0.0.1:1"][..],
            "listen",
        ),
        (
            &["--peer", "127.0.0.1:1", "--retry-status", "99999"][..],
            "99999",
        ),
        (
            &["--config", "/nonexistent/failover.toml"][..],
            "/nonexistent/failover.toml",
        ),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn check_accepts_the_committed_sample() {
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/failover_proxy/sample.toml"
    );
    let out = run(&["--config", sample, "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration ok"), "{stdout}");
}

#[test]
fn a_queue_over_peers_with_limits_of_their_own_is_accepted() {
    let text = "peers = [{ addr = \"127.0.0.1:1\", max_requests = 8 }]\n[limits]\nqueue = 4\n";
    let file = TempPath::with_text("failover-proxy.toml", text);
    let out = run(&["--config", file.as_str(), "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_when_asked_for() {
    let backup = Upstream::start("backup", Mode::Ok).await;
    let (listen, metrics) = (free_addr(), free_addr());
    let args = [
        "--listen",
        &listen,
        "--peer",
        &refused_addr(),
        "--peer",
        &backup.peer_addr(),
        "--metrics",
        &metrics,
        "--quiet",
    ];
    let proxy = Running::start(&args, &listen).await;
    let http = client();
    assert_eq!(http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    let page = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("failover_retries_total 1"),
        "{}",
        page.lines()
            .filter(|l| l.starts_with("failover_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_selector_keeps_each_user_on_one_upstream() {
    let ups = [
        Upstream::start("a", Mode::Ok).await,
        Upstream::start("b", Mode::Ok).await,
        Upstream::start("c", Mode::Ok).await,
    ];
    let listen = free_addr();
    let mut args = vec![
        "--listen".to_owned(),
        listen.clone(),
        "--selector".into(),
        "hash".into(),
        "--hash-key".into(),
        "header:x-user".into(),
        "--quiet".into(),
    ];
    for up in &ups {
        args.extend(["--peer".to_owned(), up.peer_addr()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Running::start(&args, &listen).await;
    let http = client();
    let mut seen = std::collections::HashSet::new();
    for u in 0..12 {
        let mut answers = std::collections::HashSet::new();
        for _ in 0..3 {
            let resp = http
                .get(proxy.url("/"))
                .header("x-user", format!("user-{u}"))
                .send()
                .await
                .unwrap();
            answers.insert(resp.text().await.unwrap());
        }
        assert_eq!(answers.len(), 1, "user-{u} was answered by {answers:?}");
        seen.extend(answers);
    }
    assert!(seen.len() > 1, "every user on one upstream: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ewma_selector_keeps_traffic_off_a_slow_upstream() {
    let fast = Upstream::start("fast", Mode::Ok).await;
    // 1 s: well above what a loaded machine adds to the fast one's first answer (a new
    // connection, a debug build's first pass), which peak EWMA keeps as the fast one's cost
    // until it decays (10 s): at 300 ms, one run in many sent the slow one 7 of 60.
    let slow = Upstream::start("slow", Mode::Slow(Duration::from_secs(1))).await;
    let listen = free_addr();
    let args = [
        "--listen",
        &listen,
        "--selector",
        "ewma",
        "--slow-start-ms",
        "10000",
        "--peer",
        &fast.peer_addr(),
        "--peer",
        &slow.peer_addr(),
        "--quiet",
    ];
    let proxy = Running::start(&args, &listen).await;
    let http = client();
    for _ in 0..60 {
        let resp = http.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Round-robin (and least-request: one request at a time) would send it 30; peak EWMA learns
    // from its first answer or two. (Probes, the warm-up's check and the stall cut's liveness
    // checks, are not counted as requests.)
    let requests = slow.hits();
    assert!(requests <= 6, "the slow upstream got {requests} of 60");
}

/// SIGTERM drains: the proxy stops taking connections, and a request in flight still gets its
/// answer (it has a second), then the proxy exits with 0. Before, it was cut with no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let up = Upstream::start("up", Mode::Ok).await;
    let listen = free_addr();
    let args = ["--listen", &listen, "--peer", &up.peer_addr(), "--quiet"];
    let mut proxy = Running::start(&args, &listen).await;
    let request = client()
        .get(proxy.url("/"))
        .header("x-delay-ms", "500")
        .send();
    let request = tokio::spawn(async move { request.await?.text().await });
    // SIGTERM once the request is at the upstream; the bound only keeps a failure from hanging.
    tokio::time::timeout(Duration::from_secs(10), async {
        while up.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the request reached the upstream");
    let pid = proxy.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        !request.is_finished(),
        "answered before the signal: nothing was drained"
    );
    let body = request.await.unwrap();
    assert_eq!(
        body.ok().as_deref(),
        Some("up"),
        "the request in flight was cut"
    );
    let exited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the proxy exits after its drain");
    assert!(exited.success(), "{exited}");
}

/// A daemon started from the proxy's binary, stopped with SIGTERM on drop.
struct Daemon(String);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0]).status();
    }
}

/// The proxy's binary run as a daemon with `args` (and a free `--listen`, a pid file, `--quiet`):
/// the daemon, and its address once it runs.
async fn start_daemon(args: &[&str]) -> (Daemon, String, TempPath) {
    let pid_file = TempPath::new("daemon-pid");
    let listen = free_addr();
    // The daemon keeps the descriptors it was given: no pipe to wait on.
    let status = Command::new(binary())
        .args([
            "--listen",
            &listen,
            "--daemon",
            pid_file.as_str(),
            "--quiet",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // The parent has exited: the daemon's pid is in its file once it runs.
    let pid = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match std::fs::read_to_string(&pid_file.0) {
                Ok(pid) if !pid.trim().is_empty() => return pid.trim().to_owned(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("no daemon");
    (Daemon(pid), listen, pid_file)
}

/// Waits until the proxy at `listen` answers `want`.
async fn until_answer(listen: &str, want: &str) {
    let http = client();
    let url = format!("http://{listen}/");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let got = match http.get(&url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the daemon never answered {want:?}"))
}

/// The names of the daemon's threads.
fn threads(daemon: &Daemon) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", daemon.0))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Pingora's background service thread `name` runs the daemon's source; no thread of the
/// source's own does.
fn assert_source_runs_on_pingoras_thread(daemon: &Daemon, name: &str) {
    let names = threads(daemon);
    assert!(names.iter().any(|n| n == name), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("failover-source")),
        "a source thread in the daemon: {names:?}"
    );
}

/// Pingora's daemon mode forks after the proxy has built its peer set: the peers file is
/// followed by a pingora background service in the daemon, on no thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_daemon_the_proxy_still_follows_its_peers_file() {
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    let peers = TempPath::with_text("daemon-peers", &format!("{}\n", a.peer_addr()));
    let (daemon, listen, _pid) = start_daemon(&["--peers-file", peers.as_str()]).await;
    until_answer(&listen, "a").await;
    std::fs::write(&peers.0, format!("{}\n", b.peer_addr())).unwrap();
    until_answer(&listen, "b").await;
    assert_source_runs_on_pingoras_thread(&daemon, "BG peers-file");
}

/// The same with etcd: the daemon reads the prefix, and follows a put made after the fork.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_daemon_the_proxy_follows_etcd() {
    let etcd = test_etcd::TestEtcd::start().await;
    let a = Upstream::start("a", Mode::Ok).await;
    let b = Upstream::start("b", Mode::Ok).await;
    etcd.put("/peers/x", &a.peer_addr()).await;
    let url = etcd.url();
    let (daemon, listen, _pid) = start_daemon(&["--etcd", &url, "--etcd-prefix", "/peers/"]).await;
    until_answer(&listen, "a").await;
    etcd.put("/peers/x", &b.peer_addr()).await;
    until_answer(&listen, "b").await;
    assert_source_runs_on_pingoras_thread(&daemon, "BG etcd");
}
