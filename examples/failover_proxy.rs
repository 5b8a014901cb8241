//! A real failover proxy configured from flags. It runs until interrupted; SIGINT (Ctrl-C) stops
//! it at once.
//!
//! ```text
//! cargo run --release --example failover_proxy -- \
//!     --listen 127.0.0.1:6188 --peer 127.0.0.1:8080 --peer 127.0.0.1:8081 \
//!     --selector ordered --connect-timeout-ms 400 --read-timeout-ms 300 \
//!     --max-attempts 3 --threads 2
//! ```
//! `--peer` repeats, in priority order, and takes `IP:PORT`, `host:PORT` (every address of the
//! name, followed as its DNS records change), an SRV name or `unix:/path`. Or
//! `--peers-file PATH`: one peer per line as `ADDR [weight=N]`, blank lines and `#` comments
//! allowed, read again when it changes and on SIGHUP (a file that fails to parse keeps the old
//! peers, and says why). `--retry-status 503` (repeatable) fails over on that status too.

use std::process::ExitCode;
use std::time::Duration;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_failover::{
    ConfigError, FailoverProxy, OrderedList, Peer, PeerBuilder, PeerSelector, PeerSet, PeersFile,
    RoundRobin, StandardPolicy,
};

struct Args {
    listen: String,
    peers: Vec<String>,
    peers_file: Option<String>,
    selector: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_attempts: u32,
    threads: usize,
    retry_statuses: Vec<u16>,
}

const USAGE: &str =
    "usage: failover_proxy --listen ADDR (--peer ADDR [--peer ADDR ...] | --peers-file PATH) \
[--selector ordered|round-robin] [--connect-timeout-ms N] [--read-timeout-ms N] \
[--max-attempts N] [--threads N] [--retry-status CODE ...]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:6188".into(),
        peers: Vec::new(),
        peers_file: None,
        selector: "ordered".into(),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(60),
        max_attempts: 3,
        threads: 1,
        retry_statuses: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--peer" => args.peers.push(value()?),
            "--peers-file" => args.peers_file = Some(value()?),
            "--selector" => args.selector = value()?,
            "--connect-timeout-ms" => {
                args.connect_timeout = Duration::from_millis(number(value()?)?)
            }
            "--read-timeout-ms" => args.read_timeout = Duration::from_millis(number(value()?)?),
            "--max-attempts" => {
                let v = number(value()?)?;
                args.max_attempts =
                    u32::try_from(v).map_err(|_| format!("--max-attempts: {v} is too large"))?;
            }
            "--threads" => args.threads = number(value()?)? as usize,
            "--retry-status" => {
                let v = number(value()?)?;
                let code =
                    u16::try_from(v).map_err(|_| format!("--retry-status: {v} is not a status"))?;
                args.retry_statuses.push(code);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!(
            "--listen: {:?} is not IP:PORT (127.0.0.1:6188, [::1]:6188)",
            args.listen
        ));
    }
    if args.peers_file.is_some() && !args.peers.is_empty() {
        return Err("give --peer or --peers-file, not both".into());
    }
    Ok(args)
}

fn build(args: &Args) -> Result<(PeerSet, StandardPolicy), ConfigError> {
    let (connect, read) = (args.connect_timeout, args.read_timeout);
    let settings = move |b: PeerBuilder| b.with_connect_timeout(connect).with_read_timeout(read);
    let set = match &args.peers_file {
        Some(path) => {
            let file = PeersFile::new(path)
                .with_peer_settings(settings)
                .reload_on_sighup()
                .on_reload(|result| match result {
                    Ok(n) => eprintln!("failover_proxy: peers file reloaded, {n} peers"),
                    Err(e) => eprintln!("failover_proxy: peers file kept as it was: {e}"),
                });
            let set = PeerSet::new(file.load()?)?;
            file.watch(&set)?;
            set
        }
        None => {
            let peers = args
                .peers
                .iter()
                .map(|a| settings(Peer::builder(a.as_str())).build())
                .collect::<Result<Vec<_>, _>>()?;
            PeerSet::new(peers)?
        }
    };
    let policy = StandardPolicy::builder()
        .with_max_attempts(args.max_attempts)
        .with_retry_statuses(args.retry_statuses.iter().copied())
        .build()?;
    Ok((set, policy))
}

fn serve<S: PeerSelector>(args: &Args, selector: S, policy: StandardPolicy) -> Result<(), String> {
    let conf = ServerConf {
        threads: args.threads,
        // Pingora counts attempts here; never below the policy's.
        max_retries: args.max_attempts as usize,
        // SIGTERM drains for up to a second instead of pingora's default minutes.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = FailoverProxy::new(selector, policy).map_err(|e| e.to_string())?;
    let mut service = proxy
        .into_service(&server.configuration)
        .map_err(|e| e.to_string())?;
    service.add_tcp(&args.listen);
    server.add_service(service);
    eprintln!("failover_proxy listening on {}", args.listen);
    server.run_forever()
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let (set, policy) = build(&args).map_err(|e| e.to_string())?;
        let names: Vec<_> = set.snapshot().iter().map(|p| p.name().to_owned()).collect();
        eprintln!("failover_proxy: peers {names:?}");
        match args.selector.as_str() {
            "ordered" => serve(&args, OrderedList::from_set(set), policy),
            "round-robin" => serve(&args, RoundRobin::from_set(set), policy),
            other => Err(format!(
                "--selector must be ordered or round-robin, not {other}"
            )),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover_proxy: {e}");
            ExitCode::from(2)
        }
    }
}
