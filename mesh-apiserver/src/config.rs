//! The command line ([`Flags`], etcd's flag names plus raftmesh's own) and the configuration it
//! is validated into once, before anything starts ([`Config::validate`]). A configuration that
//! does not validate changes nothing; the binary exits with status 64.

use std::path::PathBuf;
use std::time::Duration;

use certs::tls::TlsFiles;
use clap::{Parser, ValueEnum};
use kvstore::server::{AutoCompaction, ClusterState, ConnectionLimits, MemberTls, StoreLimits};
use mesh_api::cidr::Cidr;

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
///
/// The leader also publishes the cluster's Kubernetes objects (--manifests-dir or
/// --kubernetes) and mirrors every connected remote cluster (`meshctl connect`).
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh-apiserver", version, about, long_about)]
pub struct Flags {
    /// Human-readable name of this member; must match its entry in --initial-cluster.
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Directory for the Raft log, snapshots and the member id.
    #[arg(long, default_value = "default.mesh")]
    pub data_dir: PathBuf,

    /// URLs to serve the etcd API on (comma-separated), e.g. https://127.0.0.1:2379.
    #[arg(long, default_value = "https://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,

    /// Client URLs this member advertises to the cluster (shown by `member list`).
    #[arg(long, default_value = "https://127.0.0.1:2379", value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// URLs to serve Raft peer traffic on. Never expose this port to clients.
    #[arg(long, default_value = "https://127.0.0.1:2380", value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,

    /// Peer URLs of this member as the other members reach it.
    #[arg(long, default_value = "https://127.0.0.1:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,

    /// The founding members: name=peer-url,... (ignored once the data dir has state).
    #[arg(long, default_value = "default=https://127.0.0.1:2380")]
    pub initial_cluster: String,

    /// `new` to found the cluster, `existing` to join one that added this member.
    #[arg(long, value_enum, default_value_t = StateArg::New)]
    pub initial_cluster_state: StateArg,

    /// Token that makes member and cluster ids unique to this cluster.
    #[arg(long, default_value = "raftmesh-cluster")]
    pub initial_cluster_token: String,

    /// URLs to serve /metrics (Prometheus) and /healthz on (comma-separated, http://; they
    /// carry counters, never keys or values).
    #[arg(long, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Committed log entries between snapshots (the log before a snapshot is purged).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Raft heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Raft election timeout, in milliseconds (randomized up to twice this).
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,

    /// `revision`: keep --auto-compaction-retention revisions; `periodic`: keep that much
    /// time (e.g. 1h, 30m, or hours as a number); `off`: compact only on request.
    #[arg(long, value_enum, default_value_t = CompactionArg::Revision)]
    pub auto_compaction_mode: CompactionArg,

    /// What auto-compaction keeps: a revision count, or a duration in periodic mode.
    #[arg(long, default_value = "100000")]
    pub auto_compaction_retention: String,

    /// Interval of watch progress notifications, in seconds.
    #[arg(long, default_value_t = 600)]
    pub watch_progress_notify_interval: u64,

    /// Streams (calls and watches) one client connection may have open at once, on both ports.
    #[arg(long, default_value_t = 1000)]
    pub max_concurrent_streams: u32,

    /// Idle time after which the server pings a client connection (e.g. 30s, 2m).
    #[arg(long, default_value = "30s")]
    pub grpc_keepalive_interval: String,

    /// How long a ping may go unanswered before the connection is closed (dead clients and
    /// their watches go), e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub grpc_keepalive_timeout: String,

    /// Storage quota in bytes (0: the default, 2 GiB). Counted as every stored version —
    /// live, overwritten or deleted until compaction drops it — at its key's and value's length
    /// plus 64 bytes. A write that would pass it raises the NOSPACE alarm: writes then fail
    /// with "etcdserver: mvcc: database space exceeded" until space is freed (delete, compact)
    /// and the alarm is disarmed (`etcdctl alarm disarm`); reads and deletes still work.
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,

    /// Found a new cluster from a backup (`etcdctl snapshot save` of a raftmesh member):
    /// every founding member gets the same file and a new, empty --data-dir, with
    /// --initial-cluster-state new. Keys, their history since compaction, the revision and
    /// leases come back; members, cluster id and alarms are the new cluster's. Ignored on a
    /// restart of a member that was restored.
    #[arg(long, value_name = "FILE")]
    pub restore_from: Option<PathBuf>,

