//! A member, assembled: storage, Raft, the peer port, the client port, its metrics, and the
//! leader's background work. [`Member::start`] serves until [`Member::stop`]; the process
//! around it (mesh-apiserver) owns the metrics registry, the controllers and the shutdown.
//!
//! Identity: a member's id is fixed the first time it starts and written to
//! `<data-dir>/member_id`. With `--initial-cluster-state new` it is derived from
//! `--initial-cluster`; with `existing` (a member added by MemberAdd) it is learned from the
//! running members by matching this member's peer URLs. A restarted member ignores the
//! initial-cluster flags, as etcd does.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::tls::ServerTls;
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::transport::server::TcpIncoming;

use crate::api;
use crate::auth::Authorizer;
use crate::log_store::LogStore;
use crate::membership::{InitialClusterError, parse_initial_cluster};
use crate::metrics::Metrics;
use crate::network::{Network, Peers};
use crate::node::{Node, NodeSettings};
use crate::peer::{PeerRequest, PeerResponse};
use crate::peer_service::PeerService;
use crate::raft_types::{Member as RaftMember, NodeId, Raft};
use crate::state_machine::StateMachine;
use crate::tls::HandshakeStats;

/// Whether this member founds a cluster or joins a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Found the cluster of `--initial-cluster`.
    New,
    /// Join a running cluster that already has this member (added by MemberAdd).
    Existing,
}

/// How the leader compacts the history on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never: only the Compact RPC compacts.
    Off,
    /// Keep this many revisions.
    Revision(i64),
    /// Keep the revisions of this long.
    Periodic(Duration),
}

/// Everything a member needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--advertise-client-urls`.
    pub advertise_client_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--snapshot-count`: committed entries between snapshots.
    pub snapshot_count: u64,
    /// `--heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// `--pre-vote`: stand for election only with a majority's pre-vote ([`crate::prevote`]).
    pub pre_vote: bool,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: AutoCompaction,
    /// How long a request may wait for the leader.
    pub request_timeout: Duration,
    /// Interval of watch progress notifications.
    pub progress_notify_interval: Duration,
    /// Mutual TLS on both ports; `None` serves plaintext with no authorization
    /// (`--insecure-plaintext`).
    pub tls: Option<MemberTls>,
    /// HTTP/2 limits and keepalive on both ports.
    pub limits: ConnectionLimits,
    /// The storage quota and the bounds on leases and watchers.
    pub store_limits: StoreLimits,
    /// `--restore-from`: found a new cluster from this backup (every founding member gets
    /// the same file; the data dir must be new).
    pub restore_from: Option<PathBuf>,
}

/// What one HTTP/2 connection may do, and how dead ones are found, on both ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `--max-concurrent-streams`: streams (calls, watches) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval`: idle time before the server pings a client.
    pub keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout`: how long a ping may go unanswered before the connection is
    /// closed.
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Resets a client may cause (its own, and errors it makes the server reset) before the
/// connection is closed: the HTTP/2 "rapid reset" flood.
const MAX_RESET_STREAMS: usize = 64;

/// A server with the connection limits set.
fn builder(limits: &ConnectionLimits) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(MAX_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_RESET_STREAMS))
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}

pub use crate::limits::StoreLimits;
pub use crate::tls::MemberTls;

/// The sockets a member serves; bound by the caller so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    /// The etcd API.
    pub client: Vec<TcpListener>,
    /// Raft peers. Never expose to clients.
    pub peer: Vec<TcpListener>,
}

/// Why a member could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log database could not be opened.
    #[error("opening the log at {path}: {source}")]
    Log {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--initial-cluster` is malformed.
    #[error(transparent)]
    InitialCluster(#[from] InitialClusterError),
    /// `--initial-cluster` does not list this member as `--name` with its peer URLs.
    #[error(
        "--initial-cluster has no member {name:?} with peer URLs {urls:?} (--name and --initial-advertise-peer-urls must match an entry)"
    )]
    NotInInitialCluster {
        /// `--name`.
        name: String,
        /// `--initial-advertise-peer-urls`.
        urls: Vec<String>,
    },
    /// No running member knows a member with this member's peer URLs.
    #[error(
        "joining: no member of the running cluster has peer URLs {urls:?}; add it with MemberAdd first (etcdctl member add)"
    )]
    NotAdded {
        /// `--initial-advertise-peer-urls`.
        urls: Vec<String>,
    },
    /// `--restore-from` could not be honored; nothing was changed.
    #[error("--restore-from {path}: {reason}")]
    Restore {
        /// The backup.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The Raft configuration is invalid.
    #[error("raft configuration: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    /// Raft failed to start or stopped with an error.
    #[error("raft: {0}")]
    Raft(String),
}

