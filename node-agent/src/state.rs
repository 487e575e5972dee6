//! What the agent knows of the mesh: every cluster's records under `mesh/v1/` (its own and
//! every mirrored remote's) and the remotes' status, kept compact.
//!
//! Records are decoded once, as they arrive, into the few fields the datapath needs (IPv4
//! addresses as 4 bytes, an endpoint as address + flags), never kept as protobuf or JSON, so
//! the agent's memory grows by tens of bytes per remote endpoint (measured by
//! `mesh-bench agent`). Every change returns what it touched ([`Touched`]) so the reconcile
//! recomputes only that.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use mesh_api::cidr::Cidr;
use mesh_api::clusterset::{self, Import, ImportPort, ImportType, SessionAffinity};
use mesh_api::records::{Affinity, PolicyRecord};
use mesh_api::remote::RemoteStatusRecord;
use mesh_api::{Key, Kind, Record};

use crate::maps::protocol_number;

/// A port of a service or an endpoint slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name (service and slice ports match by name).
    pub name: Box<str>,
    /// Number.
    pub port: u16,
    /// Protocol number.
    pub proto: u8,
}

/// A service, as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// IPv4 cluster IPs.
    pub vips: Vec<Ipv4Addr>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// `global`.
    pub global: bool,
    /// `shared`.
    pub shared: bool,
    /// Backend preference.
    pub affinity: Affinity,
    /// Its `ServiceExport`, if it has one.
    pub export: Option<Export>,
}

/// What a service's export contributes to its import ([`mesh_api::clusterset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The `ServiceExport`'s creation time (Unix seconds).
    pub created: i64,
    /// The Service is headless.
    pub headless: bool,
    /// Its session affinity.
    pub session_affinity: SessionAffinity,
    /// Its `internalTrafficPolicy`, if set (imports carry it; the datapath does not use it).
    pub internal_traffic_policy: Option<String>,
    /// Its `trafficDistribution`, if set (as [`Self::internal_traffic_policy`]).
    pub traffic_distribution: Option<String>,
}

/// Endpoint flags in [`Slice::endpoints`].
pub mod endpoint_flags {
    /// Ready.
    pub const READY: u8 = 1;
    /// Serving.
    pub const SERVING: u8 = 2;
    /// Terminating.
    pub const TERMINATING: u8 = 4;
}

/// One endpoint slice: at most 100 endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// Ports every endpoint serves.
    pub ports: Vec<PortSpec>,
    /// IPv4 address and [`endpoint_flags`].
    pub endpoints: Vec<(Ipv4Addr, u8)>,
    /// The endpoints that have a hostname (valid DNS labels only), by address: few, so kept
    /// apart.
    pub hostnames: Vec<(Ipv4Addr, Box<str>)>,
}

/// A node's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// InternalIPs then ExternalIPs (IPv4).
    pub ips: Vec<Ipv4Addr>,
    /// Where its WireGuard endpoint is: the first ExternalIP, else the first InternalIP.
    pub tunnel_ip: Option<Ipv4Addr>,
    /// Its pod CIDRs (IPv4): address and prefix length.
    pub pod_cidrs: Vec<(Ipv4Addr, u8)>,
    /// The record's create revision in this store: of two remotes' nodes claiming one
    /// address, the earlier keeps it.
    pub created: i64,
}

/// A node's WireGuard key, from `mesh/v1/<c>/nodekeys/<node>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeKey {
    /// Curve25519 public key.
    pub public_key: [u8; 32],
    /// WireGuard listen port.
    pub port: u16,
    /// Where the node's agent answers reachability probes (at the WireGuard endpoint's
    /// address); `None`: it answers none.
    pub probe_port: Option<u16>,
    /// The record's create revision in this store: of two nodes with the same key, the
    /// earlier keeps it.
    pub created: i64,
}

/// What the ipcache says of a pod address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIp {
    /// Its identity.
    pub identity: u32,
    /// The address of the node it runs on (unspecified when not known).
    pub node: Ipv4Addr,
}

