//! The mesh's records → the datapath's tables. Pure: the same [`MeshState`], node and clock
//! always give the same [`Tables`], which is what the golden tests check.
//!
//! # Global services
//! Only services that this node's cluster has, with `global: true`, are programmed (the rest is
//! the CNI's); their frontends are this cluster's IPv4 cluster IPs and TCP/UDP ports. Backends
//! come from this cluster's slices (always, `shared` or not: `shared: false` only keeps them
//! from other clusters) and from every other cluster whose service of the same namespace/name is
//! global and shared. A backend's port is the slice port with the service port's name and
//! protocol. Backends are chosen in tiers; the first non-empty tier is programmed:
//!
//! | affinity | tiers |
//! |---|---|
//! | none | ready local + ready fresh remote → ready stale remote → terminating-serving |
//! | local | ready local → ready fresh remote → ready stale remote → terminating-serving |
//! | remote | ready fresh remote → ready local → ready stale remote → terminating-serving |
//!
//! # Imports (the Multi-Cluster Services API)
//! Every service exported by any cluster (a `ServiceExport`) is imported by this node whether
//! or not this cluster has a Service of that name: its ClusterSetIP (the same address in every
//! cluster, [`mesh_api::clusterset`]) is a frontend for each of the import's merged TCP/UDP
//! ports, and its backends are the endpoints of every exporting cluster, in the same tiers,
//! with the backend preference of the export that decides the import. Session affinity
//! (`ClientIP`) is carried into the `ServiceImport` and DNS but not yet honoured by the
//! datapath.
//!
//! A remote is stale when its mirror has been disconnected longer than `stale_after`
//! (`mesh/status/remotes/<c>`), or when none of its probed nodes answers this agent's
//! reachability probes ([`crate::reach`]); a remote backend is stale when its node answers
//! none. Stale backends stay programmed but only as a last resort, so a partition or a dead
//! node does not black-hole a share of the connections. No tier with a backend leaves an
//! empty slot list, which makes connects fail at once.
//!
//! # ipcache
//! Pod IPs of every cluster → their identity; node IPs → their cluster's `remote-node`
//! identity, or this cluster's `host` identity for this node.
//!
//! # Policy
//! A policy of this cluster selects the identities of this cluster in its namespace whose
//! labels match `endpointSelector`; selected identities accept only what a rule allows (plus
//! this node's `host`, so kubelet probes keep working, as Cilium does by default). A rule's
//! peers are the identities of the clusters it names whose labels match its selector: no
//! `fromClusters` means this cluster only (Cilium 1.19's default scope), `"*"` every cluster;
//! without a namespace label in the selector, peers must be in the policy's namespace.
//! Reserved identities (`reserved:host`, `reserved:remote-node`, …) match only a selector that
//! names that label, and they carry their cluster id, so one cluster's `remote-node` never
//! matches another's. Their labels are this agent's ([`mesh_api::identity`]), never a
//! record's: a remote cannot label its nodes as pods of one of our namespaces, nor its pods as
//! nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use mesh_api::identity::{
    self, HOST, NAMESPACE_LABEL, REMOTE_NODE, RESERVED, RESERVED_PREFIX, identity,
};
use mesh_api::records::{Affinity, PolicyRecord, PolicyRule};

use crate::maps::{
    Backend, Frontend, IpInfo, PROTO_TCP, PROTO_UDP, Prefix, Rule, Tables, backend_flags,
    ipcache_flags, protocol_number,
};
use crate::state::{ClusterState, MeshState, endpoint_flags};

/// Who is asking: the node the tables are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// This node's cluster.
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// A remote disconnected longer than this (ms) is stale.
    pub stale_after_ms: i64,
    /// What one remote may put in this node's maps.
    pub limits: Limits,
}

/// What one remote cluster may put in a node's ipcache and WireGuard peers. The defaults are
/// Kubernetes' own limits for one cluster (5,000 nodes, 150,000 pods:
/// <https://kubernetes.io/docs/setup/best-practices/cluster-large/>), so only a remote that
/// is broken or hostile exceeds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nodes.
    pub nodes: usize,
    /// Pod addresses.
    pub pods: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            nodes: 5_000,
            pods: 150_000,
        }
    }
}

