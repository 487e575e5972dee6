//! mesh-apiserver: raftmesh's mesh API server, a Raft-replicated store that speaks the
//! etcd v3 API. It takes etcd's flag names, so operators (and etcd tooling) feel at home.
//!
//! This binary only parses flags, sets up logging and calls [`kvstore::server::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use certs::tls::TlsFiles;
use clap::{Parser, ValueEnum};
use kvstore::metrics::ExtraMetrics;
use kvstore::server::{AutoCompaction, ClusterState, Config, Listeners, MemberTls, run};
use mesh_apiserver::publish::controller::{self, PublisherConfig, PublisherStats, Source};
use mesh_apiserver::publish::convert::Settings;
use mesh_apiserver::publish::live::LiveSource;
use tokio::net::TcpListener;

/// Raft-replicated store speaking the etcd v3 API (KV, Watch, Lease, Cluster, Maintenance).
///
/// Start three members with the same --initial-cluster and --initial-cluster-state new;
/// then point etcdctl at any member's client URL. Flags mirror etcd's.
///
/// Both ports are mutual TLS 1.3 (https:// URLs): create the certificates with
/// `meshctl pki init`, and pass --cert-file, --key-file, --trusted-ca-file and
/// --client-cert-auth for the client port, and the --peer-* equivalents for the peer port.
/// Each request is authorized by the role in the client's certificate (admin, agent, remote,
/// apiserver). Certificate files are re-read when they change, without a restart.
/// Plaintext (http:// URLs, no authorization) only with --insecure-plaintext.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Human-readable name of this member; must match its entry in --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,

    /// Directory for the Raft log, snapshots and the member id.
    #[arg(long, default_value = "default.mesh")]
    data_dir: PathBuf,

    /// URLs to serve the etcd API on (comma-separated), e.g. https://127.0.0.1:2379.
    #[arg(long, default_value = "https://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,

    /// Client URLs this member advertises to the cluster (shown by `member list`).
    #[arg(long, default_value = "https://127.0.0.1:2379", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,

    /// URLs to serve Raft peer traffic on. Never expose this port to clients.
    #[arg(long, default_value = "https://127.0.0.1:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,

    /// Peer URLs of this member as the other members reach it.
    #[arg(long, default_value = "https://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,

    /// The founding members: name=peer-url,... (ignored once the data dir has state).
    #[arg(long, default_value = "default=https://127.0.0.1:2380")]
    initial_cluster: String,

    /// `new` to found the cluster, `existing` to join one that added this member.
    #[arg(long, value_enum, default_value_t = StateArg::New)]
    initial_cluster_state: StateArg,

    /// Token that makes member and cluster ids unique to this cluster.
    #[arg(long, default_value = "raftmesh-cluster")]
    initial_cluster_token: String,

    /// URLs to serve /metrics (Prometheus) and /healthz on (comma-separated, http://; they
    /// carry counters, never keys or values).
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

    /// Client port certificate (PEM): an apiserver certificate of this cluster.
    #[arg(long, help_heading = "TLS")]
    cert_file: Option<PathBuf>,

    /// Private key of --cert-file (PEM).
    #[arg(long, help_heading = "TLS")]
    key_file: Option<PathBuf>,

    /// CA bundle that issued the client certificates to accept (PEM).
    #[arg(long, help_heading = "TLS")]
    trusted_ca_file: Option<PathBuf>,

    /// Require a client certificate on the client port. Required with TLS: every request is
    /// authorized by the certificate's role.
    #[arg(long, help_heading = "TLS")]
    client_cert_auth: bool,

    /// Peer port certificate (PEM): an apiserver certificate of this cluster, also presented
    /// to other members.
    #[arg(long, help_heading = "TLS")]
    peer_cert_file: Option<PathBuf>,

    /// Private key of --peer-cert-file (PEM).
    #[arg(long, help_heading = "TLS")]
    peer_key_file: Option<PathBuf>,

    /// CA bundle that issued the other members' certificates (PEM).
    #[arg(long, help_heading = "TLS")]
    peer_trusted_ca_file: Option<PathBuf>,

    /// Require a client certificate on the peer port. Required with TLS: only this cluster's
    /// apiserver certificates are accepted.
    #[arg(long, help_heading = "TLS")]
    peer_client_cert_auth: bool,

    /// Serve plaintext http:// on both ports with no authorization at all. For tests and
    /// benchmarks on loopback only; never in production.
    #[arg(long, help_heading = "TLS")]
    insecure_plaintext: bool,

    /// This cluster's name in the mesh (a DNS-1123 name). With TLS it must be the cluster of
    /// the certificates.
    #[arg(long, help_heading = "Publishing")]
    cluster_name: Option<String>,

    /// This cluster's id in the mesh, 1..=65535 (the high 16 bits of its identities).
    #[arg(long, help_heading = "Publishing")]
    cluster_id: Option<u16>,

    /// Publish the Nodes, Pods, Services, EndpointSlices and MeshPolicies in the YAML files of
    /// this directory (as `kubectl get -o yaml` prints them); re-read when they change. Needs
    /// --cluster-name and --cluster-id.
    #[arg(long, help_heading = "Publishing", conflicts_with = "kubernetes")]
    manifests_dir: Option<PathBuf>,

    /// Publish the objects of the live Kubernetes API (in-cluster service account, else
    /// KUBECONFIG or ~/.kube/config), watched continuously. Needs --cluster-name and
    /// --cluster-id.
    #[arg(long, help_heading = "Publishing")]
    kubernetes: bool,

    /// Seconds an identity stays after its last workload went away, so peers that cached it
    /// stop using it first.
    #[arg(long, help_heading = "Publishing", default_value_t = 900)]
    identity_gc_grace: u64,

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