const MEMBER_ID_FILE: &str = "member_id";

/// A started member: serving its ports and running the leader's background work until
/// [`Member::stop`].
#[derive(Debug)]
pub struct Member {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    /// Set to stop every task below.
    stop_tx: watch::Sender<bool>,
    /// The servers and background loops, all ending when `stop_tx` is set.
    tasks: tokio::task::JoinSet<()>,
    /// Whether this member leads, kept current by a task in `tasks`.
    leading: watch::Receiver<bool>,
}

impl Member {
    /// Opens the data dir, starts Raft (founding or joining the cluster) and serves the
    /// listeners.
    pub async fn start(config: Config, listeners: Listeners) -> Result<Member, ServerError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let log_dir = dir.join("raft");
        let snap_dir = dir.join("snap");
        if let Some(file) = &config.restore_from {
            restore(&config, file, &log_dir, &snap_dir).map_err(|reason| ServerError::Restore {
                path: file.clone(),
                reason,
            })?;
        }
        let log = LogStore::open(&log_dir).map_err(|source| ServerError::Log {
            path: log_dir.clone(),
            source,
        })?;
        let sm = StateMachine::open(&snap_dir).map_err(|source| ServerError::DataDir {
            path: snap_dir.clone(),
            source,
        })?;
        let shared = sm.shared();
        let peers = Peers::new(config.tls.as_ref().map(|t| t.peer_client.clone()));
        let auth = match &config.tls {
            Some(tls) => Authorizer::new(&tls.cluster()),
            None => {
                tracing::warn!("serving plaintext without authorization (--insecure-plaintext)");
                Authorizer::open()
            }
        };

        let (id, bootstrap) = identity(&config, &peers).await?;
        tracing::info!(
            name = %config.name,
            id = format!("{id:x}"),
            bootstrap = bootstrap.is_some(),
            "starting member"
        );

        let (election_timeout_min, election_timeout_max) =
            election_timeouts(config.heartbeat_interval, config.election_timeout);
        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: millis(config.heartbeat_interval),
            election_timeout_min,
            election_timeout_max,
            install_snapshot_timeout: 5_000,
            // With pre-vote, elections are started by crate::prevote::drive.
            enable_elect: !config.pre_vote,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_count.min(1000),
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            Network::new(peers.clone()),
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

        if let Some(members) = bootstrap {
            // Every founding member initializes with the same membership; whichever log wins
            // the first election, they agree. A member whose log already has entries refuses,
            // which is fine.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "not initializing: cluster already initialized");
            }
            write_member_id(dir, id).map_err(|source| ServerError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }

        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let run =
            crate::session::reserve(dir, now_secs).map_err(|source| ServerError::DataDir {
                path: dir.join(crate::session::FILE),
                source,
            })?;
        let node = Arc::new(Node::new(
            id,
            raft.clone(),
            shared,
            log,
            peers,
            crate::session::WriteSession::new(id, run),
            NodeSettings {
                name: config.name.clone(),
                client_urls: config.advertise_client_urls.clone(),
                cluster_token: config.initial_cluster_token.clone(),
                request_timeout: config.request_timeout,
                min_lease_ttl: (config.election_timeout.as_millis() * 3).div_ceil(2000) as i64,
                store_limits: config.store_limits,
                auth,
            },
        ));
        if config.restore_from.is_some() {
            tokio::spawn(settle_restored(node.clone()));
        }
        let metrics = Arc::new(Metrics::new(snap_dir));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();