/// What a remote holds beyond the [`Limits`]: that part of it (all its nodes, or all its pod
/// addresses) is left out whole — dropping only some would depend on the order records came
/// in — and reported, until the remote is back within them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Over {
    /// More nodes than [`Limits::nodes`].
    pub nodes: bool,
    /// More pod addresses than [`Limits::pods`].
    pub pods: bool,
}

/// What of cluster `name` is over the limits (never anything of this node's own cluster).
pub fn over(local: &Local, name: &str, c: &ClusterState) -> Over {
    if name == local.cluster {
        return Over::default();
    }
    Over {
        nodes: c.nodes.len() > local.limits.nodes,
        pods: c.ipcache.len() > local.limits.pods,
    }
}

/// The remotes with something over the limits.
pub fn over_limits<'a>(state: &'a MeshState, local: &Local) -> BTreeMap<&'a str, Over> {
    state
        .clusters
        .iter()
        .map(|(name, c)| (name.as_str(), over(local, name, c)))
        .filter(|(_, o)| *o != Over::default())
        .collect()
}

/// The address ranges each cluster holds: its cluster record's pod and service CIDRs and its
/// nodes' pod CIDRs. Looked up by the 33 prefixes of an address, so a check costs the same
/// with one cluster or hundreds.
#[derive(Debug)]
pub struct Ranges<'a> {
    lens: BTreeSet<u8>,
    owners: BTreeMap<(u32, u8), BTreeSet<&'a str>>,
    /// Every node address and the cluster whose node holds it: this node's cluster's, else
    /// the earliest node record's (create revision), as WireGuard keys are decided.
    nodes: BTreeMap<Ipv4Addr, &'a str>,
}

impl<'a> Ranges<'a> {
    /// Every cluster's ranges and node addresses, for the node of cluster `own`.
    pub fn of(state: &'a MeshState, own: &str) -> Ranges<'a> {
        let mut ranges = Ranges {
            lens: BTreeSet::new(),
            owners: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        let mut holders: BTreeMap<Ipv4Addr, (bool, i64, &'a str)> = BTreeMap::new();
        for (name, c) in &state.clusters {
            for n in c.nodes.values() {
                let rank = (name.as_str() != own, n.created, name.as_str());
                for ip in &n.ips {
                    let h = holders.entry(*ip).or_insert(rank);
                    if rank < *h {
                        *h = rank;
                    }
                }
            }
        }
        ranges.nodes = holders.into_iter().map(|(ip, (_, _, c))| (ip, c)).collect();
        for (name, c) in &state.clusters {
            let nodes = c.nodes.values().flat_map(|n| n.pod_cidrs.iter());
            for (net, len) in c.pod_cidrs.iter().chain(&c.service_cidrs).chain(nodes) {
                ranges.lens.insert(*len);
                ranges
                    .owners
                    .entry((u32::from(*net), *len))
                    .or_default()
                    .insert(name.as_str());
            }
        }
        ranges
    }

    /// A cluster other than `cluster` whose ranges hold `ip`.
    pub fn other_than(&self, ip: Ipv4Addr, cluster: &str) -> Option<&'a str> {
        self.lens.iter().find_map(|len| {
            let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
            self.owners
                .get(&(u32::from(ip) & mask, *len))?
                .iter()
                .find(|o| **o != cluster)
                .copied()
        })
    }
}

/// Why address `ip` of a node of `cluster` is refused, if it is: a remote's node may not
/// claim a special-purpose address (loopback, link-local, multicast, …), one inside another
/// cluster's pod or service ranges (this cluster's or another remote's), nor one another
/// cluster's node holds (this cluster's, or a remote's published earlier), where it would pass
/// as that cluster's node to policy and draw WireGuard handshakes. This cluster's own records
/// are trusted.
pub fn refused_node_ip(
    ranges: &Ranges<'_>,
    local: &Local,
    cluster: &str,
    ip: Ipv4Addr,
) -> Option<String> {
    if cluster == local.cluster {
        return None;
    }
    if let Some(special) = mesh_api::cidr::special(ip.into()) {
        return Some(special.to_owned());
    }
    if let Some(holder) = ranges.nodes.get(&ip).filter(|h| **h != cluster) {
        return Some(format!("a node address of {holder}"));
    }
    ranges
        .other_than(ip, cluster)
        .map(|other| format!("inside a pod or service range of {other}"))
}

/// Every remote node address refused: cluster, node, address, reason.
pub fn refused_node_ips(
    state: &MeshState,
    local: &Local,
) -> Vec<(String, String, Ipv4Addr, String)> {
    let ranges = Ranges::of(state, &local.cluster);
    let mut out = Vec::new();
    for (cname, c) in &state.clusters {
        for (node, n) in &c.nodes {
            for ip in &n.ips {
                if let Some(why) = refused_node_ip(&ranges, local, cname, *ip) {
                    out.push((cname.clone(), node.clone(), *ip, why));
                }
            }
        }
    }
    out
}

/// Every table.
pub fn tables(state: &MeshState, local: &Local, now_ms: i64) -> Tables {
    let (enforced, rules) = policy(state, local);
    Tables {
        services: services(state, local, now_ms),
        ipcache: ipcache(state, local),
        enforced,
        rules,
    }
}

/// Every global service's and every import's frontends.
pub fn services(state: &MeshState, local: &Local, now_ms: i64) -> BTreeMap<Frontend, Vec<Backend>> {
    let mut out = BTreeMap::new();
    for name in service_names(state, local) {
        out.extend(service(state, local, name, now_ms));
    }
    out
}

/// The services that may have frontends on this node: this cluster's, and every import.
pub fn service_names<'a>(state: &'a MeshState, local: &Local) -> BTreeSet<&'a String> {
    let own = state.clusters.get(&local.cluster);
    own.into_iter()
        .flat_map(|c| c.services.keys())
        .chain(state.clusterset.imports.keys())
        .collect()
}

