//! A real etcd (Debian's `etcd-server`, `make test` installs it) on loopback for the etcd
//! tests: its own free ports and a temporary data directory, killed and removed on drop; keys
//! put, deleted and compacted through its JSON gateway.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

pub struct TestEtcd {
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

fn free_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

impl TestEtcd {
    pub async fn start() -> Self {
        let (a, client_port) = free_port();
        let (b, peer_port) = free_port();
        drop((a, b));
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pf-etcd-{}-{n}", std::process::id()));
        let mut etcd = Self {
            client_port,
            peer_port,
            dir,
            child: None,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        etcd.run().await;
        etcd
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts the process (again, on the same ports and data) and waits until it is healthy.
    pub async fn run(&mut self) {
        assert!(self.child.is_none());
        let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("no etcd: install Debian's etcd-server (make test does, as root)");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::File::create(self.dir.join("log")).unwrap();
        let mut cmd = Command::new(binary);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ETCD_")) {
            cmd.env_remove(k);
        }
        cmd.args(["--name", "t0", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t0={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("etcd did not start"));
        let started = Instant::now();
        loop {
            let healthy = async {
                let r = self
                    .http
                    .get(format!("{client}/health"))
                    .send()
                    .await
                    .ok()?;
                let v: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
                Some(v["health"] == "true")
            };
            if healthy.await == Some(true) {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd never became healthy: {log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process; its data stays for `run`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    /// Puts `key` = `value`; the revision it made.
    pub async fn put(&self, key: &str, value: &str) -> u64 {
        let v = self
            .post(
                "/v3/kv/put",
                json!({"key": B64.encode(key), "value": B64.encode(value)}),
            )
            .await;
        revision(&v)
    }

    pub async fn delete(&self, key: &str) -> u64 {
        let v = self
            .post("/v3/kv/deleterange", json!({"key": B64.encode(key)}))
            .await;
        revision(&v)
    }

    /// Puts every pair in one transaction (at most 128, etcd's limit).
    pub async fn put_all(&self, pairs: &[(String, String)]) -> u64 {
        let ops: Vec<Value> = pairs
            .iter()
            .map(|(k, v)| json!({"requestPut": {"key": B64.encode(k), "value": B64.encode(v)}}))
            .collect();
        let v = self.post("/v3/kv/txn", json!({"success": ops})).await;
        revision(&v)
    }

    pub async fn compact(&self, revision: u64) {
        self.post(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string(), "physical": true}),
        )
        .await;
    }
}

fn revision(v: &Value) -> u64 {
    v["header"]["revision"].as_str().unwrap().parse().unwrap()
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