    /// Live leases the cluster holds at most; a grant past it fails.
    #[arg(long, default_value_t = 100_000)]
    pub max_leases: usize,

    /// Watchers one watch stream may hold; a create past it is canceled.
    #[arg(long, default_value_t = 10_000)]
    pub max_watchers_per_stream: usize,

    /// Live leases one agent or remote certificate identity may hold; a grant past it fails
    /// (etcdserver: too many leases). An agent holds one, a few while a restarted agent's old
    /// lease expires.
    #[arg(long, default_value_t = 32)]
    pub max_leases_per_identity: usize,

    /// Watch streams one agent or remote certificate identity may have open; a stream past
    /// it fails with ResourceExhausted. An agent opens two.
    #[arg(long, default_value_t = 32)]
    pub max_watch_streams_per_identity: usize,

    /// Watchers one agent or remote certificate identity may hold over all its streams; a
    /// create past it is canceled (etcdserver: too many watchers for this identity).
    #[arg(long, default_value_t = 256)]
    pub max_watchers_per_identity: usize,

    /// The largest value one put of an agent or remote certificate identity may carry; a
    /// larger one fails (etcdserver: request is too large). An agent's node key record is
    /// about 100 bytes.
    #[arg(long, default_value_t = 1024)]
    pub max_value_bytes_per_identity: usize,

    /// Writes per second (puts, deletes, writing txns) one agent or remote certificate
    /// identity may make, with a burst of ten seconds' worth; past it they fail (etcdserver:
    /// too many requests). An agent writes its node key once per start.
    #[arg(long, default_value_t = 10)]
    pub max_writes_per_second_per_identity: usize,

    /// Client port certificate (PEM): an apiserver certificate of this cluster.
    #[arg(long, help_heading = "TLS")]
    pub cert_file: Option<PathBuf>,

    /// Private key of --cert-file (PEM).
    #[arg(long, help_heading = "TLS")]
    pub key_file: Option<PathBuf>,

    /// CA bundle that issued the client certificates to accept (PEM).
    #[arg(long, help_heading = "TLS")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require a client certificate on the client port. Required with TLS: every request is
    /// authorized by the certificate's role.
    #[arg(long, help_heading = "TLS")]
    pub client_cert_auth: bool,

    /// Peer port certificate (PEM): an apiserver certificate of this cluster, also presented
    /// to other members.
    #[arg(long, help_heading = "TLS")]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key of --peer-cert-file (PEM).
    #[arg(long, help_heading = "TLS")]
    pub peer_key_file: Option<PathBuf>,

    /// CA bundle that issued the other members' certificates (PEM).
    #[arg(long, help_heading = "TLS")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Require a client certificate on the peer port. Required with TLS: only this cluster's
    /// apiserver certificates are accepted.
    #[arg(long, help_heading = "TLS")]
    pub peer_client_cert_auth: bool,

    /// Serve plaintext http:// on both ports with no authorization at all. For tests and
    /// benchmarks on loopback only; never in production.
    #[arg(long, help_heading = "TLS")]
    pub insecure_plaintext: bool,

    /// This cluster's name in the mesh (a DNS-1123 name). With TLS it must be the cluster of
    /// the certificates.
    #[arg(long, help_heading = "Publishing")]
    pub cluster_name: Option<String>,

    /// This cluster's id in the mesh, 1..=65535 (the high 16 bits of its identities).
    #[arg(long, help_heading = "Publishing")]
    pub cluster_id: Option<u16>,

    /// Publish the Nodes, Pods, Services, EndpointSlices and MeshPolicies in the YAML files of
    /// this directory (as `kubectl get -o yaml` prints them); re-read when they change. Needs
    /// --cluster-name and --cluster-id.
    #[arg(long, help_heading = "Publishing", conflicts_with = "kubernetes")]
    pub manifests_dir: Option<PathBuf>,

    /// Publish the objects of the live Kubernetes API (in-cluster service account, else
    /// KUBECONFIG or ~/.kube/config), watched continuously. Needs --cluster-name and
    /// --cluster-id.
    #[arg(long, help_heading = "Publishing")]
    pub kubernetes: bool,