/// Whether remote `cluster` is stale at `now_ms`.
pub fn stale(state: &MeshState, local: &Local, cluster: &str, now_ms: i64) -> bool {
    cluster != local.cluster
        && state.remotes.get(cluster).is_some_and(|h| {
            !h.connected && now_ms.saturating_sub(h.current_at_ms) > local.stale_after_ms
        })
}

/// The frontends of service `name` (`namespace/name`) with their backends, in slot order:
/// this cluster's global service at its cluster IPs, and the import at its ClusterSetIP.
pub fn service(
    state: &MeshState,
    local: &Local,
    name: &str,
    now_ms: i64,
) -> BTreeMap<Frontend, Vec<Backend>> {
    let mut out = BTreeMap::new();
    let own = state.clusters.get(&local.cluster);
    if let Some(svc) = own.and_then(|c| c.services.get(name)).filter(|s| s.global) {
        // This cluster, and every remote sharing the service.
        let contributing = contributing(state, local, name, now_ms, |cluster, s| {
            cluster == local.cluster || (s.global && s.shared)
        });
        let ports = svc.ports.iter().map(|p| (p.name.as_ref(), p.port, p.proto));
        for (port, chosen) in frontend_ports(&contributing, name, ports, svc.affinity) {
            for vip in &svc.vips {
                out.insert(
                    Frontend {
                        vip: *vip,
                        port: port.1,
                        proto: port.2,
                    },
                    chosen.clone(),
                );
            }
        }
    }
    if let (Some(import), Some(vip)) = (
        state.clusterset.imports.get(name),
        state.clusterset.ips.get(name),
    ) {
        // Every exporting cluster; the deciding export's backend preference.
        let contributing = contributing(state, local, name, now_ms, |_, s| s.export.is_some());
        let affinity = state
            .clusters
            .get(&import.decided_by)
            .and_then(|c| c.services.get(name))
            .map_or(Affinity::None, |s| s.affinity);
        let ports = import.ports.iter().filter_map(|p| {
            Some((
                p.name.as_str(),
                p.port,
                crate::maps::protocol_number(&p.protocol)?,
            ))
        });
        for (port, chosen) in frontend_ports(&contributing, name, ports, affinity) {
            out.insert(
                Frontend {
                    vip: *vip,
                    port: port.1,
                    proto: port.2,
                },
                chosen,
            );
        }
    }
    out
}

/// A cluster whose service contributes backends: its state, the flags of all its backends,
/// and the addresses of its nodes that answer no probe (the backends on them are stale).
struct Contributor<'a> {
    cluster: &'a ClusterState,
    flags: u32,
    down: BTreeSet<Ipv4Addr>,
}

