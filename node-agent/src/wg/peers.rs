//! Which WireGuard peers the node should have (pure), and the difference to what the
//! interface holds.
//!
//! A peer is a node of another cluster (of this one too with `--wg-intra-cluster`) that has
//! both a node record and a node key: its public key, its endpoint (ExternalIP, else
//! InternalIP, and the port from its key record; none when that address is refused,
//! [`desired::refused_node_ip`]), and as allowed IPs its pod CIDRs, or, when
//! its cluster's nodes carry none (the AWS VPC CNI), the /32s of the pods the ipcache places on
//! it. A peer is removed only when the view of its cluster is complete (every `synced/` marker
//! present) or the cluster is gone entirely (a drained remote); a remote that is only stale
//! keeps its mirrored records, so its peers stay.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use mesh_api::records::nodekey_claim_rank;

use crate::desired::{self, Local};
use crate::state::{MeshState, NodeKey};

/// A Curve25519 public key.
pub type PublicKey = [u8; 32];

/// An IPv4 CIDR.
pub type Cidr = (Ipv4Addr, u8);

/// Seconds between keepalives (through NAT and stateful firewalls).
pub const KEEPALIVE_SECS: u16 = 25;

/// A peer as it should be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its cluster.
    pub cluster: String,
    /// Its node.
    pub node: String,
    /// Where to send to (none when the node record has no IPv4 address: the peer can still
    /// reach us).
    pub endpoint: Option<SocketAddrV4>,
    /// Its pod CIDRs.
    pub allowed: BTreeSet<Cidr>,
}

/// What the interface holds for a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Endpoint as last written (the interface's own reading changes when the peer roams).
    pub endpoint: Option<SocketAddrV4>,
    /// Allowed IPs.
    pub allowed: BTreeSet<Cidr>,
    /// Persistent keepalive.
    pub keepalive: Option<u16>,
}

impl Applied {
    fn of(peer: &Peer) -> Applied {
        Applied {
            endpoint: peer.endpoint,
            allowed: peer.allowed.clone(),
            keepalive: Some(KEEPALIVE_SECS),
        }
    }
}

/// A node key left out because another node holds the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The claimant refused: cluster and node.
    pub claimant: (String, String),
    /// Who holds the key.
    pub holder: (String, String),
}

/// The desired peers, and the node keys left out because another node holds the same key (a
/// copied state directory, or a remote or stolen agent certificate copying a node's key to
/// take it off every peer list).
///
/// A key belongs to its first claimant: a node of this cluster before any remote's (a remote
/// can never take one of ours, whether or not this cluster's nodes are peers), then the
/// earliest record in this store (create revision), then cluster and node name. A copy made
/// later loses to the original however the names sort.
pub fn desired(
    state: &MeshState,
    local: &Local,
    own_key: &PublicKey,
    intra_cluster: bool,
) -> (BTreeMap<PublicKey, Peer>, Vec<Conflict>) {
    // Every claim, in the order claims win.
    let mut claims: Vec<(&str, &str, &NodeKey)> = state
        .clusters
        .iter()
        // A remote with more nodes than the limits has none of them configured.
        .filter(|(cname, c)| !desired::over(local, cname, c).nodes)
        .flat_map(|(cname, c)| {
            c.nodekeys
                .iter()
                .map(move |(node, key)| (cname.as_str(), node.as_str(), key))
        })
        .collect();
    claims.sort_by_key(|(c, n, k)| nodekey_claim_rank(&local.cluster, c, n, k.created));
    let this = (local.cluster.as_str(), local.node.as_str());
    let ranges = desired::Ranges::of(state, &local.cluster);
    let mut holders: BTreeMap<PublicKey, (&str, &str)> = BTreeMap::from([(*own_key, this)]);
    let mut conflicts = Vec::new();
    let mut out: BTreeMap<PublicKey, Peer> = BTreeMap::new();
    // Without pod CIDRs on any Node of a cluster, each node's pods (by the node address the
    // ipcache gives), grouped in one pass per cluster.
    let mut pods_by_node: BTreeMap<&str, BTreeMap<Ipv4Addr, BTreeSet<Cidr>>> = BTreeMap::new();
    for (cname, node, key) in claims {
        if (cname, node) == this {
            continue;
        }
        if let Some(holder) = holders.get(&key.public_key) {
            conflicts.push(Conflict {
                claimant: (cname.to_owned(), node.to_owned()),
                holder: (holder.0.to_owned(), holder.1.to_owned()),
            });
            continue;
        }
        holders.insert(key.public_key, (cname, node));
        let own = cname == local.cluster;
        if own && !intra_cluster {
            continue;
        }
        let c = &state.clusters[cname];
        let Some(info) = c.nodes.get(node) else {
            continue; // a key without its node: the node left the cluster
        };
        let by_pods = c.nodes.values().all(|n| n.pod_cidrs.is_empty());
        let allowed: BTreeSet<Cidr> = if by_pods {
            let pods = pods_by_node.entry(cname).or_insert_with(|| {
                let mut by_node: BTreeMap<Ipv4Addr, BTreeSet<Cidr>> = BTreeMap::new();
                for (ip, pod) in &c.ipcache {
                    by_node.entry(pod.node).or_default().insert((*ip, 32));
                }
                by_node
            });
            info.ips
                .iter()
                .filter_map(|ip| pods.get(ip))
                .flatten()
                .copied()
                .collect()
        } else {
            info.pod_cidrs.iter().copied().collect()
        };
        // A refused address is no endpoint: the peer can still reach us.
        let endpoint = info
            .tunnel_ip
            .filter(|ip| desired::refused_node_ip(&ranges, local, cname, *ip).is_none())
            .map(|ip| SocketAddrV4::new(ip, key.port));
        let peer = Peer {
            cluster: cname.to_owned(),
            node: node.to_owned(),
            endpoint,
            allowed,
        };
        out.insert(key.public_key, peer);
    }
    (out, conflicts)
}