    /// The kubeconfig file (its current context) for --kubernetes and the agent bootstrap
    /// [default: the in-cluster service account, else KUBECONFIG or ~/.kube/config].
    #[arg(long, help_heading = "Publishing")]
    pub kubeconfig: Option<PathBuf>,

    /// Seconds an identity stays after its last workload went away, so peers that cached it
    /// stop using it first.
    #[arg(long, help_heading = "Publishing", default_value_t = 900)]
    pub identity_gc_grace: u64,

    /// The cluster's pod CIDRs (comma-separated), published in its cluster record together
    /// with the Nodes' pod CIDRs. For CNIs whose Nodes carry none (the AWS VPC CNI): other
    /// clusters mirror only pod addresses inside the published CIDRs.
    #[arg(long, help_heading = "Publishing", value_delimiter = ',')]
    pub pod_cidr: Vec<String>,

    /// The cluster's service CIDRs (comma-separated), published in its cluster record.
    #[arg(long, help_heading = "Publishing", value_delimiter = ',')]
    pub service_cidr: Vec<String>,

    /// Where other clusters reach this cluster's API server (comma-separated https:// URLs: a
    /// load balancer name, NodePort addresses), published in the cluster record for `meshctl
    /// connect`. Give every member the same value. Default: every member's
    /// --advertise-client-urls.
    #[arg(long, help_heading = "Remote clusters", value_delimiter = ',')]
    pub advertise_remote_urls: Vec<String>,

    /// How long a disconnected remote's mirrored records stay after its connection was
    /// removed (`meshctl disconnect`), e.g. 180s, 3m, 1h.
    #[arg(long, help_heading = "Remote clusters", default_value = "3m")]
    pub disconnect_grace: String,

    /// Most keys mirrored from one remote cluster; a remote above it stops being mirrored
    /// (its status says so), so no remote can fill this store.
    #[arg(long, help_heading = "Remote clusters", default_value_t = 500_000)]
    pub remote_max_keys: u64,

    /// Most bytes (keys and values) mirrored from one remote cluster, in MiB.
    #[arg(long, help_heading = "Remote clusters", default_value_t = 256)]
    pub remote_max_mib: u64,

    /// Most bytes one remote's changes may write here per minute, in MiB, with a burst of
    /// --remote-max-mib (a first list of a remote at its limit). Every change is a new version
    /// kept in memory until compaction, so a remote rewriting its records would otherwise grow
    /// every member; past it the remote is paused and reported (status, meshctl status,
    /// raftmesh_remote_paused_total), and resumes where it was.
    #[arg(long, help_heading = "Remote clusters", default_value_t = 32)]
    pub remote_write_mib_per_minute: u64,

    /// Serve the agent bootstrap at these https:// URLs (comma-separated): agents without a
    /// certificate send a ServiceAccount token bound to their pod and get an `agent`
    /// certificate named after their node (the token is checked with a TokenReview; needs
    /// the Kubernetes API, --bootstrap-ca-key-file and --bootstrap-service-account).
    #[arg(long, help_heading = "Agent bootstrap", value_delimiter = ',')]
    pub listen_bootstrap_urls: Vec<String>,

    /// The CA certificate that signs agent certificates [default: --trusted-ca-file].
    #[arg(long, help_heading = "Agent bootstrap")]
    pub bootstrap_ca_file: Option<PathBuf>,

    /// The key of that CA.
    #[arg(long, help_heading = "Agent bootstrap")]
    pub bootstrap_ca_key_file: Option<PathBuf>,

    /// A ServiceAccount (NAMESPACE/NAME) whose pod-bound tokens get agent certificates
    /// (repeatable): the agents' own.
    #[arg(long = "bootstrap-service-account", help_heading = "Agent bootstrap")]
    pub bootstrap_service_accounts: Vec<String>,

    /// The audience the agents' tokens must be for.
    #[arg(long, help_heading = "Agent bootstrap", default_value = mesh_api::bootstrap::DEFAULT_AUDIENCE)]
    pub bootstrap_audience: String,

    /// How long an agent certificate is valid (agents renew after two thirds), e.g. 24h.
    #[arg(long, help_heading = "Agent bootstrap", default_value = "168h")]
    pub agent_cert_validity: String,