/// One cluster's records.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// From the cluster record.
    pub id: Option<u16>,
    /// The cluster record's pod CIDRs (IPv4).
    pub pod_cidrs: Vec<(Ipv4Addr, u8)>,
    /// The cluster record's service CIDRs (IPv4).
    pub service_cidrs: Vec<(Ipv4Addr, u8)>,
    /// The cluster record's ClusterSetIP range (this node's cluster's is the one used).
    pub clusterset_cidr: Option<Cidr>,
    /// Kinds whose `synced/` marker is present.
    pub synced: BTreeSet<Kind>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// WireGuard keys by node name.
    pub nodekeys: BTreeMap<String, NodeKey>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// Slices by `namespace/service/slice`.
    pub slices: BTreeMap<String, Slice>,
    /// Identity → sorted labels.
    pub identities: BTreeMap<u32, Vec<Box<str>>>,
    /// Pod IP → identity and node.
    pub ipcache: BTreeMap<Ipv4Addr, PodIp>,
    /// Policies by `namespace/name` (few; kept whole).
    pub policies: BTreeMap<String, PolicyRecord>,
}

impl ClusterState {
    /// Whether every kind's initial sync is complete: only then may the agent remove what
    /// this cluster's records no longer hold.
    pub fn complete(&self) -> bool {
        self.id.is_some() && Kind::SYNCED.iter().all(|k| self.synced.contains(k))
    }

    /// No record at all.
    pub fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.synced.is_empty()
            && self.nodes.is_empty()
            && self.nodekeys.is_empty()
            && self.services.is_empty()
            && self.slices.is_empty()
            && self.identities.is_empty()
            && self.ipcache.is_empty()
            && self.policies.is_empty()
    }

    /// The slices of `ns/name`.
    pub fn slices_of<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Slice> + 'a {
        let from = format!("{service}/");
        let to = format!("{service}0"); // '0' follows '/'
        self.slices.range(from..to).map(|(_, s)| s)
    }
}

/// How a remote's mirror is doing, from `mesh/status/remotes/<c>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteHealth {
    /// The mirror holds a working watch.
    pub connected: bool,
    /// When it last knew it was current (Unix ms).
    pub current_at_ms: i64,
}

/// What a change touched, for the reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Services (`namespace/name`) to recompute.
    pub services: BTreeSet<String>,
    /// ipcache addresses to recompute.
    pub ips: BTreeSet<Ipv4Addr>,
    /// Every service (a cluster's id, completeness or staleness changed).
    pub all_services: bool,
    /// The whole ipcache (a cluster's id changed).
    pub all_ips: bool,
    /// Policies (a policy or an identity changed).
    pub policy: bool,
    /// WireGuard peers (a node, a node key, or the pods of a cluster whose nodes carry no
    /// pod CIDRs changed).
    pub peers: bool,
}

impl Touched {
    /// Adds `other`.
    pub fn merge(&mut self, other: Touched) {
        self.services.extend(other.services);
        self.ips.extend(other.ips);
        self.all_services |= other.all_services;
        self.all_ips |= other.all_ips;
        self.policy |= other.policy;
        self.peers |= other.peers;
    }

    /// Everything.
    pub fn everything() -> Touched {
        Touched {
            all_services: true,
            all_ips: true,
            policy: true,
            peers: true,
            ..Touched::default()
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }
}

/// Records the agent could not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// IPv6 addresses (cluster IPs, endpoints, pods, nodes): IPv4 only for now.
    pub ipv6: u64,
    /// Values that did not decode (or keys outside the layout).
    pub undecodable: u64,
}

/// Every import of the clusterset, derived from the clusters' exports
/// ([`MeshState::refresh_clusterset`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clusterset {
    /// Imports by `namespace/name`.
    pub imports: BTreeMap<String, Import>,
    /// ClusterSetIPs by `namespace/name` (ClusterSetIP imports, when this node's cluster has a
    /// range).
    pub ips: BTreeMap<String, Ipv4Addr>,
    /// The range they were allocated from.
    pub range: Option<Cidr>,
}

