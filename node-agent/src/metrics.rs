//! The agent's Prometheus metrics (one registry) and what `/healthz` says; the admin-http
//! crate serves both.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::datapath::Counters;
use crate::maps::Tables;

/// A `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// A `result` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// What happened.
    pub result: String,
}

/// A `cluster` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// The cluster.
    pub cluster: String,
}

/// `cluster`, `what` labels (a remote over a limit).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverLabel {
    /// The remote.
    pub cluster: String,
    /// `nodes` or `pods`.
    pub what: String,
}

/// `cluster`, `direction` labels (WireGuard bytes).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transfer {
    /// The peer's cluster.
    pub cluster: String,
    /// `rx` or `tx`.
    pub direction: String,
}

/// `cluster`, `node` labels (one WireGuard peer).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's cluster.
    pub cluster: String,
    /// The peer's node.
    pub node: String,
}

/// A `mode` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// `tcx` or `tc`.
    pub mode: String,
}

/// `backend`, `fallback` labels (the WireGuard backend in use).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// `kernel` or `userspace`.
    pub backend: String,
    /// `true` when `auto` fell back to userspace because the kernel refused.
    pub fallback: String,
}

/// What `/healthz` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The maps have been programmed from the store (until then: 503).
    pub programmed: bool,
    /// What is wrong while the agent runs on (200 with `degraded` and these in the body):
    /// by component, a sentence each.
    pub degraded: std::collections::BTreeMap<&'static str, String>,
}

impl Health {
    /// What `/healthz` answers: 503 until programmed, then 200 (`ok`, or `degraded` and why).
    pub fn response(&self) -> admin_http::Health {
        let (healthy, body) = if !self.programmed {
            (false, "not yet programmed from the store\n".to_owned())
        } else if self.degraded.is_empty() {
            (true, "ok\n".to_owned())
        } else {
            let mut body = String::from("degraded\n");
            for (component, why) in &self.degraded {
                body.push_str(&format!("{component}: {why}\n"));
            }
            (true, body)
        };
        admin_http::Health {
            healthy,
            body,
            content_type: "text/plain; charset=utf-8",
        }
    }

    /// `/healthz` answered from the latest of `health`.
    pub fn served(health: tokio::sync::watch::Receiver<Health>) -> admin_http::HealthFn {
        std::sync::Arc::new(move || health.borrow().response())
    }
}

/// Every metric.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Frontends programmed.
    pub frontends: Gauge,
    /// Backend slots programmed.
    pub backends: Gauge,
    /// ipcache entries.
    pub ipcache: Gauge,
    /// Identities enforced.
    pub enforced: Gauge,
    /// Policy rules.
    pub rules: Gauge,
    /// Packets dropped by policy, by reason ([`crate::maps::POL_DROPS`]).
    pub drops: Family<Reason, Counter>,
    /// Socket load-balancing decisions (`redirected`, `no_backend`, …).
    pub lb: Family<Outcome, Counter>,
    /// Map writes by reconciles.
    pub writes: Counter,
    /// Reconciles that failed to write the maps (retried at the next tick).
    pub map_errors: Counter,
    /// Seconds from receiving a change to its maps being written.
    pub reconcile_seconds: Histogram,
    /// Records skipped (`ipv6`, `undecodable`).
    pub skipped: Family<Reason, Gauge>,
    /// Full lists of the store (start, reconnect after compaction).
    pub lists: Counter,
    /// The store revision applied.
    pub revision: Gauge,
    /// 1 while the remote is stale (its backends are a last resort).
    pub remote_stale: Family<ClusterLabel, Gauge>,
    /// 1 while a remote holds more nodes or pods than --remote-node-limit/--remote-pod-limit.
    pub remote_over_limit: Family<OverLabel, Gauge>,
    /// Remote node addresses refused (special-purpose, or inside another cluster's ranges).
    pub node_addresses_refused: Gauge,
    /// 1 while connected to the API server.
    pub connected: Gauge,
    /// Pod interfaces with the policy programs attached.
    pub interfaces: Gauge,
    /// WireGuard peers configured.
    pub wg_peers: Gauge,
    /// Node keys refused because another node published the same key first.
    pub wg_key_conflicts: Gauge,
    /// WireGuard bytes of the peers configured now, by peer cluster and direction.
    pub wg_bytes: Family<Transfer, Gauge>,
    /// Seconds since each peer's transfer counters last changed (or since the agent began
    /// watching the peer, if they have not since).
    pub wg_transfer_age: Family<PeerLabel, Gauge>,
    /// Failed WireGuard configurations (retried at the next tick).
    pub wg_errors: Counter,
    /// The WireGuard backend in use (1), by backend and whether `auto` fell back.
    pub wg_backend: Family<BackendLabel, Gauge>,
    /// Pod addresses of this node with no interface enforcing policy on them.
    pub pods_unenforced: Gauge,
    /// Pod interfaces whose pod's identity is not known yet.
    pub pods_awaiting_identity: Gauge,
    /// How the policy programs attach (1 for the mode in use).
    pub policy_attach: Family<ModeLabel, Gauge>,
    /// Failed attaches of the policy programs to pod interfaces (retried).
    pub attach_errors: Counter,
    /// 1 while the masquerade exemption is in place as the agent wrote it.
    pub masq_ok: Gauge,
    /// Times the exemption was found changed or gone and written again.
    pub masq_restored: Counter,
    /// Failed reads or writes of the exemption (retried at the next tick).
    pub masq_errors: Counter,
    /// Connections the exemption kept from being masqueraded (its rule's counter; NAT rules
    /// see the first packet of a connection only).
    pub masq_exempted: Gauge,
    /// 1 while `/healthz` reports degraded.
    pub degraded: Gauge,
    /// Counter values last read from the maps, to turn them into increments.
    last: Arc<std::sync::Mutex<Counters>>,
}