    /// Log filter (trace, debug, info, warn, error, or a tracing directive).
    #[arg(long, env = "RUST_LOG", default_value = "info,openraft=warn")]
    pub log_level: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Found the cluster.
    New,
    /// Join a running cluster that added this member.
    Existing,
}

/// `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactionArg {
    /// Keep a number of revisions.
    Revision,
    /// Keep a duration of history.
    Periodic,
    /// Compact only on request.
    Off,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot be used; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value is refused.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Flags that do not go together, or one that needs another.
    #[error("{0}")]
    Combination(&'static str),
    /// The TLS files do not load or do not fit together.
    #[error(transparent)]
    Tls(#[from] kvstore::tls::TlsError),
    /// Certificates of one cluster, a name of another.
    #[error("--cluster-name {flag} but the certificates are for cluster {certs}")]
    ClusterMismatch {
        /// `--cluster-name`.
        flag: String,
        /// The certificates' cluster.
        certs: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Where the publisher takes objects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// `--manifests-dir`.
    Manifests(PathBuf),
    /// `--kubernetes` (connected when the server starts).
    Kubernetes,
}

/// This cluster's place in the mesh: what its cluster record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `--cluster-name`.
    pub name: String,
    /// `--cluster-id`.
    pub id: u16,
    /// `--pod-cidr`.
    pub pod_cidrs: Vec<Cidr>,
    /// `--service-cidr`.
    pub service_cidrs: Vec<Cidr>,
    /// `--advertise-remote-urls`; empty: every member's client URLs.
    pub remote_urls: Vec<String>,
    /// SHA-256 of this cluster's CA certificate (DER), hex; empty in plaintext mode.
    pub ca_fingerprint: String,
}

/// The publisher's settings (`--manifests-dir` or `--kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSettings {
    /// Where objects come from.
    pub source: SourceConfig,
    /// `--identity-gc-grace`.
    pub identity_gc_grace: Duration,
}

/// The remote mirror's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorSettings {
    /// `--disconnect-grace`.
    pub disconnect_grace: Duration,
    /// `--remote-max-keys`.
    pub max_keys: u64,
    /// `--remote-max-mib`, in bytes.
    pub max_bytes: u64,
    /// `--remote-write-mib-per-minute`, in bytes.
    pub write_bytes_per_minute: u64,
}

/// A validated configuration: everything [`crate::run`] needs besides the sockets.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store member.
    pub member: kvstore::server::Config,
    /// `host:port` of every client, peer and metrics URL to listen on.
    pub listen_client: Vec<String>,
    /// See `listen_client`.
    pub listen_peer: Vec<String>,
    /// See `listen_client`.
    pub listen_metrics: Vec<String>,
    /// Name, id and cluster record fields, with `--cluster-name`.
    pub cluster: Option<ClusterConfig>,
    /// With `--manifests-dir` or `--kubernetes`.
    pub publisher: Option<PublisherSettings>,
    /// Mirroring connected remotes.
    pub mirror: MirrorSettings,
    /// CA, certificate and key the controllers use to reach this member (its client-port
    /// files); `None` in plaintext mode.
    pub local_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// With `--listen-bootstrap-urls`.
    pub bootstrap: Option<crate::bootstrap::Settings>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