/// What node `node` of cluster `cluster` is a peer for: its pod CIDRs, or (no Node of its
/// cluster carries one) the /32s of the pods the ipcache places on it. This node's own are
/// the sources the masquerade exemption keeps.
pub fn node_allowed(state: &MeshState, cluster: &str, node: &str) -> BTreeSet<Cidr> {
    let Some(c) = state.clusters.get(cluster) else {
        return BTreeSet::new();
    };
    let Some(info) = c.nodes.get(node) else {
        return BTreeSet::new();
    };
    if c.nodes.values().all(|n| n.pod_cidrs.is_empty()) {
        c.ipcache
            .iter()
            .filter(|(_, pod)| info.ips.contains(&pod.node))
            .map(|(ip, _)| (*ip, 32))
            .collect()
    } else {
        info.pod_cidrs.iter().copied().collect()
    }
}

/// What to change on the interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Peers to add or update (their allowed IPs replaced).
    pub upsert: Vec<(PublicKey, Peer)>,
    /// Peers to remove.
    pub remove: Vec<PublicKey>,
    /// Peers no longer desired but kept: their cluster's view is not complete.
    pub kept: usize,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// The peers the interface holds, and whose they are.
#[derive(Debug, Clone, Default)]
pub struct PeerTable {
    applied: BTreeMap<PublicKey, Applied>,
    /// The cluster and node each applied peer was configured for (unknown for peers adopted
    /// from the interface until they are desired again).
    owners: BTreeMap<PublicKey, (String, String)>,
}

impl PeerTable {
    /// Starts from what the interface holds.
    pub fn adopt(applied: BTreeMap<PublicKey, Applied>) -> PeerTable {
        PeerTable {
            applied,
            owners: BTreeMap::new(),
        }
    }

    /// What the interface holds.
    pub fn applied(&self) -> &BTreeMap<PublicKey, Applied> {
        &self.applied
    }

    /// The cluster and node of an applied peer, if known.
    pub fn owner(&self, key: &PublicKey) -> Option<(&str, &str)> {
        self.owners.get(key).map(|(c, n)| (c.as_str(), n.as_str()))
    }

    /// The changes that make the interface hold `desired`, never removing a peer whose cluster
    /// is only partly known.
    pub fn plan(&self, desired: &BTreeMap<PublicKey, Peer>, state: &MeshState) -> Plan {
        let mut plan = Plan::default();
        for (key, peer) in desired {
            if self.applied.get(key) != Some(&Applied::of(peer)) {
                plan.upsert.push((*key, peer.clone()));
            }
        }
        let any_partial = state.clusters.values().any(|c| !c.complete());
        for key in self.applied.keys().filter(|k| !desired.contains_key(*k)) {
            let owner = self.owner(key).map(|(c, _)| c).or_else(|| {
                state
                    .clusters
                    .iter()
                    .find(|(_, c)| c.nodekeys.values().any(|k| k.public_key == *key))
                    .map(|(name, _)| name.as_str())
            });
            let partial = match owner {
                // A cluster with no record left at all is a complete, empty view.
                Some(c) => state.clusters.get(c).is_some_and(|c| !c.complete()),
                None => any_partial,
            };
            if partial {
                plan.kept += 1;
            } else {
                plan.remove.push(*key);
            }
        }
        plan
    }

    /// Records that `plan` was applied.
    pub fn commit(&mut self, plan: &Plan) {
        for (key, peer) in &plan.upsert {
            self.applied.insert(*key, Applied::of(peer));
            self.owners
                .insert(*key, (peer.cluster.clone(), peer.node.clone()));
        }
        for key in &plan.remove {
            self.applied.remove(key);
            self.owners.remove(key);
        }
    }

    /// Every allowed CIDR of the applied peers: the routes the interface should carry.
    pub fn routes(&self) -> BTreeSet<Cidr> {
        self.applied
            .values()
            .flat_map(|a| a.allowed.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests;