        let tls = config.tls.clone();
        for l in listeners.peer {
            let router = builder(&config.limits).add_service(PeerService::new(node.clone()));
            let tls = tls
                .as_ref()
                .map(|t| (t.peer_server.clone(), metrics.peer_handshakes.clone()));
            tasks.spawn(serve(router, l, tls, "peer", stopped(stop_rx.clone())));
        }
        for l in listeners.client {
            let (n, m) = (node.clone(), metrics.clone());
            let router = builder(&config.limits)
                .add_service(api::kv::Kv::new(n.clone(), m.clone()))
                .add_service(api::watch::Watch::new(
                    n.clone(),
                    m.clone(),
                    config.progress_notify_interval,
                ))
                .add_service(api::lease::Lease::new(n.clone(), m.clone()))
                .add_service(api::cluster::Cluster::new(n.clone(), m.clone()))
                .add_service(api::maintenance::Maintenance::new(n, m));
            let tls = tls
                .as_ref()
                .map(|t| (t.client.clone(), metrics.client_handshakes.clone()));
            let (n, stop) = (node.clone(), stop_rx.clone());
            tasks.spawn(async move {
                // etcd serves clients only once the member is ready; a member that joined by
                // MemberAdd has no membership until the leader's log reaches it, and would
                // answer MemberList with nobody. Until it knows itself, connections wait in
                // the listen backlog, as they do with etcd.
                tokio::select! {
                    () = knows_itself(&n) => {}
                    () = stopped(stop.clone()) => return,
                }
                serve(router, l, tls, "client", stopped(stop)).await
            });
        }
        if config.pre_vote {
            tasks.spawn(crate::prevote::drive(
                node.clone(),
                stopped(stop_rx.clone()),
            ));
        }
        if let Some(tls) = &tls {
            tasks.spawn(crate::tls::reload_periodically(
                tls.reloadable(),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(metrics.clone().track_leader(node.clone(), stop_rx.clone()));
        let (leading_tx, leading) = watch::channel(false);
        tasks.spawn(track_leading(node.clone(), leading_tx, stop_rx.clone()));
        {
            let n = node.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move { n.expire_leases(stop).await });
        }
        {
            let n = node.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move { n.publish_until_done(stop).await });
        }
        {
            let n = node.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move { n.enable_write_sessions(stop).await });
        }
        match config.auto_compaction {
            AutoCompaction::Off => {}
            AutoCompaction::Revision(keep) => {
                let n = node.clone();
                let stop = stop_rx.clone();
                tasks.spawn(async move {
                    n.compact_by_revision(keep, Duration::from_secs(60), stop)
                        .await
                });
            }
            AutoCompaction::Periodic(keep) => {
                let n = node.clone();
                let stop = stop_rx.clone();
                tasks.spawn(compact_periodically(n, keep, stop));
            }
        }
        Ok(Member {
            node,
            metrics,
            stop_tx,
            tasks,
            leading,
        })
    }

    /// The running member's operations and state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Registers the store's metrics in the process's registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry, self.node.clone());
    }

    /// `true` while this member is the Raft leader.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Completes if Raft stops with an error (storage broken, a bug): the member cannot go
    /// on and must be stopped. Never completes otherwise.
    pub async fn failed(&self) -> ServerError {
        // The server metrics change only with the role, leader, vote or membership, and their
        // sender goes when Raft's task ends; `metrics()` changes several times per write and
        // would wake this task (the main thread's) for each.
        let mut server = self.node.raft.server_metrics();
        while server.changed().await.is_ok() {}
        match &self.node.raft.metrics().borrow().running_state {
            Err(e) => ServerError::Raft(e.to_string()),
            Ok(()) => ServerError::Raft("raft stopped".to_owned()),
        }
    }

    /// Stops serving: ends the servers and loops (open watch and keep-alive streams do not
    /// end by themselves, so in-flight calls get a moment, then are cut), then Raft.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        tracing::info!("stopped");
    }
}

