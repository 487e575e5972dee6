//! `mesh/status/reach/<cluster>/<node>`: what a node's agent finds unreachable among the
//! remote nodes it probes (the node agent's reachability probes), so `meshctl status` can say
//! which remotes, and which of their nodes, this cluster's nodes cannot reach.
//!
//! The agent writes it under its node key's lease (a dead agent's record goes with its node
//! key), on a change of its judgement and at most once a second, and never writes anything
//! per probe. The record is local: the mirror copies only `mesh/v1/<c>/`, and agents watch
//! only `mesh/v1/` and `mesh/status/remotes/`, so a partition seen by every node costs one
//! write per node and no fan-out to the other agents.
//!
//! It must fit the API server's bound on one agent value (`--max-value-bytes-per-identity`,
//! 1,024 bytes by default), whatever the mesh's size: it is at most [`MAX_BYTES`]. Node names
//! are kept for up to [`NAMES_PER_CLUSTER`] unreachable nodes of a cluster while they fit;
//! past that, counts only, and past even that, the clusters left out are counted.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use serde_json::{Value, json};

use crate::SCHEMA;
use crate::remote::{RemoteDecodeError, decode};

/// The largest encoded record: under the API server's default per-identity value bound
/// (1,024 bytes), with room to spare.
pub const MAX_BYTES: usize = 1000;
/// Unreachable nodes of one cluster that are named; beyond this a cluster's are only counted.
pub const NAMES_PER_CLUSTER: usize = 4;

/// The value of `mesh/status/reach/<cluster>/<node>`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReachRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Remote nodes the agent probes (every cluster).
    #[prost(uint32, tag = "2")]
    pub probed_nodes: u32,
    /// Remote clusters with a node the agent probes.
    #[prost(uint32, tag = "3")]
    pub probed_clusters: u32,
    /// Probed remote nodes that answer no probe (every cluster, left-out ones included).
    #[prost(uint32, tag = "4")]
    pub unreachable_nodes: u32,
    /// The clusters with an unreachable node: wholly unreachable ones first, then by the
    /// number of unreachable nodes.
    #[prost(message, repeated, tag = "5")]
    pub clusters: Vec<ReachCluster>,
    /// Clusters with an unreachable node left out of `clusters` to stay within [`MAX_BYTES`].
    #[prost(uint32, tag = "6")]
    pub omitted_clusters: u32,
}

/// One remote cluster with an unreachable node, as one agent sees it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReachCluster {
    /// The remote cluster.
    #[prost(string, tag = "1")]
    pub cluster: String,
    /// Its nodes the agent probes.
    #[prost(uint32, tag = "2")]
    pub probed: u32,
    /// Of them, the ones that answer no probe.
    #[prost(uint32, tag = "3")]
    pub unreachable: u32,
    /// Their names, when there are at most [`NAMES_PER_CLUSTER`] and the record has room.
    #[prost(string, repeated, tag = "4")]
    pub nodes: Vec<String>,
}

impl ReachCluster {
    /// Whether no probed node of the cluster answers.
    pub fn whole(&self) -> bool {
        self.probed > 0 && self.unreachable >= self.probed
    }
}

impl ReachRecord {
    /// The record of an agent that probes `probed[c]` nodes of each remote cluster `c`, of
    /// which `unreachable[c]` answer no probe, made to fit [`MAX_BYTES`].
    pub fn new(
        probed: &BTreeMap<String, usize>,
        unreachable: &BTreeMap<String, BTreeSet<String>>,
    ) -> ReachRecord {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut clusters: Vec<ReachCluster> = unreachable
            .iter()
            .filter(|(_, down)| !down.is_empty())
            .map(|(cluster, down)| ReachCluster {
                cluster: cluster.clone(),
                probed: count(probed.get(cluster).copied().unwrap_or(0).max(down.len())),
                unreachable: count(down.len()),
                nodes: if down.len() <= NAMES_PER_CLUSTER {
                    down.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        clusters.sort_by(|a, b| {
            (!a.whole(), std::cmp::Reverse(a.unreachable), &a.cluster).cmp(&(
                !b.whole(),
                std::cmp::Reverse(b.unreachable),
                &b.cluster,
            ))
        });
        let mut record = ReachRecord {
            schema: SCHEMA,
            probed_nodes: count(probed.values().sum()),
            probed_clusters: count(probed.values().filter(|n| **n > 0).count()),
            unreachable_nodes: count(unreachable.values().map(BTreeSet::len).sum()),
            clusters,
            omitted_clusters: 0,
        };
        // Names go first (from the least affected cluster up), then whole clusters.
        let mut named = record.clusters.len();
        while record.encoded_len() > MAX_BYTES && named > 0 {
            named -= 1;
            record.clusters[named].nodes.clear();
        }
        while record.encoded_len() > MAX_BYTES {
            record.clusters.pop();
            record.omitted_clusters += 1;
        }
        record
    }

    /// Decodes the value of a `mesh/status/reach/<c>/<n>` key.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, RemoteDecodeError> {
        decode("reachability", bytes, |m: &Self| m.schema)
    }

    /// The cluster's entry, if the agent finds any of its nodes unreachable.
    pub fn cluster(&self, cluster: &str) -> Option<&ReachCluster> {
        self.clusters.iter().find(|c| c.cluster == cluster)
    }

    /// For people.
    pub fn to_json(&self) -> Value {
        json!({
            "schema": self.schema,
            "probedNodes": self.probed_nodes,
            "probedClusters": self.probed_clusters,
            "unreachableNodes": self.unreachable_nodes,
            "clusters": self.clusters.iter().map(|c| json!({
                "cluster": c.cluster,
                "probed": c.probed,
                "unreachable": c.unreachable,
                "wholeCluster": c.whole(),
                "nodes": c.nodes,
            })).collect::<Vec<_>>(),
            "omittedClusters": self.omitted_clusters,
        })
    }
}

#[cfg(test)]
mod tests;
