//! The value of each kind of key. Protobuf messages (prost); field 1 is always `schema`.
//!
//! Records hold only what the mesh needs from the Kubernetes object, never timestamps or
//! resource versions, so an unchanged object always encodes to the same bytes and a
//! reconcile can tell "unchanged" from the bytes alone.

use std::collections::BTreeMap;

/// `mesh/v1/<c>/cluster`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClusterRecord {
    /// Schema version ([`crate::SCHEMA`]).
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Cluster name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Cluster id, 1..=65535, unique in the mesh.
    #[prost(uint32, tag = "3")]
    pub id: u32,
    /// Pod CIDRs.
    #[prost(string, repeated, tag = "4")]
    pub pod_cidrs: Vec<String>,
    /// Service CIDRs.
    #[prost(string, repeated, tag = "5")]
    pub service_cidrs: Vec<String>,
    /// Where remote clusters reach this cluster's API server (`https://host:port`).
    #[prost(string, repeated, tag = "6")]
    pub api_endpoints: Vec<String>,
    /// SHA-256 of the cluster CA's DER, hex.
    #[prost(string, tag = "7")]
    pub ca_fingerprint: String,
    /// The range ClusterSetIPs are allocated from (`--clusterset-service-cidr`; empty: this
    /// cluster gives imports no ClusterSetIP). Every cluster of a clusterset must use the same
    /// range for an import to have the same address everywhere ([`crate::clusterset`]).
    #[prost(string, tag = "8")]
    pub clusterset_cidr: String,
}

/// `mesh/v1/<c>/nodes/<node>`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NodeRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Node name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// InternalIP addresses.
    #[prost(string, repeated, tag = "3")]
    pub internal_ips: Vec<String>,
    /// ExternalIP addresses.
    #[prost(string, repeated, tag = "4")]
    pub external_ips: Vec<String>,
    /// Pod CIDRs assigned to the node.
    #[prost(string, repeated, tag = "5")]
    pub pod_cidrs: Vec<String>,
    /// Node labels.
    #[prost(btree_map = "string, string", tag = "6")]
    pub labels: BTreeMap<String, String>,
    /// `topology.kubernetes.io/zone`, if set.
    #[prost(string, tag = "7")]
    pub zone: String,
}

/// The order in which the nodes publishing one WireGuard public key claim it: a node of this
/// node's own cluster (`own`) before any remote's — a remote can never take a key of ours —,
/// then the earliest record (its create revision in this store), then cluster and node name.
/// Agents keep the first claimant as a peer and refuse the others; `meshctl status` shows them.
pub fn nodekey_claim_rank<'a>(
    own: &str,
    cluster: &'a str,
    node: &'a str,
    created: i64,
) -> (bool, i64, &'a str, &'a str) {
    (cluster != own, created, cluster, node)
}

/// `mesh/v1/<c>/nodekeys/<node>`: written by the node's agent, under a lease.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NodeKeyRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// WireGuard public key, base64.
    #[prost(string, tag = "2")]
    pub public_key: String,
    /// WireGuard listen port.
    #[prost(uint32, tag = "3")]
    pub listen_port: u32,
    /// The node's boot id (a reboot means a new key).
    #[prost(string, tag = "4")]
    pub boot_id: String,
    /// The UDP port where the node's agent answers reachability probes, at the same address
    /// as the WireGuard endpoint; 0: it answers none (it is not probed).
    #[prost(uint32, tag = "5")]
    pub probe_port: u32,
}

/// `mesh/v1/<c>/identities/<id>`: the label set an identity stands for.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct IdentityRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Sorted `key=value` labels.
    #[prost(string, repeated, tag = "2")]
    pub labels: Vec<String>,
}

/// `mesh/v1/<c>/ipcache/<ip>`: what a pod IP is.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct IpCacheRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The pod's identity.
    #[prost(uint32, tag = "2")]
    pub identity: u32,
    /// The IP of the node hosting it (the tunnel endpoint).
    #[prost(string, tag = "3")]
    pub node_ip: String,
    /// `namespace/name` of the pod.
    #[prost(string, tag = "4")]
    pub pod: String,
}

/// How a global service prefers backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Affinity {
    /// No preference.
    None = 0,
    /// Local backends while any is ready.
    Local = 1,
    /// Remote backends while any is ready.
    Remote = 2,
}

/// A service or endpoint port.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Port {
    /// Port name (may be empty).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Port number.
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// `TCP`, `UDP` or `SCTP`.
    #[prost(string, tag = "3")]
    pub protocol: String,
}