/// The mesh as the agent sees it.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    /// By cluster name.
    pub clusters: BTreeMap<String, ClusterState>,
    /// Remote mirrors' health by cluster name.
    pub remotes: BTreeMap<String, RemoteHealth>,
    /// What was skipped, cumulative.
    pub skipped: Skipped,
    /// The imports, as of the last [`MeshState::refresh_clusterset`].
    pub clusterset: Clusterset,
    /// Remote nodes and clusters that answer no reachability probe (not a record: what this
    /// agent's prober found, [`crate::reach`]).
    pub unreachable: crate::reach::Unreachable,
    /// Services (`namespace/name`) whose exports changed since then.
    exports_changed: BTreeSet<String>,
    /// A cluster record's range changed since then.
    ranges_changed: bool,
}

impl MeshState {
    /// Applies a put (`Some(value)`, the key created at revision `created`) or delete (`None`)
    /// of `key`.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, created: i64) -> Touched {
        let mut touched = Touched::default();
        let parsed: Key = match key.parse() {
            Ok(k) => k,
            Err(_) => {
                self.skipped.undecodable += 1;
                return touched;
            }
        };
        if let Key::RemoteStatus { cluster } = &parsed {
            let health = value
                .and_then(|v| RemoteStatusRecord::decode_checked(v).ok())
                .map(|s| RemoteHealth {
                    connected: s.connected,
                    current_at_ms: s.current_at_ms,
                });
            let before = self.remotes.get(cluster).copied();
            match health {
                Some(h) => self.remotes.insert(cluster.clone(), h),
                None => self.remotes.remove(cluster),
            };
            // Staleness is evaluated against the clock by the reconcile; a change of
            // `connected` matters at once.
            if before.map(|h| h.connected) != health.map(|h| h.connected) {
                touched.all_services = true;
            }
            return touched;
        }
        let Some(kind) = parsed.kind() else {
            return touched;
        };
        let record = match value.map(|v| Record::decode(kind, v)) {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(_)) => {
                // A record this build cannot read is treated as absent: keeping an older
                // decoded value would program state the store no longer holds.
                self.skipped.undecodable += 1;
                None
            }
        };
        if record.is_none() && !self.clusters.contains_key(parsed.cluster()) {
            return touched;
        }
        let skipped = &mut self.skipped;
        let parsed_cluster = parsed.cluster().to_owned();
        let c = self.clusters.entry(parsed_cluster.clone()).or_default();
        let was_complete = c.complete();
        match (parsed, record) {
            (Key::Cluster { .. }, r) => {
                let clusterset_cidr = match &r {
                    Some(Record::Cluster(r)) => r.clusterset_cidr.parse::<Cidr>().ok(),
                    _ => None,
                };
                if c.clusterset_cidr != clusterset_cidr {
                    c.clusterset_cidr = clusterset_cidr;
                    self.ranges_changed = true;
                }
                let (id, pod_cidrs, service_cidrs) = match r {
                    Some(Record::Cluster(r)) => (
                        u16::try_from(r.id).ok(),
                        r.pod_cidrs
                            .iter()
                            .filter_map(|s| cidr_v4(s, skipped))
                            .collect(),
                        r.service_cidrs
                            .iter()
                            .filter_map(|s| cidr_v4(s, skipped))
                            .collect(),
                    ),
                    _ => (None, Vec::new(), Vec::new()),
                };
                if (c.id, &c.pod_cidrs, &c.service_cidrs) != (id, &pod_cidrs, &service_cidrs) {
                    c.id = id;
                    c.pod_cidrs = pod_cidrs;
                    c.service_cidrs = service_cidrs;
                    touched.merge(Touched::everything());
                }
            }
            (Key::Node { node, .. }, r) => {
                let old = c.nodes.remove(&node);
                touched
                    .ips
                    .extend(old.iter().flat_map(|n| n.ips.iter().copied()));
                if let Some(Record::Node(r)) = r {
                    let internal: Vec<Ipv4Addr> = r
                        .internal_ips
                        .iter()
                        .filter_map(|s| v4(s.parse().ok()?, skipped))
                        .collect();
                    let external: Vec<Ipv4Addr> = r
                        .external_ips
                        .iter()
                        .filter_map(|s| v4(s.parse().ok()?, skipped))
                        .collect();
                    let pod_cidrs = r
                        .pod_cidrs
                        .iter()
                        .filter_map(|s| cidr_v4(s, skipped))
                        .collect();
                    let info = NodeInfo {
                        tunnel_ip: external.first().or(internal.first()).copied(),
                        ips: internal.into_iter().chain(external).collect(),
                        pod_cidrs,
                        created,
                    };
                    touched.ips.extend(info.ips.iter().copied());
                    c.nodes.insert(node, info);
                }
                touched.peers = true;
            }
            (Key::NodeKey { node, .. }, r) => {
                let key = match r {
                    Some(Record::NodeKey(r)) => {
                        let k = node_key(&r.public_key, r.listen_port, r.probe_port, created);
                        skipped.undecodable += u64::from(k.is_none());
                        k
                    }
                    _ => None,
                };
                match key {
                    Some(k) => c.nodekeys.insert(node, k),
                    None => c.nodekeys.remove(&node),
                };
                touched.peers = true;
            }
            (Key::Identity { id, .. }, r) => {
                match r {
                    Some(Record::Identity(r)) => {
                        c.identities
                            .insert(id, r.labels.into_iter().map(Into::into).collect());
                    }
                    _ => {
                        c.identities.remove(&id);
                    }
                }
                touched.policy = true;
            }
            (Key::IpCache { ip, .. }, r) => {
                // A pod changing identity changes which rules apply to it only through the
                // ipcache, so the policy tables need no recompute.
                if let Some(ip) = v4(ip, skipped) {
                    match r {
                        Some(Record::IpCache(r)) => c.ipcache.insert(
                            ip,
                            PodIp {
                                identity: r.identity,
                                node: r.node_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                            },
                        ),
                        _ => c.ipcache.remove(&ip),
                    };
                    touched.ips.insert(ip);
                    // Peers' allowed IPs are these pods' /32s when the nodes carry no CIDRs.
                    touched.peers |= c.nodes.values().all(|n| n.pod_cidrs.is_empty());
                }
            }
            (
                Key::Service {
                    namespace, name, ..
                },
                r,
            ) => {
                let full = format!("{namespace}/{name}");
                let old_export = c
                    .services
                    .get(&full)
                    .and_then(|s| Some((s.export.clone()?, s.ports.clone())));
                match r {
                    Some(Record::Service(r)) => {
                        let vips = r
                            .cluster_ips
                            .iter()
                            .filter_map(|s| v4(s.parse().ok()?, skipped))
                            .collect();
                        let service = Service {
                            vips,
                            ports: ports(r.ports.iter().map(|p| (&p.name, p.port, &p.protocol))),
                            global: r.global,
                            shared: r.shared,
                            affinity: Affinity::try_from(r.affinity).unwrap_or(Affinity::None),
                            export: r.exported.then(|| {
                                let e = clusterset::Export::of_record("", &r);
                                Export {
                                    created: e.created,
                                    headless: e.headless,
                                    session_affinity: e.session_affinity,
                                    internal_traffic_policy: e.internal_traffic_policy,
                                    traffic_distribution: e.traffic_distribution,
                                }
                            }),
                        };
                        c.services.insert(full.clone(), service);
                    }
                    _ => {
                        c.services.remove(&full);
                    }
                }
                let new_export = c
                    .services
                    .get(&full)
                    .and_then(|s| Some((s.export.clone()?, s.ports.clone())));
                if old_export != new_export {
                    self.exports_changed.insert(full.clone());
                }
                touched.services.insert(full);
            }
            (
                Key::Endpoints {
                    namespace,
                    service,
                    slice,
                    ..
                },
                r,
            ) => {
                let full = format!("{namespace}/{service}/{slice}");
                match r {
                    Some(Record::Endpoints(r)) => {
                        let mut endpoints = Vec::with_capacity(r.endpoints.len());
                        let mut hostnames = Vec::new();
                        for e in &r.endpoints {
                            if !e.hostname.is_empty()
                                && mesh_api::keys::is_label(&e.hostname)
                                && let Some(Ok(b)) = e
                                    .addresses
                                    .first()
                                    .map(|a| <[u8; 4]>::try_from(a.as_slice()))
                            {
                                hostnames.push((Ipv4Addr::from(b), e.hostname.as_str().into()));
                            }
                            let flags = (u8::from(e.ready) * endpoint_flags::READY)
                                | (u8::from(e.serving) * endpoint_flags::SERVING)
                                | (u8::from(e.terminating) * endpoint_flags::TERMINATING);
                            for a in &e.addresses {
                                match <[u8; 4]>::try_from(a.as_slice()) {
                                    Ok(b) => endpoints.push((Ipv4Addr::from(b), flags)),
                                    Err(_) => skipped.ipv6 += 1,
                                }
                            }
                        }
                        endpoints.shrink_to_fit();
                        let slice = Slice {
                            ports: ports(r.ports.iter().map(|p| (&p.name, p.port, &p.protocol))),
                            endpoints,
                            hostnames,
                        };
                        c.slices.insert(full, slice);
                    }
                    _ => {
                        c.slices.remove(&full);
                    }
                }
                touched.services.insert(format!("{namespace}/{service}"));
            }
            (
                Key::Policy {
                    namespace, name, ..
                },
                r,
            ) => {
                let full = format!("{namespace}/{name}");
                match r {
                    Some(Record::Policy(r)) => c.policies.insert(full, r),
                    _ => c.policies.remove(&full),
                };
                touched.policy = true;
            }
            (Key::Synced { kind, .. }, r) => {
                if r.is_some() {
                    c.synced.insert(kind);
                } else {
                    c.synced.remove(&kind);
                }
            }
            (
                Key::RemoteConfig { .. }
                | Key::RemoteStatus { .. }
                | Key::RemoteCurrent { .. }
                | Key::NodeReach { .. },
                _,
            ) => {}
        }
        if c.complete() != was_complete {
            touched.merge(Touched::everything());
        }
        if c.is_empty() {
            // Every key of the cluster is gone (a drained remote): a complete, empty view.
            self.clusters.remove(parsed_cluster.as_str());
            touched.merge(Touched::everything());
        }
        touched
    }

    /// Brings [`MeshState::clusterset`] up to date with the exports applied since the last
    /// call, the ClusterSetIP range being cluster `own`'s. Returns the services whose import
    /// or ClusterSetIP changed (they need their frontends recomputed). Cheap when no export
    /// changed; otherwise one merge per changed service and, when the set of imports or
    /// their ages changed, one allocation over all of them.
    pub fn refresh_clusterset(&mut self, own: &str) -> BTreeSet<String> {
        let range = self.clusters.get(own).and_then(|c| c.clusterset_cidr);
        let changed = std::mem::take(&mut self.exports_changed);
        let ranges_changed = std::mem::take(&mut self.ranges_changed);
        if changed.is_empty() && !ranges_changed {
            return changed;
        }
        let mut touched = BTreeSet::new();
        let before: BTreeMap<String, i64> = self
            .clusterset
            .imports
            .iter()
            .filter(|(_, i)| i.type_ == ImportType::ClusterSetIp)
            .map(|(n, i)| (n.clone(), i.created))
            .collect();
        for name in changed {
            let exports: Vec<clusterset::Export> = self
                .clusters
                .iter()
                .filter_map(|(cluster, c)| {
                    let s = c.services.get(&name)?;
                    let e = s.export.as_ref()?;
                    Some(clusterset::Export {
                        cluster: cluster.clone(),
                        created: e.created,
                        headless: e.headless,
                        ports: s
                            .ports
                            .iter()
                            .map(|p| ImportPort {
                                name: p.name.to_string(),
                                port: p.port,
                                protocol: crate::maps::protocol_name(p.proto).to_owned(),
                            })
                            .collect(),
                        session_affinity: e.session_affinity,
                        internal_traffic_policy: e.internal_traffic_policy.clone(),
                        traffic_distribution: e.traffic_distribution.clone(),
                    })
                })
                .collect();
            let new = clusterset::merge(&exports);
            if self.clusterset.imports.get(&name) != new.as_ref() {
                match new {
                    Some(i) => self.clusterset.imports.insert(name.clone(), i),
                    None => self.clusterset.imports.remove(&name),
                };
                touched.insert(name);
            }
        }
        let after: BTreeMap<String, i64> = self
            .clusterset
            .imports
            .iter()
            .filter(|(_, i)| i.type_ == ImportType::ClusterSetIp)
            .map(|(n, i)| (n.clone(), i.created))
            .collect();
        if before != after || range != self.clusterset.range {
            let ips = match &range {
                Some(range) => {
                    let keyed = after
                        .iter()
                        .filter_map(|(n, t)| {
                            let (ns, name) = n.split_once('/')?;
                            Some(((ns.to_owned(), name.to_owned()), *t))
                        })
                        .collect();
                    clusterset::allocate(range, &keyed)
                        .into_iter()
                        .map(|((ns, name), ip)| (format!("{ns}/{name}"), ip))
                        .collect()
                }
                None => BTreeMap::new(),
            };
            let old = std::mem::replace(&mut self.clusterset.ips, ips);
            let names: BTreeSet<&String> = old.keys().chain(self.clusterset.ips.keys()).collect();
            for name in names {
                if old.get(name) != self.clusterset.ips.get(name) {
                    touched.insert(name.clone());
                }
            }
            self.clusterset.range = range;
        }
        touched
    }

    /// Cluster name → id, for clusters whose record is known.
    pub fn cluster_ids(&self) -> BTreeMap<&str, u16> {
        self.clusters
            .iter()
            .filter_map(|(name, c)| Some((name.as_str(), c.id?)))
            .collect()
    }
}

