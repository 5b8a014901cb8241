//! An upstream for the end-to-end benchmark: answers 200 (optionally after a delay), or plays a
//! blackhole (a loopback listener whose connects hang). Binds `127.0.0.1:0`, prints its address
//! on the first line, and serves until killed.
//!
//! ```text
//! cargo run --release --example bench_upstream -- [--delay-ms N | --blackhole]
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::{Blackhole, Mode, Upstream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _keep: Box<dyn std::any::Any> = match args.first().map(String::as_str) {
        Some("--blackhole") => {
            let hole = Blackhole::start().await;
            println!("{}", hole.addr);
            Box::new(hole)
        }
        Some("--delay-ms") => {
            let ms = args[1].parse().expect("--delay-ms N");
            let up = Upstream::start("slow", Mode::Slow(Duration::from_millis(ms))).await;
            println!("{}", up.addr);
            Box::new(up)
        }
        None => {
            let up = Upstream::start("upstream", Mode::Ok).await;
            println!("{}", up.addr);
            Box::new(up)
        }
        Some(other) => panic!("unknown flag {other}"),
    };
    std::future::pending::<()>().await;
}