impl Contributor<'_> {
    /// The flags of a backend at `ip`.
    fn flags_of(&self, ip: Ipv4Addr) -> u32 {
        let on_down_node = !self.down.is_empty()
            && (self.down.contains(&ip)
                || self
                    .cluster
                    .ipcache
                    .get(&ip)
                    .is_some_and(|pod| self.down.contains(&pod.node)));
        if on_down_node {
            self.flags | backend_flags::STALE
        } else {
            self.flags
        }
    }
}

/// The clusters whose service `name` passes `takes`.
fn contributing<'a>(
    state: &'a MeshState,
    local: &Local,
    name: &str,
    now_ms: i64,
    takes: impl Fn(&str, &crate::state::Service) -> bool,
) -> Vec<Contributor<'a>> {
    state
        .clusters
        .iter()
        .filter_map(|(cname, c)| {
            let is_local = *cname == local.cluster;
            c.services.get(name).filter(|s| takes(cname, s))?;
            let mut flags = 0;
            if is_local {
                flags |= backend_flags::LOCAL;
            }
            if stale(state, local, cname, now_ms) || state.unreachable.clusters.contains(cname) {
                flags |= backend_flags::STALE;
            }
            let down = if is_local {
                BTreeSet::new()
            } else {
                state.unreachable.node_ips(state, cname)
            };
            Some(Contributor {
                cluster: c,
                flags,
                down,
            })
        })
        .collect()
}

/// A port as frontends name it: name, number, protocol.
type PortKey<'p> = (&'p str, u16, u8);

/// For each TCP or UDP port `(name, number, protocol)`: the backends chosen among the
/// contributing clusters' endpoints whose slice port has the same name and protocol.
fn frontend_ports<'p>(
    contributing: &[Contributor<'_>],
    name: &str,
    ports: impl Iterator<Item = PortKey<'p>>,
    affinity: Affinity,
) -> Vec<(PortKey<'p>, Vec<Backend>)> {
    let mut out = Vec::new();
    for port in ports.filter(|p| matches!(p.2, PROTO_TCP | PROTO_UDP)) {
        let mut candidates: Vec<Backend> = Vec::new();
        for contributor in contributing {
            let c = contributor.cluster;
            let cluster_id = c.id.unwrap_or(0);
            for slice in c.slices_of(name) {
                let Some(target) = slice
                    .ports
                    .iter()
                    .find(|p| &*p.name == port.0 && p.proto == port.2)
                else {
                    continue;
                };
                for (ip, eflags) in &slice.endpoints {
                    let ready = eflags & endpoint_flags::READY != 0;
                    let draining = !ready
                        && eflags & endpoint_flags::SERVING != 0
                        && eflags & endpoint_flags::TERMINATING != 0;
                    if !ready && !draining {
                        continue;
                    }
                    let state_flag = if ready {
                        backend_flags::READY
                    } else {
                        backend_flags::TERMINATING
                    };
                    candidates.push(Backend {
                        ip: *ip,
                        port: target.port,
                        cluster_id,
                        flags: contributor.flags_of(*ip) | state_flag,
                    });
                }
            }
        }
        out.push((port, choose(candidates, affinity)));
    }
    out
}

/// The tier of a backend: lower is preferred (see the module docs' table).
fn tier(b: &Backend, affinity: Affinity) -> u8 {
    use backend_flags::{LOCAL, READY, STALE};
    let local = b.flags & LOCAL != 0;
    match (b.flags & READY != 0, b.flags & STALE != 0) {
        (false, _) => 3,
        (true, true) => 2,
        (true, false) => match affinity {
            Affinity::None => 0,
            Affinity::Local => u8::from(!local),
            Affinity::Remote => u8::from(local),
        },
    }
}

/// The backends of the best non-empty tier of `candidates`, sorted, each address and port
/// once.
fn choose(candidates: Vec<Backend>, affinity: Affinity) -> Vec<Backend> {
    let Some(best) = candidates.iter().map(|b| tier(b, affinity)).min() else {
        return Vec::new();
    };
    let mut picked: Vec<Backend> = candidates
        .into_iter()
        .filter(|b| tier(b, affinity) == best)
        .collect();
    picked.sort();
    picked.dedup_by_key(|b| (b.ip, b.port));
    picked
}