/// `mesh/v1/<c>/services/<ns>/<name>`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ServiceRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Cluster IPs (the frontends).
    #[prost(string, repeated, tag = "4")]
    pub cluster_ips: Vec<String>,
    /// Ports.
    #[prost(message, repeated, tag = "5")]
    pub ports: Vec<Port>,
    /// Load-balance over every cluster's backends.
    #[prost(bool, tag = "6")]
    pub global: bool,
    /// Export this cluster's backends to the others (meaningful when global).
    #[prost(bool, tag = "7")]
    pub shared: bool,
    /// Backend preference.
    #[prost(enumeration = "Affinity", tag = "8")]
    pub affinity: i32,
    /// Exported by a `ServiceExport` (multicluster.x-k8s.io): every cluster of the clusterset
    /// imports it ([`crate::clusterset`]). Exported services are also global and shared.
    #[prost(bool, tag = "9")]
    pub exported: bool,
    /// The `ServiceExport`'s creation time (Unix seconds): the oldest export of a service
    /// decides its imported properties when exports conflict. Set once, when the export is
    /// created, so it never changes an unchanged record's bytes.
    #[prost(int64, tag = "10")]
    pub export_created: i64,
    /// `clusterIP: None`: a headless service.
    #[prost(bool, tag = "11")]
    pub headless: bool,
    /// `sessionAffinity: ClientIP` (false: `None`).
    #[prost(bool, tag = "12")]
    pub client_ip_affinity: bool,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` when [`Self::client_ip_affinity`].
    #[prost(uint32, tag = "13")]
    pub affinity_timeout: u32,
    /// `internalTrafficPolicy` as the Service has it (`Cluster` or `Local`; empty: not set),
    /// in exported services' records only: the `ServiceImport` copies the oldest export's.
    #[prost(string, tag = "14")]
    pub internal_traffic_policy: String,
    /// `trafficDistribution` as the Service has it (e.g. `PreferClose`; empty: not set), in
    /// exported services' records only, as [`Self::internal_traffic_policy`].
    #[prost(string, tag = "15")]
    pub traffic_distribution: String,
}

/// One endpoint of a slice.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Endpoint {
    /// Addresses as 4 or 16 raw bytes.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub addresses: Vec<Vec<u8>>,
    /// Index + 1 into the slice's `nodes` (0: unknown).
    #[prost(uint32, tag = "2")]
    pub node: u32,
    /// Index + 1 into the slice's `zones` (0: unknown).
    #[prost(uint32, tag = "3")]
    pub zone: u32,
    /// Ready to receive traffic.
    #[prost(bool, tag = "4")]
    pub ready: bool,
    /// Serving (may still take traffic while terminating).
    #[prost(bool, tag = "5")]
    pub serving: bool,
    /// Terminating.
    #[prost(bool, tag = "6")]
    pub terminating: bool,
    /// The endpoint's `hostname` (a StatefulSet pod's name, or the pod's `spec.hostname`);
    /// names the pod in `clusterset.local` DNS. Empty when it has none.
    #[prost(string, tag = "7")]
    pub hostname: String,
}

/// `mesh/v1/<c>/endpoints/<ns>/<service>/<slice>`: at most 100 endpoints.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EndpointsRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Node names the endpoints refer to.
    #[prost(string, repeated, tag = "2")]
    pub nodes: Vec<String>,
    /// Zones the endpoints refer to.
    #[prost(string, repeated, tag = "3")]
    pub zones: Vec<String>,
    /// Ports every endpoint of the slice serves.
    #[prost(message, repeated, tag = "4")]
    pub ports: Vec<Port>,
    /// The endpoints.
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<Endpoint>,
}

/// A policy port.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PolicyPort {
    /// Port number (0: any).
    #[prost(uint32, tag = "1")]
    pub port: u32,
    /// `TCP`, `UDP`, `SCTP`, or empty for any.
    #[prost(string, tag = "2")]
    pub protocol: String,
}

/// One ingress rule: traffic from matching peers to matching ports is allowed.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PolicyRule {
    /// Clusters the peers may be in (empty: any).
    #[prost(string, repeated, tag = "1")]
    pub from_clusters: Vec<String>,
    /// Labels the peers must have.
    #[prost(btree_map = "string, string", tag = "2")]
    pub from_labels: BTreeMap<String, String>,
    /// Ports (empty: any).
    #[prost(message, repeated, tag = "3")]
    pub ports: Vec<PolicyPort>,
}

/// `mesh/v1/<c>/policies/<ns>/<name>`: a cross-cluster policy (from a `MeshPolicy`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct PolicyRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Labels of the endpoints the policy applies to.
    #[prost(btree_map = "string, string", tag = "4")]
    pub endpoint_selector: BTreeMap<String, String>,
    /// Allowed ingress.
    #[prost(message, repeated, tag = "5")]
    pub ingress: Vec<PolicyRule>,
}

/// `mesh/v1/<c>/synced/<kind>`: the initial sync of a kind is complete.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SyncedRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
}
