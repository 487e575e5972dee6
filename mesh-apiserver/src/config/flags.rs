//! The command line: etcd's flag names plus raftmesh's own, as clap parses them. Nothing here
//! is checked beyond its type; [`super::Config::validate`] does that.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

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

    /// Stand for election only once a majority of the members have not heard from a leader
    /// either (Raft's pre-vote, as etcd's --pre-vote): a member that rejoins after being cut
    /// off does not depose a healthy leader.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pre_vote: bool,

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

    /// The IPv4 range ClusterSetIPs of Multi-Cluster Services imports are allocated from.
    /// Every cluster of the clusterset must give the same range: an import's address is
    /// computed from its namespace/name, the same in every cluster. Must not overlap the
    /// pod or service CIDRs. Unset: imports get no ClusterSetIP (headless ones still work).
    #[arg(long, help_heading = "Publishing", value_name = "CIDR")]
    pub clusterset_service_cidr: Option<String>,

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