/// The clusters in the order their claims on an address win: this one first, then the
/// others by name; only clusters whose id is known.
fn by_precedence<'a>(
    state: &'a MeshState,
    local: &'a Local,
) -> impl Iterator<Item = (&'a String, &'a ClusterState, u16)> + 'a {
    let own = state.clusters.get_key_value(local.cluster.as_str());
    own.into_iter()
        .chain(state.clusters.iter().filter(|(n, _)| **n != local.cluster))
        .filter_map(|(n, c)| Some((n, c, c.id?)))
}

/// What a node address is: this node's `host`, or its cluster's `remote-node`.
fn node_info(cluster: &str, node: &str, cid: u16, local: &Local) -> IpInfo {
    let this_node = cluster == local.cluster && node == local.node;
    IpInfo {
        identity: identity(cid, if this_node { HOST } else { REMOTE_NODE }),
        cluster_id: cid,
        flags: if this_node {
            ipcache_flags::HOST
        } else {
            ipcache_flags::NODE
        },
    }
}

/// A pod address's entry, if its identity is a pod identity of its own cluster (a record
/// claiming another cluster's identity, or a reserved one such as its nodes', is ignored: it
/// could borrow rules written for them).
fn pod_info(identity: u32, cid: u16) -> Option<IpInfo> {
    (identity::cluster_of(identity) == cid && !identity::is_reserved(identity)).then_some(IpInfo {
        identity,
        cluster_id: cid,
        flags: ipcache_flags::POD,
    })
}

/// The whole ipcache: every cluster's claims, in [`by_precedence`] order, the first claim of
/// an address winning (within a cluster, a node before a pod); a remote's nodes or pods over
/// the [`Limits`] are left out, and so are its nodes' refused addresses
/// ([`refused_node_ip`]).
pub fn ipcache(state: &MeshState, local: &Local) -> BTreeMap<Prefix, IpInfo> {
    let ranges = Ranges::of(state, &local.cluster);
    let mut out = BTreeMap::new();
    for (cname, c, cid) in by_precedence(state, local) {
        let over = over(local, cname, c);
        if !over.nodes {
            for (node, n) in &c.nodes {
                for ip in &n.ips {
                    if refused_node_ip(&ranges, local, cname, *ip).is_none() {
                        out.entry(Prefix { ip: *ip, len: 32 })
                            .or_insert_with(|| node_info(cname, node, cid, local));
                    }
                }
            }
        }
        if !over.pods {
            for (ip, pod) in &c.ipcache {
                if let Some(info) = pod_info(pod.identity, cid) {
                    out.entry(Prefix { ip: *ip, len: 32 }).or_insert(info);
                }
            }
        }
    }
    out
}

/// What `ip` is, by the same rules as [`ipcache`]: this cluster's claims (its nodes, then its
/// pods) before any remote's, so a remote cannot take this cluster's addresses.
pub fn ipcache_entry(state: &MeshState, local: &Local, ip: Ipv4Addr) -> Option<IpInfo> {
    for (cname, c, cid) in by_precedence(state, local) {
        let over = over(local, cname, c);
        let node = c.nodes.iter().find(|(_, n)| n.ips.contains(&ip));
        if let Some((node, _)) = node.filter(|_| !over.nodes)
            // The ranges only for a remote's node address: rare, and they cost a walk.
            && (*cname == local.cluster
                || refused_node_ip(&Ranges::of(state, &local.cluster), local, cname, ip).is_none())
        {
            return Some(node_info(cname, node, cid, local));
        }
        if over.pods {
            continue;
        }
        if let Some(info) = c.ipcache.get(&ip).and_then(|p| pod_info(p.identity, cid)) {
            return Some(info);
        }
    }
    None
}

/// The wildcard of `fromClusters`: every cluster.
pub const ANY_CLUSTER: &str = "*";

/// An identity and its labels, as rules see them.
struct Labelled<'a> {
    id: u32,
    labels: Vec<&'a str>,
}