fn v4(ip: IpAddr, skipped: &mut Skipped) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => {
            skipped.ipv6 += 1;
            None
        }
    }
}

/// `10.1.0.0/24` (host bits cleared); IPv6 counted and skipped.
fn cidr_v4(s: &str, skipped: &mut Skipped) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) if len <= 32 => {
            let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
            Some((Ipv4Addr::from(u32::from(a) & mask), len))
        }
        IpAddr::V4(_) => None,
        IpAddr::V6(_) => {
            skipped.ipv6 += 1;
            None
        }
    }
}

/// A node key record's key, if it is a valid base64 Curve25519 key and the port is valid (a
/// probe port that is not is no probe port).
fn node_key(public_key: &str, port: u32, probe_port: u32, created: i64) -> Option<NodeKey> {
    let public_key = crate::wg::key::decode(public_key)?;
    Some(NodeKey {
        public_key,
        created,
        port: u16::try_from(port).ok().filter(|p| *p != 0)?,
        probe_port: u16::try_from(probe_port).ok().filter(|p| *p != 0),
    })
}

fn ports<'a>(it: impl Iterator<Item = (&'a String, u32, &'a String)>) -> Vec<PortSpec> {
    it.filter_map(|(name, port, proto)| {
        Some(PortSpec {
            name: name.as_str().into(),
            port: u16::try_from(port).ok()?,
            proto: protocol_number(proto)?,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests;
