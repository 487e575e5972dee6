//! The store's Prometheus metrics, registered in the process's one registry
//! ([`Metrics::register`]); the process serves them (mesh-apiserver's `/metrics`).
//!
//! Counters that the request paths bump (RPC latencies, watch events, TLS handshakes) are
//! prometheus-client metrics the paths hold. Values that already live in the member's state
//! (term, revision, keys, log counters, bytes on disk) are read when scraped, by
//! [`StoreCollector`], so nothing is kept twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use openraft::ServerState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::node::Node;
use crate::state_machine::StateMachine;
use crate::tls::HandshakeStats;

/// Upper bounds of the RPC latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The labels of an RPC latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// The labels of a TLS handshake outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    port: &'static str,
    result: &'static str,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The member's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Where the snapshot file lives, for the database size.
    snap_dir: PathBuf,
    rpcs: Family<MethodLabels, Histogram, fn() -> Histogram>,
    watchers: Gauge,
    events: Counter,
    leader_changes: Counter,
    handshakes: Family<HandshakeLabels, Counter>,
    /// TLS handshakes on the client port.
    pub client_handshakes: Arc<HandshakeStats>,
    /// TLS handshakes on the peer port.
    pub peer_handshakes: Arc<HandshakeStats>,
}

/// Records one RPC's latency when dropped.
#[derive(Debug)]
pub struct RpcTimer<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    start: Instant,
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .rpcs
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Metrics of a member whose snapshot file is in `snap_dir`.
    pub fn new(snap_dir: PathBuf) -> Self {
        let handshakes: Family<HandshakeLabels, Counter> = Family::default();
        let stats = |port| {
            let outcome = |result| {
                handshakes
                    .get_or_create(&HandshakeLabels { port, result })
                    .clone()
            };
            Arc::new(HandshakeStats {
                accepted: outcome("accepted"),
                refused: outcome("refused"),
            })
        };
        Self {
            client_handshakes: stats("client"),
            peer_handshakes: stats("peer"),
            snap_dir,
            rpcs: Family::new_with_constructor(rpc_histogram),
            watchers: Gauge::default(),
            events: Counter::default(),
            leader_changes: Counter::default(),
            handshakes,
        }
    }

    /// Registers every metric of the member running `node` in `registry` (whose prefix the
    /// process chooses: `raftmesh`).
    pub fn register(&self, registry: &mut Registry, node: Arc<Node>) {
        registry.register(
            "grpc_request_duration_seconds",
            "Latency of etcd API calls",
            self.rpcs.clone(),
        );
        registry.register("watchers", "Open watchers", self.watchers.clone());
        registry.register(
            "watch_events_sent",
            "Events sent to watchers",
            self.events.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Leader changes seen by this member",
            self.leader_changes.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes by port and outcome",
            self.handshakes.clone(),
        );
        registry.register_collector(Box::new(StoreCollector {
            node,
            snap_dir: self.snap_dir.clone(),
        }));
    }

    /// Times one call of `method`.
    pub fn rpc(&self, method: &'static str) -> RpcTimer<'_> {
        RpcTimer {
            metrics: self,
            method,
            start: Instant::now(),
        }
    }

    /// `n` watchers were created.
    pub fn watchers_added(&self, n: usize) {
        self.watchers.inc_by(n as i64);
    }

    /// `n` watchers ended.
    pub fn watchers_removed(&self, n: usize) {
        self.watchers.dec_by(n as i64);
    }

    /// `n` events were sent to watchers.
    pub fn events_sent(&self, n: usize) {
        self.events.inc_by(n as u64);
    }

    /// Bytes on disk: the log database and the snapshot file.
    pub fn db_size(&self, node: &Node) -> u64 {
        db_size(node, &self.snap_dir)
    }

    /// Counts leader changes as this member sees them, until shutdown.
    pub async fn track_leader(
        self: Arc<Self>,
        node: Arc<Node>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut m = node.raft.server_metrics();
        let mut leader = m.borrow().current_leader;
        loop {
            tokio::select! {
                r = m.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let now = m.borrow().current_leader;
            if now != leader {
                if now.is_some() {
                    self.leader_changes.inc();
                    tracing::info!(leader = ?now.map(|l| format!("{l:x}")), "leader changed");
                }
                leader = now;
            }
        }
    }
}

fn db_size(node: &Node, snap_dir: &std::path::Path) -> u64 {
    node.log.size_on_disk() + StateMachine::snapshot_size(snap_dir)
}

/// Reads, at each scrape, the values the member's state already holds.
#[derive(Debug)]
struct StoreCollector {
    node: Arc<Node>,
    snap_dir: PathBuf,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        let m = node.raft.metrics().borrow().clone();
        let (revision, compacted, keys, leases, bytes) = {
            let d = node.shared.read();
            (
                d.mvcc.revision(),
                d.mvcc.compacted(),
                d.mvcc.key_count(),
                d.mvcc.leases().count(),
                d.mvcc.bytes(),
            )
        };
        let stats = node.log.stats();
        let gauges: [(&str, &str, i64); 11] = [
            ("raft_term", "Current Raft term.", m.current_term as i64),
            (
                "raft_is_leader",
                "1 if this member leads.",
                i64::from(m.state == ServerState::Leader),
            ),
            (
                "raft_has_leader",
                "1 if this member knows a leader.",
                i64::from(node.leader().is_some()),
            ),
            (
                "raft_applied_index",
                "Last log index applied.",
                m.last_applied.map_or(0, |l| l.index) as i64,
            ),
            (
                "raft_last_log_index",
                "Last log index appended.",
                m.last_log_index.unwrap_or(0) as i64,
            ),
            ("mvcc_revision", "Current store revision.", revision),
            ("mvcc_compacted_revision", "Compacted revision.", compacted),
            ("mvcc_keys", "Live keys.", keys as i64),
            (
                "mvcc_bytes",
                "Bytes of keys and values held in memory with their history (what --quota-backend-bytes bounds).",
                i64::try_from(bytes).unwrap_or(i64::MAX),
            ),
            ("leases", "Live leases.", leases as i64),
            (
                "db_size_bytes",
                "Bytes on disk (log and snapshot).",
                db_size(node, &self.snap_dir) as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 4] = [
            (
                "log_appends",
                "Log appends acknowledged.",
                stats.appends.load(Relaxed),
            ),
            (
                "log_flushes",
                "Disk syncs of the log.",
                stats.flushes.load(Relaxed),
            ),
            (
                "permission_denied",
                "Requests refused by authorization.",
                node.auth().denied(),
            ),
            (
                "raft_entries_applied",
                "Entries applied since start.",
                node.shared.applied_entries(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