impl Config {
    /// Checks every flag and loads the TLS files.
    pub fn validate(flags: &Flags) -> Result<Config, ConfigError> {
        let scheme = if flags.insecure_plaintext {
            "http"
        } else {
            "https"
        };
        if flags.heartbeat_interval == 0 || flags.election_timeout < 5 * flags.heartbeat_interval {
            return Err(invalid(
                "--election-timeout",
                &flags.election_timeout.to_string(),
                format!(
                    "must be at least 5 × --heartbeat-interval ({}ms)",
                    flags.heartbeat_interval
                ),
            ));
        }
        if flags.snapshot_count == 0 {
            return Err(invalid("--snapshot-count", "0", "must be > 0"));
        }
        let addrs = |flag, urls: &[String], scheme| -> Result<Vec<String>, ConfigError> {
            urls.iter()
                .map(|u| socket_addr(u, scheme).map_err(|r| invalid(flag, u, r)))
                .collect()
        };
        addrs(
            "--advertise-client-urls",
            &flags.advertise_client_urls,
            scheme,
        )?;
        addrs(
            "--initial-advertise-peer-urls",
            &flags.initial_advertise_peer_urls,
            scheme,
        )?;
        let listen_client = addrs("--listen-client-urls", &flags.listen_client_urls, scheme)?;
        let listen_peer = addrs("--listen-peer-urls", &flags.listen_peer_urls, scheme)?;
        let listen_metrics = addrs("--listen-metrics-urls", &flags.listen_metrics_urls, "http")?;
        for entry in flags.initial_cluster.split(',') {
            let Some((_, url)) = entry.split_once('=') else {
                return Err(invalid("--initial-cluster", entry, "expected name=url"));
            };
            socket_addr(url, scheme).map_err(|r| invalid("--initial-cluster", entry, r))?;
        }
        let tls = tls(flags)?;
        let cluster = cluster(flags, tls.as_ref())?;
        let publisher = publisher(flags)?;
        let disconnect_grace = parse_duration(&flags.disconnect_grace, 1.0)
            .map_err(|r| invalid("--disconnect-grace", &flags.disconnect_grace, r))?;
        if flags.remote_max_keys == 0
            || flags.remote_max_mib == 0
            || flags.remote_write_mib_per_minute == 0
        {
            return Err(ConfigError::Combination(
                "--remote-max-keys, --remote-max-mib and --remote-write-mib-per-minute must be > 0",
            ));
        }
        let member = kvstore::server::Config {
            name: flags.name.clone(),
            data_dir: flags.data_dir.clone(),
            advertise_client_urls: flags.advertise_client_urls.clone(),
            initial_advertise_peer_urls: flags.initial_advertise_peer_urls.clone(),
            initial_cluster: flags.initial_cluster.clone(),
            initial_cluster_state: match flags.initial_cluster_state {
                StateArg::New => ClusterState::New,
                StateArg::Existing => ClusterState::Existing,
            },
            initial_cluster_token: flags.initial_cluster_token.clone(),
            snapshot_count: flags.snapshot_count,
            heartbeat_interval: Duration::from_millis(flags.heartbeat_interval),
            election_timeout: Duration::from_millis(flags.election_timeout),
            auto_compaction: retention(
                flags.auto_compaction_mode,
                &flags.auto_compaction_retention,
            )?,
            request_timeout: Duration::from_secs(5),
            progress_notify_interval: Duration::from_secs(
                flags.watch_progress_notify_interval.max(1),
            ),
            tls,
            limits: limits(flags)?,
            store_limits: store_limits(flags)?,
            restore_from: flags.restore_from.clone(),
        };
        let local_tls = match (&flags.trusted_ca_file, &flags.cert_file, &flags.key_file) {
            (Some(ca), Some(cert), Some(key)) if !flags.insecure_plaintext => {
                Some((ca.clone(), cert.clone(), key.clone()))
            }
            _ => None,
        };
        let bootstrap = bootstrap(flags, local_tls.as_ref(), &member)?;
        Ok(Config {
            member,
            listen_client,
            listen_peer,
            listen_metrics,
            cluster,
            publisher,
            bootstrap,
            kubeconfig: flags.kubeconfig.clone(),
            mirror: MirrorSettings {
                disconnect_grace,
                max_keys: flags.remote_max_keys,
                max_bytes: flags.remote_max_mib.saturating_mul(1 << 20),
                write_bytes_per_minute: flags.remote_write_mib_per_minute.saturating_mul(1 << 20),
            },
            local_tls,
        })
    }

    /// This cluster's name: `--cluster-name`, else the certificates' cluster.
    pub fn cluster_name(&self) -> Option<String> {
        self.cluster
            .as_ref()
            .map(|c| c.name.clone())
            .or_else(|| self.member.tls.as_ref().map(MemberTls::cluster))
    }
}