/// The identities of cluster `c` (id `cid`) a rule can name: its reserved ones, with the labels
/// this agent defines, and its records' identities of its own id outside the reserved range,
/// with any `reserved:` label dropped. Nothing a cluster publishes can make one of its
/// identities look like another kind, or like another cluster's.
fn labelled(c: &ClusterState, cid: u16) -> Vec<Labelled<'_>> {
    let reserved = RESERVED.iter().map(|(n, label)| Labelled {
        id: identity(cid, *n),
        labels: vec![*label],
    });
    let published = c
        .identities
        .iter()
        .filter(|(id, _)| identity::cluster_of(**id) == cid && !identity::is_reserved(**id))
        .map(|(id, labels)| Labelled {
            id: *id,
            labels: labels
                .iter()
                .map(AsRef::as_ref)
                .filter(|l: &&str| !l.starts_with(RESERVED_PREFIX))
                .collect(),
        });
    reserved.chain(published).collect()
}

/// Whether `rule` admits peers of cluster `cluster`: the clusters it names, this cluster only
/// when it names none (as Cilium 1.19's default policy scope), every cluster when it names
/// [`ANY_CLUSTER`].
fn admits(rule: &PolicyRule, cluster: &str, local: &Local) -> bool {
    if rule.from_clusters.is_empty() {
        return cluster == local.cluster;
    }
    rule.from_clusters
        .iter()
        .any(|c| c == ANY_CLUSTER || c == cluster)
}

/// The enforced identities and the allowed flows.
pub fn policy(state: &MeshState, local: &Local) -> (BTreeSet<u32>, BTreeSet<Rule>) {
    let mut enforced = BTreeSet::new();
    let mut rules = BTreeSet::new();
    let Some(own) = state.clusters.get(&local.cluster) else {
        return (enforced, rules);
    };
    let Some(own_id) = own.id else {
        return (enforced, rules);
    };
    let clusters: Vec<(&str, Vec<Labelled<'_>>)> = state
        .clusters
        .iter()
        .filter_map(|(name, c)| Some((name.as_str(), labelled(c, c.id?))))
        .collect();
    let own_identities = labelled(own, own_id);
    for p in own.policies.values() {
        let endpoints: Vec<u32> = own_identities
            .iter()
            .filter(|i| !identity::is_reserved(i.id) && selects_endpoint(p, &i.labels))
            .map(|i| i.id)
            .collect();
        enforced.extend(endpoints.iter().copied());
        for e in &endpoints {
            rules.insert(Rule {
                endpoint: *e,
                peer: identity(own_id, HOST),
                port: 0,
                proto: 0,
            });
        }
        for rule in &p.ingress {
            let ports: Vec<(u16, u8)> = if rule.ports.is_empty() {
                vec![(0, 0)]
            } else {
                rule.ports
                    .iter()
                    .filter_map(|pp| {
                        Some((u16::try_from(pp.port).ok()?, protocol_number(&pp.protocol)?))
                    })
                    .collect()
            };
            for (cname, identities) in &clusters {
                if !admits(rule, cname, local) {
                    continue;
                }
                for peer in identities {
                    if !selects_peer(&rule.from_labels, &p.namespace, peer) {
                        continue;
                    }
                    for e in &endpoints {
                        for (port, proto) in &ports {
                            rules.insert(Rule {
                                endpoint: *e,
                                peer: peer.id,
                                port: *port,
                                proto: *proto,
                            });
                        }
                    }
                }
            }
        }
    }
    (enforced, rules)
}

/// Whether `labels` has `key=value` (or the bare `key` when `value` is empty).
fn has(labels: &[&str], key: &str, value: &str) -> bool {
    labels.iter().any(|l| {
        l.strip_prefix(key).is_some_and(|rest| {
            rest.strip_prefix('=') == Some(value) || (value.is_empty() && rest.is_empty())
        })
    })
}

fn selects_endpoint(p: &PolicyRecord, labels: &[&str]) -> bool {
    has(labels, NAMESPACE_LABEL, &p.namespace)
        && p.endpoint_selector.iter().all(|(k, v)| has(labels, k, v))
}

/// Reserved identities match only a selector that names their label; pods match in the
/// policy's namespace unless the selector names one.
fn selects_peer(selector: &BTreeMap<String, String>, namespace: &str, peer: &Labelled<'_>) -> bool {
    if identity::is_reserved(peer.id) {
        return !selector.is_empty() && selector.iter().all(|(k, v)| has(&peer.labels, k, v));
    }
    (selector.contains_key(NAMESPACE_LABEL) || has(&peer.labels, NAMESPACE_LABEL, namespace))
        && selector.iter().all(|(k, v)| has(&peer.labels, k, v))
}

#[cfg(test)]
mod tests;
