//! A hot key under consistent hashing, with bounded loads and without.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{free_port, Mode, Upstream};
use crate::watched::{clients_on, spawn_watched};
use crate::CLIENTS;

/// What a hot-key row showed.
pub(crate) struct Hot {
    /// The most requests each peer had in flight at once, the hot key's home first.
    pub(crate) most: Vec<u64>,
    /// The mean in flight over all peers (16 clients over 4 peers).
    pub(crate) mean: f64,
    /// Requests of other keys answered by a peer other than their own (the one that answered
    /// the key most): of keys whose own peer is the hot key's, and of the others; and all
    /// requests of other keys.
    pub(crate) moved: (u64, u64, u64),
    /// Requests of the hot key answered away from its home.
    pub(crate) hot_spilled: (u64, u64),
}

/// Consistent hashing on the path over four peers answering after 10 ms, 16 clients; 30 % of
/// requests are for one hot key, the rest for 1,000 others; with bounded loads (the factor) or
/// not.
pub(crate) async fn hot_key(bound: Option<&str>, seconds: u64) -> Hot {
    let slow = Mode::Slow(Duration::from_millis(10));
    let mut ups = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ups.push(Upstream::start(name, slow).await);
    }
    let listen = free_port();
    let mut args = vec!["--selector".to_owned(), "hash".to_owned()];
    for u in &ups {
        args.push("--peer".to_owned());
        args.push(u.addr.to_string());
    }
    if let Some(factor) = bound {
        args.extend(["--hash-balance-factor".to_owned(), factor.to_owned()]);
    }
    let (child, t0, _events) = spawn_watched(&args, "", listen).await;
    clients_on(listen, t0 + Duration::from_secs(seconds), |c, n| {
        // A small deterministic stream per client: 3 in 10 hot, the rest spread.
        let x = (c * 7_919 + n * 104_729) % 1_000;
        if n % 10 < 3 {
            "/hot".into()
        } else {
            format!("/k/{x}")
        }
    })
    .await;
    drop(child);
    let paths: Vec<HashMap<String, u64>> = ups
        .iter()
        .map(|u| u.load.paths.lock().unwrap().clone())
        .collect();
    let home = |key: &str| {
        (0..ups.len())
            .max_by_key(|&i| paths[i].get(key).copied().unwrap_or(0))
            .unwrap()
    };
    let hot_home = home("/hot");
    let hot_all: u64 = paths
        .iter()
        .map(|p| p.get("/hot").copied().unwrap_or(0))
        .sum();
    let mut keys: Vec<&String> = paths.iter().flat_map(|p| p.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut with_hot, mut elsewhere, mut others) = (0, 0, 0);
    for key in keys.into_iter().filter(|k| k.starts_with("/k/")) {
        let h = home(key);
        for (i, p) in paths.iter().enumerate() {
            let n = p.get(key).copied().unwrap_or(0);
            others += n;
            match (i != h, h == hot_home) {
                (true, true) => with_hot += n,
                (true, false) => elsewhere += n,
                _ => {}
            }
        }
    }
    let mut most: Vec<u64> = ups
        .iter()
        .map(|u| u.load.most.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    most.swap(0, hot_home);
    Hot {
        most,
        mean: CLIENTS as f64 / ups.len() as f64,
        moved: (with_hot, elsewhere, others),
        hot_spilled: (
            hot_all - paths[hot_home].get("/hot").copied().unwrap_or(0),
            hot_all,
        ),
    }
}