/// The agent bootstrap flags: all or nothing, TLS only, a CA of this cluster with its key.
fn bootstrap(
    flags: &Flags,
    local_tls: Option<&(PathBuf, PathBuf, PathBuf)>,
    member: &kvstore::server::Config,
) -> Result<Option<crate::bootstrap::Settings>, ConfigError> {
    if flags.listen_bootstrap_urls.is_empty() {
        if flags.bootstrap_ca_key_file.is_some() || !flags.bootstrap_service_accounts.is_empty() {
            return Err(ConfigError::Combination(
                "--bootstrap-ca-key-file and --bootstrap-service-account need --listen-bootstrap-urls",
            ));
        }
        return Ok(None);
    }
    let Some((trusted_ca, _, _)) = local_tls else {
        return Err(ConfigError::Combination(
            "--listen-bootstrap-urls needs TLS (--cert-file, --key-file, --trusted-ca-file)",
        ));
    };
    let listen = flags
        .listen_bootstrap_urls
        .iter()
        .map(|u| socket_addr(u, "https").map_err(|r| invalid("--listen-bootstrap-urls", u, r)))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(ca_key) = flags.bootstrap_ca_key_file.clone() else {
        return Err(ConfigError::Combination(
            "--listen-bootstrap-urls needs --bootstrap-ca-key-file (the key of the CA that signs agent certificates)",
        ));
    };
    if flags.bootstrap_service_accounts.is_empty() {
        return Err(ConfigError::Combination(
            "--listen-bootstrap-urls needs --bootstrap-service-account (the agents' NAMESPACE/NAME)",
        ));
    }
    let service_accounts = flags
        .bootstrap_service_accounts
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|r| invalid("--bootstrap-service-account", a, r))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if flags.bootstrap_audience.is_empty() {
        return Err(invalid("--bootstrap-audience", "", "must not be empty"));
    }
    let validity = parse_duration(&flags.agent_cert_validity, 3600.0)
        .map_err(|r| invalid("--agent-cert-validity", &flags.agent_cert_validity, r))?;
    if validity < Duration::from_secs(3600) {
        return Err(invalid(
            "--agent-cert-validity",
            &flags.agent_cert_validity,
            "must be at least 1h",
        ));
    }
    let ca_cert = flags
        .bootstrap_ca_file
        .clone()
        .unwrap_or_else(|| trusted_ca.clone());
    let ca = certs::pki::CertificateAuthority::load(&ca_cert, &ca_key).map_err(|e| {
        invalid(
            "--bootstrap-ca-key-file",
            &ca_key.display().to_string(),
            e.to_string(),
        )
    })?;
    if let Some(tls) = &member.tls
        && tls.cluster() != ca.cluster()
    {
        return Err(invalid(
            "--bootstrap-ca-file",
            &ca_cert.display().to_string(),
            format!(
                "is cluster {}'s CA, this member's certificates are cluster {}'s",
                ca.cluster(),
                tls.cluster()
            ),
        ));
    }
    Ok(Some(crate::bootstrap::Settings {
        listen,
        ca_cert,
        ca_key,
        service_accounts,
        audience: flags.bootstrap_audience.clone(),
        validity,
    }))
}

/// `--max-concurrent-streams` and the keepalive flags.
fn limits(flags: &Flags) -> Result<ConnectionLimits, ConfigError> {
    if flags.max_concurrent_streams == 0 {
        return Err(invalid("--max-concurrent-streams", "0", "must be > 0"));
    }
    let duration = |flag, value: &str| {
        parse_duration(value, 1.0)
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be longer than 0".to_owned())
                } else {
                    Ok(d)
                }
            })
            .map_err(|r| invalid(flag, value, r))
    };
    Ok(ConnectionLimits {
        max_concurrent_streams: flags.max_concurrent_streams,
        keepalive_interval: duration("--grpc-keepalive-interval", &flags.grpc_keepalive_interval)?,
        keepalive_timeout: duration("--grpc-keepalive-timeout", &flags.grpc_keepalive_timeout)?,
    })
}

/// `--quota-backend-bytes`, `--max-leases`, `--max-watchers-per-stream` and the
/// per-identity bounds.
fn store_limits(flags: &Flags) -> Result<StoreLimits, ConfigError> {
    let default = StoreLimits::default();
    for (flag, value) in [
        ("--max-leases", flags.max_leases),
        ("--max-watchers-per-stream", flags.max_watchers_per_stream),
        ("--max-leases-per-identity", flags.max_leases_per_identity),
        (
            "--max-watch-streams-per-identity",
            flags.max_watch_streams_per_identity,
        ),
        (
            "--max-watchers-per-identity",
            flags.max_watchers_per_identity,
        ),
    ] {
        if value == 0 {
            return Err(invalid(flag, "0", "must be > 0"));
        }
    }
    Ok(StoreLimits {
        quota_bytes: match flags.quota_backend_bytes {
            0 => default.quota_bytes,
            n => n,
        },
        max_leases: flags.max_leases,
        max_watchers_per_stream: flags.max_watchers_per_stream,
        per_identity: kvstore::per_identity::IdentityLimits {
            leases: flags.max_leases_per_identity,
            watch_streams: flags.max_watch_streams_per_identity,
            watchers: flags.max_watchers_per_identity,
            value_bytes: flags.max_value_bytes_per_identity,
            writes_per_second: u32::try_from(flags.max_writes_per_second_per_identity)
                .unwrap_or(u32::MAX),
        },
    })
}

