//! The mirror's metrics: counters per remote cluster (writes, resyncs, pauses, rejections by
//! reason), started at 0 when a remote's mirror starts, and the live view of each running
//! remote (connected, freshness, keys, bytes, certificate expiry) read at every scrape.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::session::now_ms;
use super::validate;

/// What the metrics show of one running remote, shared by its task and the collector.
#[derive(Debug, Default)]
pub struct RemoteState {
    /// A watch on the remote works.
    pub connected: AtomicBool,
    /// When the mirror last knew it was current, Unix ms (0: never).
    pub current_at_ms: AtomicI64,
    /// Keys mirrored.
    pub keys: AtomicU64,
    /// Bytes mirrored.
    pub bytes: AtomicU64,
    /// When the remote client certificate expires, Unix ms.
    pub cert_not_after_ms: AtomicI64,
    /// What the remote's changes may still write (`--remote-write-mib-per-minute`), across
    /// its sessions; made at the first write.
    pub write_allowance: Mutex<Option<kvstore::per_identity::TokenBucket>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    cluster: String,
    reason: &'static str,
}

/// The mirror's counters, by remote cluster.
#[derive(Debug, Default)]
pub struct MirrorMetrics {
    writes: Family<ClusterLabels, Counter>,
    resyncs: Family<ClusterLabels, Counter>,
    resync_writes: Family<ClusterLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    paused: Family<ClusterLabels, Counter>,
}

impl MirrorMetrics {
    fn labels(cluster: &str) -> ClusterLabels {
        ClusterLabels {
            cluster: cluster.to_owned(),
        }
    }

    /// Registers the counters.
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "remote_writes",
            "Txns the mirror wrote for a remote cluster",
            self.writes.clone(),
        );
        registry.register(
            "remote_resyncs",
            "Re-lists of a remote cluster that had compacted past the mirrored revision",
            self.resyncs.clone(),
        );
        registry.register(
            "remote_resync_writes",
            "Keys written or deleted by re-lists",
            self.resync_writes.clone(),
        );
        registry.register(
            "remote_paused",
            "Times a remote cluster was paused for writing faster than --remote-write-mib-per-minute",
            self.paused.clone(),
        );
        registry.register(
            "remote_rejected_records",
            "Records of a remote cluster not mirrored, by reason",
            self.rejected.clone(),
        );
    }

    /// Starts every counter of `cluster` at 0 when its mirror starts, so that each series
    /// exists from then on (a rate over a series that appears only at its first event reads
    /// as no data, not as 0).
    pub fn start(&self, cluster: &str) {
        self.writes(cluster);
        self.paused(cluster);
        self.resyncs(cluster);
        self.resync_writes(cluster);
        for reason in validate::Rejection::REASONS {
            self.rejected(cluster, reason);
        }
    }

    /// Txns written for `cluster`.
    pub fn writes(&self, cluster: &str) -> Counter {
        self.writes.get_or_create(&Self::labels(cluster)).clone()
    }

    /// Times `cluster` was paused for writing faster than its rate.
    pub fn paused(&self, cluster: &str) -> Counter {
        self.paused.get_or_create(&Self::labels(cluster)).clone()
    }

    /// Re-lists of `cluster`.
    pub fn resyncs(&self, cluster: &str) -> Counter {
        self.resyncs.get_or_create(&Self::labels(cluster)).clone()
    }

    /// Keys written by re-lists of `cluster`.
    pub fn resync_writes(&self, cluster: &str) -> Counter {
        self.resync_writes
            .get_or_create(&Self::labels(cluster))
            .clone()
    }

    /// Records of `cluster` refused for `reason`.
    pub fn rejected(&self, cluster: &str, reason: &'static str) -> Counter {
        self.rejected
            .get_or_create(&RejectLabels {
                cluster: cluster.to_owned(),
                reason,
            })
            .clone()
    }
}

/// The running remotes, read at each scrape.
pub(super) type Live = Arc<Mutex<BTreeMap<String, Arc<RemoteState>>>>;

/// Connected, freshness, keys and certificate expiry of the remotes this member mirrors
/// (only the leader mirrors, so other members show none).
#[derive(Debug)]
pub(super) struct LiveCollector {
    pub(super) live: Live,
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        type Read = fn(&RemoteState, i64) -> Option<f64>;
        let gauges: [(&str, &str, Read); 5] = [
            (
                "remote_connected",
                "1 while the mirror of the remote cluster holds a working watch.",
                |s, _| Some(f64::from(u8::from(s.connected.load(Relaxed)))),
            ),
            (
                "remote_freshness_seconds",
                "Seconds since the mirror last knew the remote's records were current.",
                |s, now| {
                    let at = s.current_at_ms.load(Relaxed);
                    (at > 0).then(|| (now - at).max(0) as f64 / 1000.0)
                },
            ),
            (
                "remote_keys",
                "Keys mirrored from the remote cluster.",
                |s, _| Some(s.keys.load(Relaxed) as f64),
            ),
            (
                "remote_bytes",
                "Key and value bytes mirrored from the remote cluster.",
                |s, _| Some(s.bytes.load(Relaxed) as f64),
            ),
            (
                "remote_cert_expiry_timestamp_seconds",
                "When the client certificate for the remote cluster expires (Unix time).",
                |s, _| {
                    let at = s.cert_not_after_ms.load(Relaxed);
                    (at > 0).then(|| at as f64 / 1000.0)
                },
            ),
        ];
        for (name, help, read) in gauges {
            let values: Vec<(String, f64)> = live
                .iter()
                .filter_map(|(c, s)| read(s, now).map(|v| (c.clone(), v)))
                .collect();
            if values.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (cluster, v) in values {
                let labels = ClusterLabels { cluster };
                let gauge = ConstGauge::new(v);
                gauge.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