/// Keeps `leading` equal to "this member is the Raft leader" until shutdown.
async fn track_leading(
    node: Arc<Node>,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut m = node.raft.server_metrics();
    loop {
        let now = m.borrow_and_update().state == openraft::ServerState::Leader;
        leading.send_if_modified(|was| std::mem::replace(was, now) != now);
        tokio::select! {
            r = m.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    leading.send_replace(false);
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Returns once `node`'s membership lists `node` itself: at once for a founding or restarted
/// member, after the first replication for one added by MemberAdd.
async fn knows_itself(node: &Node) {
    let mut metrics = node.raft.server_metrics();
    loop {
        if metrics
            .borrow_and_update()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == node.id)
        {
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// openraft's election timeouts for etcd's `--election-timeout` `e`: a follower that has not
/// heard from its leader for a random time in [`e`, 2`e`) stands for election, as in etcd.
///
/// openraft waits its leader lease (`election_timeout_max`) and then the member's random
/// timeout in [min, max) (a follower that heard from a leader within the lease also refuses
/// to vote, like etcd's CheckQuorum). So max = `e` and min as small as openraft allows: one
/// heartbeat, or a tenth of `e`, whichever is longer.
fn election_timeouts(heartbeat: Duration, e: Duration) -> (u64, u64) {
    let max = millis(e);
    let min = (millis(heartbeat) + 1).max(max / 10);
    (min, max)
}

/// Seeds a new member's state machine with the backup at `file`: only into a data dir that
/// holds no member yet, founding a new cluster.
fn restore(config: &Config, file: &Path, log_dir: &Path, snap_dir: &Path) -> Result<(), String> {
    if config.initial_cluster_state != ClusterState::New {
        // A member joining a restored cluster gets the state from it (the same flags on
        // every member of a StatefulSet must not stop it joining).
        tracing::warn!(
            file = %file.display(),
            "--restore-from ignored: a joining member (--initial-cluster-state existing) takes \
             its state from the cluster"
        );
        return Ok(());
    }
    let dir = &config.data_dir;
    let has_member = dir.join(MEMBER_ID_FILE).exists()
        || StateMachine::snapshot_size(snap_dir) > 0
        || std::fs::read_dir(log_dir).is_ok_and(|mut d| d.next().is_some());
    if has_member && snap_dir.join(crate::backup::SEED_FILE).exists() {
        // A restart with the flag still set: this member was restored already.
        tracing::info!(file = %file.display(), "restored before; --restore-from has no effect");
        return Ok(());
    }
    if has_member {
        return Err(format!(
            "data dir {} already holds a member; restore into a new, empty data dir",
            dir.display()
        ));
    }
    let (revision, keys) = crate::backup::seed(file, snap_dir).map_err(|e| e.to_string())?;
    tracing::info!(file = %file.display(), revision, keys, "restored a backup");
    Ok(())
}

/// A restored member's seed is not in the log: once the first entry applies, snapshot and
/// drop the log, so a member added later gets the state by snapshot, seed included.
async fn settle_restored(node: Arc<Node>) {
    let mut m = node.raft.metrics();
    while m.borrow().last_applied.is_none() {
        if m.changed().await.is_err() {
            return;
        }
    }
    if m.borrow().snapshot.is_some() {
        return;
    }
    if let Err(e) = node.compact_disk().await {
        tracing::warn!(error = %e, "could not snapshot the restored state");
        return;
    }
    let Some(upto) = node.raft.metrics().borrow().snapshot.map(|l| l.index) else {
        return;
    };
    match node.raft.trigger().purge_log(upto).await {
        Ok(()) => tracing::info!(upto, "restored state snapshotted; log purged"),
        Err(e) => tracing::warn!(error = %e, "could not purge the log after restoring"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn read_member_id(dir: &Path) -> std::io::Result<Option<NodeId>> {
    match std::fs::read_to_string(dir.join(MEMBER_ID_FILE)) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_member_id(dir: &Path, id: NodeId) -> std::io::Result<()> {
    crate::wal::replace_file(dir, MEMBER_ID_FILE, format!("{id:x}\n").as_bytes())
}

/// This member's id, and the founding membership when it must initialize the cluster.
async fn identity(
    config: &Config,
    peers: &Peers,
) -> Result<(NodeId, Option<BTreeMap<NodeId, RaftMember>>), ServerError> {
    let dir = &config.data_dir;
    let io = |source| ServerError::DataDir {
        path: dir.clone(),
        source,
    };
    if let Some(id) = read_member_id(dir).map_err(io)? {
        return Ok((id, None));
    }
    let mut mine = config.initial_advertise_peer_urls.clone();
    mine.sort();
    let members = parse_initial_cluster(&config.initial_cluster, &config.initial_cluster_token)?;
    match config.initial_cluster_state {
        ClusterState::New => {
            let id = members
                .iter()
                .find(|(_, m)| {
                    let mut urls = m.peer_urls.clone();
                    urls.sort();
                    m.name == config.name && urls == mine
                })
                .map(|(id, _)| *id)
                .ok_or_else(|| ServerError::NotInInitialCluster {
                    name: config.name.clone(),
                    urls: mine.clone(),
                })?;
            Ok((id, Some(members)))
        }
        ClusterState::Existing => {
            let id = discover_id(&members, &mine, peers).await?;
            write_member_id(dir, id).map_err(io)?;
            Ok((id, None))
        }
    }
}

/// Asks the other members for the membership and finds the entry with these peer URLs.
async fn discover_id(
    members: &BTreeMap<NodeId, RaftMember>,
    mine: &[String],
    peers: &Peers,
) -> Result<NodeId, ServerError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for m in members.values().filter(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls != mine
        }) {
            let answer = peers
                .call(&m.peer_urls, &PeerRequest::Members, Duration::from_secs(2))
                .await;
            if let Ok(Ok(PeerResponse::Members(known))) = answer {
                let found = known.into_iter().find(|(_, k)| {
                    let mut urls = k.peer_urls.clone();
                    urls.sort();
                    urls == mine
                });
                if let Some((id, _)) = found {
                    return Ok(id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(ServerError::NotAdded {
        urls: mine.to_vec(),
    })
}

/// Periodic auto-compaction: samples the revision and, while leading, compacts to the
/// revision that was current `keep` ago.
async fn compact_periodically(node: Arc<Node>, keep: Duration, mut stop: watch::Receiver<bool>) {
    let step = (keep / 10).max(Duration::from_secs(1));
    let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
    let mut tick = tokio::time::interval(step);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (rev, compacted) = {
            let d = node.shared.read();
            (d.mvcc.revision(), d.mvcc.compacted())
        };
        let now = Instant::now();
        samples.push_back((now, rev));
        let mut target = None;
        while let Some(&(at, r)) = samples.front() {
            if now.duration_since(at) >= keep {
                target = Some(r);
                samples.pop_front();
            } else {
                break;
            }
        }
        let Some(target) = target else { continue };
        if target > compacted.max(1) && node.leader() == Some(node.id) {
            tracing::info!(revision = target, "periodic auto-compaction");
            if let Err(e) = node
                .propose(crate::raft_types::Command::Compact { revision: target })
                .await
            {
                tracing::warn!(revision = target, error = %e, "auto-compaction failed");
            }
        }
    }
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until `stop`.
async fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<(Arc<ServerTls>, Arc<HandshakeStats>)>,
    port: &'static str,
    stop: impl Future<Output = ()>,
) {
    let served = match tls {
        Some((tls, stats)) => {
            router
                .serve_with_incoming_shutdown(
                    crate::tls::incoming(listener, tls, port, stats),
                    stop,
                )
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), stop)
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(port, error = %e, "server failed");
    }
}

/// Accepted connections with Nagle's algorithm off. (`Server::tcp_nodelay` applies only to
/// listeners tonic binds itself; without this every small reply waits for the client's delayed
/// ACK, about 40 ms.)
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(crate::tls::TCP_KEEPALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `failed` completes once Raft stops (its server metrics' sender goes with Raft's task),
    /// so the process stops rather than serving with a dead store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_completes_once_raft_stops() {
        let dir = tempfile::tempdir().unwrap();
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_url = format!("http://{}", client.local_addr().unwrap());
        let peer_url = format!("http://{}", peer.local_addr().unwrap());
        let config = Config {
            name: "m1".to_owned(),
            data_dir: dir.path().join("m1"),
            advertise_client_urls: vec![client_url],
            initial_advertise_peer_urls: vec![peer_url.clone()],
            initial_cluster: format!("m1={peer_url}"),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "failed-test".to_owned(),
            snapshot_count: 100_000,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_secs(1),
            pre_vote: true,
            auto_compaction: AutoCompaction::Off,
            request_timeout: Duration::from_secs(5),
            progress_notify_interval: Duration::from_secs(600),
            tls: None,
            limits: ConnectionLimits::default(),
            store_limits: StoreLimits::default(),
            restore_from: None,
        };
        let listeners = Listeners {
            client: vec![client],
            peer: vec![peer],
        };
        let member = Member::start(config, listeners).await.unwrap();
        let failed = member.failed();
        tokio::pin!(failed);
        assert!(
            futures::poll!(&mut failed).is_pending(),
            "failed() before anything failed"
        );
        member.node().raft.shutdown().await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(30), failed)
            .await
            .expect("failed() never completed after Raft stopped");
        assert!(matches!(error, ServerError::Raft(_)), "{error:?}");
    }
}