/// `host:port` of a `<scheme>://host:port` URL, or why not.
fn socket_addr(url: &str, scheme: &str) -> Result<String, String> {
    let Some(rest) = url.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else {
        return Err(if scheme == "https" {
            "expected https://host:port (plaintext http:// only with --insecure-plaintext)"
                .to_owned()
        } else {
            format!("expected {scheme}://host:port")
        });
    };
    let hostport = rest.trim_end_matches('/');
    let port_ok = hostport
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!("expected {scheme}://host:port"));
    }
    Ok(hostport.to_owned())
}

/// Loads the TLS files, or checks that none were given with --insecure-plaintext.
fn tls(flags: &Flags) -> Result<Option<MemberTls>, ConfigError> {
    let files = [
        ("--cert-file", &flags.cert_file),
        ("--key-file", &flags.key_file),
        ("--trusted-ca-file", &flags.trusted_ca_file),
        ("--peer-cert-file", &flags.peer_cert_file),
        ("--peer-key-file", &flags.peer_key_file),
        ("--peer-trusted-ca-file", &flags.peer_trusted_ca_file),
    ];
    let switches = [
        ("--client-cert-auth", flags.client_cert_auth),
        ("--peer-client-cert-auth", flags.peer_client_cert_auth),
    ];
    if flags.insecure_plaintext {
        let given: Vec<&str> = files
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(flag, _)| *flag)
            .chain(switches.iter().filter(|(_, on)| *on).map(|(flag, _)| *flag))
            .collect();
        if !given.is_empty() {
            return Err(invalid(
                "--insecure-plaintext",
                "true",
                format!("serves no TLS, but {} given", given.join(", ")),
            ));
        }
        return Ok(None);
    }
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(flag, _)| *flag)
        .chain(
            switches
                .iter()
                .filter(|(_, on)| !*on)
                .map(|(flag, _)| *flag),
        )
        .collect();
    if !missing.is_empty() {
        return Err(invalid(
            "TLS",
            "",
            format!(
                "needs {} (create certificates with `meshctl pki init`; plaintext only with --insecure-plaintext)",
                missing.join(", ")
            ),
        ));
    }
    let path = |f: &Option<PathBuf>| f.clone().expect("checked above");
    let client = TlsFiles {
        cert: path(&flags.cert_file),
        key: path(&flags.key_file),
        ca: path(&flags.trusted_ca_file),
    };
    let peer = TlsFiles {
        cert: path(&flags.peer_cert_file),
        key: path(&flags.peer_key_file),
        ca: path(&flags.peer_trusted_ca_file),
    };
    Ok(Some(MemberTls::load(client, peer)?))
}

