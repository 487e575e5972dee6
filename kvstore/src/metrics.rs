//! Prometheus metrics and the `/metrics` + `/healthz` endpoint of `--listen-metrics-urls`.
//!
//! A handful of counters and histograms rendered in the text exposition format; the HTTP
//! side is a minimal HTTP/1.1 responder (one request per connection), enough for scrapers
//! and probes, with no framework behind it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::Node;
use crate::state_machine::StateMachine;
use crate::tls::HandshakeStats;

/// Upper bounds of the RPC latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Metrics of components outside the store (e.g. the publisher), appended to `/metrics`: a
/// function returning text in the exposition format.
#[derive(Clone)]
pub struct ExtraMetrics(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraMetrics")
    }
}

/// The member's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Appended to the store's own metrics.
    pub extra: Option<ExtraMetrics>,
    /// Where the snapshot file lives, for the database size.
    snap_dir: PathBuf,
    rpcs: Mutex<BTreeMap<&'static str, Histogram>>,
    watchers: AtomicI64,
    events: AtomicU64,
    leader_changes: AtomicU64,
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
        let secs = self.start.elapsed().as_secs_f64();
        let mut rpcs = self.metrics.rpcs.lock().expect("metrics lock poisoned");
        let h = rpcs.entry(self.method).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
    }
}

impl Metrics {
    /// Metrics of a member whose snapshot file is in `snap_dir`.
    pub fn new(snap_dir: PathBuf) -> Self {
        Self {
            extra: None,
            snap_dir,
            rpcs: Mutex::default(),
            watchers: AtomicI64::new(0),
            events: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            client_handshakes: Arc::default(),
            peer_handshakes: Arc::default(),
        }
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
        self.watchers.fetch_add(n as i64, Relaxed);
    }

    /// `n` watchers ended.
    pub fn watchers_removed(&self, n: usize) {
        self.watchers.fetch_sub(n as i64, Relaxed);
    }

    /// `n` events were sent to watchers.
    pub fn events_sent(&self, n: usize) {
        self.events.fetch_add(n as u64, Relaxed);
    }

    /// Bytes on disk: the log database and the snapshot file.
    pub fn db_size(&self, node: &Node) -> u64 {
        node.log.size_on_disk() + StateMachine::snapshot_size(&self.snap_dir)
    }

    /// Counts leader changes as this member sees them, until shutdown.
    pub async fn track_leader(
        self: Arc<Self>,
        node: Arc<Node>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut m = node.raft.metrics();
        let mut leader = m.borrow().current_leader;
        loop {
            tokio::select! {
                r = m.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            let now = m.borrow().current_leader;
            if now != leader {
                if now.is_some() {
                    self.leader_changes.fetch_add(1, Relaxed);
                    tracing::info!(leader = ?now.map(|l| format!("{l:x}")), "leader changed");
                }
                leader = now;
            }
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self, node: &Node) -> String {
        let m = node.raft.metrics().borrow().clone();
        let (revision, compacted, keys, leases) = {
            let d = node.shared.read();
            (
                d.mvcc.revision(),
                d.mvcc.compacted(),
                d.mvcc.key_count(),
                d.mvcc.leases().count(),
            )
        };
        let stats = node.log.stats();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "raftmesh_raft_term",
            "Current Raft term.",
            m.current_term as f64,
        );
        gauge(
            "raftmesh_raft_is_leader",
            "1 if this member leads.",
            f64::from(u8::from(m.state == ServerState::Leader)),
        );
        gauge(
            "raftmesh_raft_has_leader",
            "1 if this member knows a leader.",
            f64::from(u8::from(m.current_leader.is_some())),
        );
        gauge(
            "raftmesh_raft_applied_index",
            "Last log index applied.",
            m.last_applied.map_or(0, |l| l.index) as f64,
        );
        gauge(
            "raftmesh_raft_last_log_index",
            "Last log index appended.",
            m.last_log_index.unwrap_or(0) as f64,
        );
        gauge(
            "raftmesh_mvcc_revision",
            "Current store revision.",
            revision as f64,
        );
        gauge(
            "raftmesh_mvcc_compacted_revision",
            "Compacted revision.",
            compacted as f64,
        );
        gauge("raftmesh_mvcc_keys", "Live keys.", keys as f64);
        gauge("raftmesh_leases", "Live leases.", leases as f64);
        gauge(
            "raftmesh_watchers",
            "Open watchers.",
            self.watchers.load(Relaxed) as f64,
        );
        gauge(
            "raftmesh_db_size_bytes",
            "Bytes on disk (log and snapshot).",
            self.db_size(node) as f64,
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "raftmesh_raft_leader_changes_total",
            "Leader changes seen by this member.",
            self.leader_changes.load(Relaxed),
        );
        counter(
            "raftmesh_watch_events_sent_total",
            "Events sent to watchers.",
            self.events.load(Relaxed),
        );
        counter(
            "raftmesh_log_appends_total",
            "Log appends acknowledged.",
            stats.appends.load(Relaxed),
        );
        counter(
            "raftmesh_log_flushes_total",
            "Disk syncs of the log.",
            stats.flushes.load(Relaxed),
        );
        counter(
            "raftmesh_permission_denied_total",
            "Requests refused by authorization.",
            node.auth().denied(),
        );
        counter(
            "raftmesh_raft_entries_applied_total",
            "Entries applied since start.",
            node.shared.applied_entries(),
        );

        let name = "raftmesh_tls_handshakes_total";
        let _ = writeln!(
            out,
            "# HELP {name} TLS handshakes by port and outcome.\n# TYPE {name} counter"
        );
        for (port, stats) in [
            ("client", &self.client_handshakes),
            ("peer", &self.peer_handshakes),
        ] {
            for (result, n) in [("accepted", &stats.accepted), ("refused", &stats.refused)] {
                let _ = writeln!(
                    out,
                    "{name}{{port=\"{port}\",result=\"{result}\"}} {}",
                    n.load(Relaxed)
                );
            }
        }

        let rpcs = self.rpcs.lock().expect("metrics lock poisoned").clone();
        let name = "raftmesh_grpc_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of etcd API calls.\n# TYPE {name} histogram"
        );
        for (method, h) in rpcs {
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{method=\"{method}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{method=\"{method}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{method=\"{method}\"}} {}", h.count);
        }
        if let Some(extra) = &self.extra {
            out.push_str(&(extra.0)());
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until shutdown. `/healthz` is 200 while
/// the member knows a leader, 503 otherwise.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    node: Arc<Node>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded in size and time).
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (code, body, ctype) = match path {
                "/metrics" => ("200 OK", metrics.render(&node), "text/plain; version=0.0.4"),
                "/healthz" | "/health" => {
                    if node.leader().is_some() {
                        (
                            "200 OK",
                            "{\"health\":\"true\"}\n".to_owned(),
                            "application/json",
                        )
                    } else {
                        (
                            "503 Service Unavailable",
                            "{\"health\":\"false\",\"reason\":\"no leader\"}\n".to_owned(),
                            "application/json",
                        )
                    }
                }
                _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