/// `host:port` of a `<scheme>://host:port` URL.
fn socket_addr(url: &str, scheme: &str) -> anyhow::Result<String> {
    let Some(rest) = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else {
        if scheme == "https" {
            bail!(
                "{url}: expected https://host:port (plaintext http:// only with --insecure-plaintext)"
            );
        }
        bail!("{url}: expected {scheme}://host:port");
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || !hostport.contains(':') {
        bail!("{url}: expected {scheme}://host:port");
    }
    Ok(hostport.to_owned())
}

/// The URL scheme of the client and peer ports.
fn scheme(args: &Args) -> &'static str {
    if args.insecure_plaintext {
        "http"
    } else {
        "https"
    }
}

/// Loads the TLS files, or checks that none were given with --insecure-plaintext.
fn tls(args: &Args) -> anyhow::Result<Option<MemberTls>> {
    let files = [
        ("--cert-file", &args.cert_file),
        ("--key-file", &args.key_file),
        ("--trusted-ca-file", &args.trusted_ca_file),
        ("--peer-cert-file", &args.peer_cert_file),
        ("--peer-key-file", &args.peer_key_file),
        ("--peer-trusted-ca-file", &args.peer_trusted_ca_file),
    ];
    if args.insecure_plaintext {
        let given: Vec<&str> = files
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(flag, _)| *flag)
            .chain(args.client_cert_auth.then_some("--client-cert-auth"))
            .chain(
                args.peer_client_cert_auth
                    .then_some("--peer-client-cert-auth"),
            )
            .collect();
        if !given.is_empty() {
            bail!(
                "--insecure-plaintext serves no TLS, but {} given",
                given.join(", ")
            );
        }
        return Ok(None);
    }
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(flag, _)| *flag)
        .chain((!args.client_cert_auth).then_some("--client-cert-auth"))
        .chain((!args.peer_client_cert_auth).then_some("--peer-client-cert-auth"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "TLS needs {} (create certificates with `meshctl pki init`; plaintext only with --insecure-plaintext)",
            missing.join(", ")
        );
    }
    let path = |f: &Option<PathBuf>| f.clone().expect("checked above");
    let client = TlsFiles {
        cert: path(&args.cert_file),
        key: path(&args.key_file),
        ca: path(&args.trusted_ca_file),
    };
    let peer = TlsFiles {
        cert: path(&args.peer_cert_file),
        key: path(&args.peer_key_file),
        ca: path(&args.peer_trusted_ca_file),
    };
    Ok(Some(MemberTls::load(client, peer)?))
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

/// Where the publisher takes objects from, before the runtime exists.
#[derive(Debug)]
enum SourceArg {
    Manifests(PathBuf),
    Kubernetes,
}