impl Metrics {
    /// The metrics, registered in a new registry.
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics {
            frontends: Gauge::default(),
            backends: Gauge::default(),
            ipcache: Gauge::default(),
            enforced: Gauge::default(),
            rules: Gauge::default(),
            drops: Family::default(),
            lb: Family::default(),
            writes: Counter::default(),
            map_errors: Counter::default(),
            reconcile_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
            ]),
            skipped: Family::default(),
            lists: Counter::default(),
            revision: Gauge::default(),
            remote_stale: Family::default(),
            remote_over_limit: Family::default(),
            node_addresses_refused: Gauge::default(),
            connected: Gauge::default(),
            interfaces: Gauge::default(),
            wg_peers: Gauge::default(),
            wg_key_conflicts: Gauge::default(),
            wg_bytes: Family::default(),
            wg_transfer_age: Family::default(),
            wg_errors: Counter::default(),
            wg_backend: Family::default(),
            pods_unenforced: Gauge::default(),
            pods_awaiting_identity: Gauge::default(),
            policy_attach: Family::default(),
            attach_errors: Counter::default(),
            masq_ok: Gauge::default(),
            masq_restored: Counter::default(),
            masq_errors: Counter::default(),
            masq_exempted: Gauge::default(),
            degraded: Gauge::default(),
            last: Arc::default(),
        };
        let mut r = Registry::with_prefix("raftmesh_agent");
        r.register(
            "frontends",
            "Service frontends programmed",
            m.frontends.clone(),
        );
        r.register("backends", "Backend slots programmed", m.backends.clone());
        r.register("ipcache_entries", "ipcache entries", m.ipcache.clone());
        r.register("wg_peers", "WireGuard peers configured", m.wg_peers.clone());
        r.register(
            "wg_key_conflicts",
            "Node keys refused because another node published the same WireGuard key first",
            m.wg_key_conflicts.clone(),
        );
        r.register(
            "wg_transfer_bytes",
            "WireGuard bytes of the configured peers, by peer cluster and direction",
            m.wg_bytes.clone(),
        );
        r.register(
            "wg_transfer_age_seconds",
            "Seconds since a WireGuard peer's transfer counters last changed (or since the agent began watching it)",
            m.wg_transfer_age.clone(),
        );
        r.register(
            "wg_errors",
            "WireGuard configurations that failed (retried)",
            m.wg_errors.clone(),
        );
        r.register(
            "enforced_identities",
            "Identities selected by a policy",
            m.enforced.clone(),
        );
        r.register(
            "policy_rules",
            "Allowed (endpoint, peer, port, protocol) entries",
            m.rules.clone(),
        );
        r.register(
            "drops",
            "Packets dropped by policy, by reason",
            m.drops.clone(),
        );
        r.register(
            "lb",
            "Socket load-balancing decisions, by result",
            m.lb.clone(),
        );
        r.register(
            "map_writes",
            "Map entries written by reconciles",
            m.writes.clone(),
        );
        r.register(
            "reconcile_seconds",
            "From a change received to its maps written",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "skipped_records",
            "Records not programmed, by reason",
            m.skipped.clone(),
        );
        r.register("lists", "Full lists of the store", m.lists.clone());
        r.register(
            "store_revision",
            "Store revision applied",
            m.revision.clone(),
        );
        r.register(
            "remote_stale",
            "1 while a remote is stale (disconnected longer than --remote-stale-after)",
            m.remote_stale.clone(),
        );
        r.register(
            "remote_over_limit",
            "1 while a remote holds more nodes or pod addresses than the agent's limits (none of them is programmed)",
            m.remote_over_limit.clone(),
        );
        r.register(
            "node_addresses_refused",
            "Remote node addresses refused: special-purpose, or inside another cluster's pod or service ranges",
            m.node_addresses_refused.clone(),
        );
        r.register(
            "connected",
            "1 while connected to the API server",
            m.connected.clone(),
        );
        r.register(
            "pod_interfaces",
            "Pod interfaces with the policy programs attached",
            m.interfaces.clone(),
        );
        r.register(
            "wg_backend",
            "The WireGuard backend in use (1), and whether auto fell back to userspace",
            m.wg_backend.clone(),
        );
        r.register(
            "pods_awaiting_identity",
            "Pod interfaces whose pod's identity is not known yet (denied but for this node with --enforce-unknown-pods)",
            m.pods_awaiting_identity.clone(),
        );
        r.register(
            "pods_unenforced",
            "Pod addresses of this node that no interface with the policy programs leads to",
            m.pods_unenforced.clone(),
        );
        r.register(
            "policy_attach",
            "How the policy programs attach to pod interfaces (1 for the mode in use)",
            m.policy_attach.clone(),
        );
        r.register(
            "policy_attach_errors",
            "Failed attaches of the policy programs to a pod interface (retried)",
            m.attach_errors.clone(),
        );
        r.register(
            "masquerade_exemption_ok",
            "1 while the masquerade exemption is in place as written",
            m.masq_ok.clone(),
        );
        r.register(
            "masquerade_exemption_restored",
            "Times the masquerade exemption was found changed or gone and written again",
            m.masq_restored.clone(),
        );
        r.register(
            "masquerade_exemption_errors",
            "Failed reads or writes of the masquerade exemption (retried)",
            m.masq_errors.clone(),
        );
        r.register(
            "masquerade_exempted_connections",
            "Connections to other clusters' pods the exemption kept from being masqueraded",
            m.masq_exempted.clone(),
        );
        r.register(
            "degraded",
            "1 while /healthz reports degraded (the body says why)",
            m.degraded.clone(),
        );
        (m, r)
    }

    /// Sets the table gauges.
    pub fn tables(&self, t: &Tables) {
        self.frontends.set(t.services.len() as i64);
        self.backends.set(t.backends() as i64);
        self.ipcache.set(t.ipcache.len() as i64);
        self.enforced.set(t.enforced.len() as i64);
        self.rules.set(t.rules.len() as i64);
    }

    /// Adds what the datapath counted since the last call. The first call after a start only
    /// records the values (the maps outlive the agent; their history is not this process's).
    pub fn counters(&self, now: Counters) {
        let mut last = self.last.lock().expect("metrics lock");
        if !last.lb.is_empty() {
            for ((name, n), (_, before)) in now.lb.iter().zip(&last.lb) {
                self.lb
                    .get_or_create(&Outcome {
                        result: (*name).to_owned(),
                    })
                    .inc_by(n.saturating_sub(*before));
            }
            for ((name, n), (_, before)) in now.policy.iter().zip(&last.policy) {
                if crate::maps::POL_DROPS.contains(name) {
                    self.drops
                        .get_or_create(&Reason {
                            reason: (*name).to_owned(),
                        })
                        .inc_by(n.saturating_sub(*before));
                }
            }
        }
        *last = now;
    }
}