/// `--cluster-name`, `--cluster-id` and the cluster record's fields.
fn cluster(flags: &Flags, tls: Option<&MemberTls>) -> Result<Option<ClusterConfig>, ConfigError> {
    let cidrs = |flag, texts: &[String]| -> Result<Vec<Cidr>, ConfigError> {
        texts
            .iter()
            .map(|t| t.parse::<Cidr>().map_err(|e| invalid(flag, t, e.reason)))
            .collect()
    };
    let pod_cidrs = cidrs("--pod-cidr", &flags.pod_cidr)?;
    let service_cidrs = cidrs("--service-cidr", &flags.service_cidr)?;
    for url in &flags.advertise_remote_urls {
        mesh_api::endpoint::host_port(url)
            .map_err(|e| invalid("--advertise-remote-urls", url, e.to_string()))?;
    }
    let (name, id) = match (&flags.cluster_name, flags.cluster_id) {
        (Some(name), Some(id)) => (name, id),
        (None, None) => {
            if !(pod_cidrs.is_empty()
                && service_cidrs.is_empty()
                && flags.advertise_remote_urls.is_empty())
            {
                return Err(ConfigError::Combination(
                    "--pod-cidr, --service-cidr and --advertise-remote-urls describe the cluster record: they need --cluster-name and --cluster-id",
                ));
            }
            return Ok(None);
        }
        _ => {
            return Err(ConfigError::Combination(
                "--cluster-name and --cluster-id go together",
            ));
        }
    };
    certs::identity::check_name("--cluster-name", name)
        .map_err(|e| invalid("--cluster-name", name, e.to_string()))?;
    if id == 0 {
        return Err(invalid("--cluster-id", "0", "must be 1..=65535"));
    }
    let mut ca_fingerprint = String::new();
    if let Some(tls) = tls {
        if tls.cluster() != *name {
            return Err(ConfigError::ClusterMismatch {
                flag: name.clone(),
                certs: tls.cluster(),
            });
        }
        let ca = &tls.client.files().ca;
        let pem = std::fs::read_to_string(ca).map_err(|e| {
            invalid(
                "--trusted-ca-file",
                &ca.display().to_string(),
                e.to_string(),
            )
        })?;
        ca_fingerprint = certs::pki::fingerprint_pem(&pem).map_err(|e| {
            invalid(
                "--trusted-ca-file",
                &ca.display().to_string(),
                e.to_string(),
            )
        })?;
    }
    Ok(Some(ClusterConfig {
        name: name.clone(),
        id,
        pod_cidrs,
        service_cidrs,
        remote_urls: flags.advertise_remote_urls.clone(),
        ca_fingerprint,
    }))
}

/// The publisher's source, when one is given (it needs `--cluster-name` and `--cluster-id`).
fn publisher(flags: &Flags) -> Result<Option<PublisherSettings>, ConfigError> {
    let source = match (&flags.manifests_dir, flags.kubernetes) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                return Err(invalid(
                    "--manifests-dir",
                    &dir.display().to_string(),
                    "not a directory",
                ));
            }
            SourceConfig::Manifests(dir.clone())
        }
        (None, true) => SourceConfig::Kubernetes,
        (None, false) => {
            if flags.cluster_name.is_some() || flags.cluster_id.is_some() {
                return Err(ConfigError::Combination(
                    "--cluster-name and --cluster-id are used with --manifests-dir or --kubernetes",
                ));
            }
            return Ok(None);
        }
    };
    if flags.cluster_name.is_none() || flags.cluster_id.is_none() {
        return Err(ConfigError::Combination(
            "publishing needs --cluster-name and --cluster-id",
        ));
    }
    Ok(Some(PublisherSettings {
        source,
        identity_gc_grace: Duration::from_secs(flags.identity_gc_grace),
    }))
}

/// A duration as `90s`, `30m`, `1.5h`, or a bare number of `unit` seconds.
fn parse_duration(value: &str, unit: f64) -> Result<Duration, String> {
    let (number, scale) = if let Some(h) = value.strip_suffix('h') {
        (h, 3600.0)
    } else if let Some(m) = value.strip_suffix('m') {
        (m, 60.0)
    } else if let Some(s) = value.strip_suffix('s') {
        (s, 1.0)
    } else {
        (value, unit)
    };
    let n: f64 = number
        .parse()
        .map_err(|_| "not a duration (e.g. 90s, 30m, 1h)".to_owned())?;
    if !n.is_finite() || n < 0.0 {
        return Err("not a duration (e.g. 90s, 30m, 1h)".to_owned());
    }
    Ok(Duration::from_secs_f64(n * scale))
}

fn retention(mode: CompactionArg, value: &str) -> Result<AutoCompaction, ConfigError> {
    Ok(match mode {
        CompactionArg::Off => AutoCompaction::Off,
        CompactionArg::Revision => {
            let n: i64 = value.parse().map_err(|_| {
                invalid("--auto-compaction-retention", value, "not a revision count")
            })?;
            if n <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(n)
            }
        }
        CompactionArg::Periodic => {
            let keep = parse_duration(value, 3600.0)
                .map_err(|r| invalid("--auto-compaction-retention", value, r))?;
            if keep.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(keep)
            }
        }
    })
}

#[cfg(test)]
mod tests;