/// The publisher's configuration (without its source), when --manifests-dir or --kubernetes
/// is given.
fn publisher(
    args: &Args,
    config: &Config,
) -> anyhow::Result<Option<(PublisherSettings, SourceArg)>> {
    let source = match (&args.manifests_dir, args.kubernetes) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                bail!("--manifests-dir {}: not a directory", dir.display());
            }
            SourceArg::Manifests(dir.clone())
        }
        (None, true) => SourceArg::Kubernetes,
        (None, false) => {
            if args.cluster_name.is_some() || args.cluster_id.is_some() {
                bail!(
                    "--cluster-name and --cluster-id are used with --manifests-dir or --kubernetes"
                );
            }
            return Ok(None);
        }
    };
    let (Some(cluster), Some(id)) = (&args.cluster_name, args.cluster_id) else {
        bail!("publishing needs --cluster-name and --cluster-id");
    };
    certs::identity::check_name("--cluster-name", cluster)?;
    if id == 0 {
        bail!("--cluster-id must be 1..=65535");
    }
    if let Some(tls) = &config.tls
        && tls.cluster() != *cluster
    {
        bail!(
            "--cluster-name {cluster} but the certificates are for cluster {}",
            tls.cluster()
        );
    }
    let client_url = config
        .advertise_client_urls
        .first()
        .context("--advertise-client-urls is empty")?
        .clone();
    let tls = match (&args.trusted_ca_file, &args.cert_file, &args.key_file) {
        (Some(ca), Some(cert), Some(key)) => Some((ca.clone(), cert.clone(), key.clone())),
        _ => None,
    };
    let settings = PublisherSettings {
        identity_gc_grace: Duration::from_secs(args.identity_gc_grace),
        stats: Arc::default(),
        settings: Settings {
            cluster: cluster.clone(),
            cluster_id: id,
        },
        client_url,
        tls,
    };
    Ok(Some((settings, source)))
}

/// [`PublisherConfig`] without its source.
#[derive(Debug)]
struct PublisherSettings {
    identity_gc_grace: Duration,
    stats: Arc<PublisherStats>,
    settings: Settings,
    client_url: String,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Starts the source (the live API needs the runtime) and completes the configuration.
async fn start_publisher(
    p: PublisherSettings,
    source: SourceArg,
) -> anyhow::Result<PublisherConfig> {
    let source = match source {
        SourceArg::Manifests(dir) => Source::Manifests(dir),
        SourceArg::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (--kubernetes)")?;
            Source::Live(LiveSource::start(client))
        }
    };
    Ok(PublisherConfig {
        identity_gc_grace: p.identity_gc_grace,
        stats: p.stats,
        settings: p.settings,
        source,
        client_url: p.client_url,
        tls: p.tls,
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
        .chain(&args.listen_client_urls)
        .chain(&args.listen_peer_urls)
    {
        socket_addr(url, scheme(args))?;
    }
    for url in &args.listen_metrics_urls {
        socket_addr(url, "http")?;
    }
    for entry in args.initial_cluster.split(',') {
        let (_, url) = entry
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {entry:?}: expected name=url"))?;
        socket_addr(url, scheme(args))
            .with_context(|| format!("--initial-cluster entry {entry:?}"))?;
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
        tls: tls(args)?,
        extra_metrics: None,
    })
}

async fn bind(urls: &[String], scheme: &str, what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for url in urls {
        let addr = socket_addr(url, scheme)?;
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
    let (config, publisher) = match config(&args).and_then(|mut c| {
        let p = publisher(&args, &c)?;
        if let Some((settings, _)) = &p {
            let stats = settings.stats.clone();
            c.extra_metrics = Some(ExtraMetrics(Arc::new(move || stats.render())));
        }
        Ok((c, p))
    }) {
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
            client: bind(&args.listen_client_urls, scheme(&args), "client").await?,
            peer: bind(&args.listen_peer_urls, scheme(&args), "peer").await?,
            metrics: bind(&args.listen_metrics_urls, "http", "metrics").await?,
        };
        tracing::info!(
            client = ?args.listen_client_urls,
            peer = ?args.listen_peer_urls,
            metrics = ?args.listen_metrics_urls,
            "listening"
        );
        if let Some((settings, source)) = publisher {
            tracing::info!(
                source = ?source,
                cluster = %settings.settings.cluster,
                "publishing the cluster's objects while this member leads"
            );
            tokio::spawn(controller::run(start_publisher(settings, source).await?));
        }
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
