//! mesh-apiserver: raftmesh's mesh API server, a Raft-replicated store that speaks the
//! etcd v3 API. It takes etcd's flag names, so operators (and etcd tooling) feel at home.
//!
//! This binary only parses flags, sets up logging and calls [`kvstore::server::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use kvstore::server::{AutoCompaction, ClusterState, Config, Listeners, run};
use tokio::net::TcpListener;

/// Raft-replicated store speaking the etcd v3 API (KV, Watch, Lease, Cluster, Maintenance).
///
/// Start three members with the same --initial-cluster and --initial-cluster-state new;
/// then point etcdctl at any member's client URL. Flags mirror etcd's.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Human-readable name of this member; must match its entry in --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,

    /// Directory for the Raft log, snapshots and the member id.
    #[arg(long, default_value = "default.mesh")]
    data_dir: PathBuf,

    /// URLs to serve the etcd API on (comma-separated), e.g. http://127.0.0.1:2379.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,

    /// Client URLs this member advertises to the cluster (shown by `member list`).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,

    /// URLs to serve Raft peer traffic on. Never expose this port to clients.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,

    /// Peer URLs of this member as the other members reach it.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,

    /// The founding members: name=peer-url,... (ignored once the data dir has state).
    #[arg(long, default_value = "default=http://127.0.0.1:2380")]
    initial_cluster: String,

    /// `new` to found the cluster, `existing` to join one that added this member.
    #[arg(long, value_enum, default_value_t = StateArg::New)]
    initial_cluster_state: StateArg,

    /// Token that makes member and cluster ids unique to this cluster.
    #[arg(long, default_value = "raftmesh-cluster")]
    initial_cluster_token: String,

    /// URLs to serve /metrics (Prometheus) and /healthz on (comma-separated).
    #[arg(long, value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,

    /// Committed log entries between snapshots (the log before a snapshot is purged).
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,

    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,

    /// Raft election timeout, in milliseconds (randomized up to twice this).
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,

    /// `revision`: keep --auto-compaction-retention revisions; `periodic`: keep that much
    /// time (e.g. 1h, 30m, or hours as a number); `off`: compact only on request.
    #[arg(long, value_enum, default_value_t = CompactionArg::Revision)]
    auto_compaction_mode: CompactionArg,

    /// What auto-compaction keeps: a revision count, or a duration in periodic mode.
    #[arg(long, default_value = "100000")]
    auto_compaction_retention: String,

    /// Interval of watch progress notifications, in seconds.
    #[arg(long, default_value_t = 600)]
    watch_progress_notify_interval: u64,

    /// Log filter (trace, debug, info, warn, error, or a tracing directive).
    #[arg(long, env = "RUST_LOG", default_value = "info,openraft=warn")]
    log_level: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    New,
    Existing,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompactionArg {
    Revision,
    Periodic,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `host:port` of an `http://host:port` URL.
fn socket_addr(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are served (TLS comes later)"))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || !hostport.contains(':') {
        bail!("{url}: expected http://host:port");
    }
    Ok(hostport.to_owned())
}

fn retention(mode: CompactionArg, value: &str) -> anyhow::Result<AutoCompaction> {
    Ok(match mode {
        CompactionArg::Off => AutoCompaction::Off,
        CompactionArg::Revision => {
            let n: i64 = value.parse().with_context(|| {
                format!("--auto-compaction-retention {value:?}: not a revision count")
            })?;
            if n <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(n)
            }
        }
        CompactionArg::Periodic => {
            let secs = if let Some(h) = value.strip_suffix('h') {
                h.parse::<f64>().map(|h| h * 3600.0)
            } else if let Some(m) = value.strip_suffix('m') {
                m.parse::<f64>().map(|m| m * 60.0)
            } else if let Some(s) = value.strip_suffix('s') {
                s.parse::<f64>()
            } else {
                value.parse::<f64>().map(|h| h * 3600.0)
            }
            .with_context(|| format!("--auto-compaction-retention {value:?}: not a duration"))?;
            if secs <= 0.0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(Duration::from_secs_f64(secs))
            }
        }
    })
}

fn config(args: &Args) -> anyhow::Result<Config> {
    if args.heartbeat_interval == 0 || args.election_timeout < 5 * args.heartbeat_interval {
        bail!(
            "--election-timeout ({}ms) must be at least 5 × --heartbeat-interval ({}ms)",
            args.election_timeout,
            args.heartbeat_interval
        );
    }
    if args.snapshot_count == 0 {
        bail!("--snapshot-count must be > 0");
    }
    for url in args
        .advertise_client_urls
        .iter()
        .chain(&args.initial_advertise_peer_urls)
    {
        socket_addr(url)?;
    }
    Ok(Config {
        name: args.name.clone(),
        data_dir: args.data_dir.clone(),
        advertise_client_urls: args.advertise_client_urls.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_state: match args.initial_cluster_state {
            StateArg::New => ClusterState::New,
            StateArg::Existing => ClusterState::Existing,
        },
        initial_cluster_token: args.initial_cluster_token.clone(),
        snapshot_count: args.snapshot_count,
        heartbeat_interval: Duration::from_millis(args.heartbeat_interval),
        election_timeout: Duration::from_millis(args.election_timeout),
        auto_compaction: retention(args.auto_compaction_mode, &args.auto_compaction_retention)?,
        request_timeout: Duration::from_secs(5),
        progress_notify_interval: Duration::from_secs(args.watch_progress_notify_interval.max(1)),
    })
}

async fn bind(urls: &[String], what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for url in urls {
        let addr = socket_addr(url)?;
        let l = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {what} URL {url}"))?;
        out.push(l);
    }
    Ok(out)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mesh-apiserver: invalid configuration: {e:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("mesh-apiserver")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let listeners = Listeners {
            client: bind(&args.listen_client_urls, "client").await?,
            peer: bind(&args.listen_peer_urls, "peer").await?,
            metrics: bind(&args.listen_metrics_urls, "metrics").await?,
        };
        tracing::info!(
            client = ?args.listen_client_urls,
            peer = ?args.listen_peer_urls,
            metrics = ?args.listen_metrics_urls,
            "listening"
        );
        run(config, listeners, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("mesh-apiserver: {e:#}");
            eprintln!("mesh-apiserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
