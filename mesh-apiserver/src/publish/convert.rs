//! Objects → records. Pure: the same objects always give the same records, so a reconcile
//! that compares encoded bytes writes nothing when nothing changed.
//!
//! What is published:
//! - every Node (`nodes/<node>`);
//! - every Service but ExternalName ones (`services/<ns>/<name>`), with the global, shared and
//!   affinity annotations (`mesh.raftmesh.io/*`, or `service.cilium.io/*` when ours is absent);
//! - the EndpointSlices of every shared or global Service, at most 100 endpoints a key
//!   (`endpoints/<ns>/<service>/<slice>`, then `<slice>.1`, `<slice>.2`, … for larger slices).
//!   A global Service with `shared: false` still publishes its slices: this cluster's node
//!   agents balance its VIP over them; other clusters' agents ignore them (its record says
//!   not shared);
//! - every MeshPolicy (`policies/<ns>/<name>`);
//! - a Service with a `ServiceExport` (multicluster.x-k8s.io) is `exported` with the export's
//!   creation time, and global and shared whatever its annotations say; the export's other
//!   properties (headless, session affinity, ports) are the Service's, as the KEP defines;
//! - for every pod with an IP: its identity's label set and its IP ([`Workload`]), which
//!   become `identities/<id>` and `ipcache/<ip>` once ids are allocated ([`identity_records`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::codec::address_bytes;
use mesh_api::records::{
    Affinity, Endpoint, EndpointsRecord, IdentityRecord, IpCacheRecord, NodeRecord, PolicyPort,
    PolicyRecord, PolicyRule, Port, ServiceRecord,
};
use mesh_api::{Key, Record, SCHEMA};

use super::objects::{MeshPolicy, Objects};

/// Most endpoints in one key.
pub const MAX_ENDPOINTS_PER_KEY: usize = 100;
pub use mesh_api::identity::{FIRST_LOCAL_ID, NAMESPACE_LABEL, RESERVED, identity};
/// The label giving a node's zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Pod labels that change with every rollout and say nothing about what a pod is; an identity
/// per value would churn identities without reason.
const IGNORED_POD_LABELS: [&str; 7] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
];

/// The reserved identities' records for `cluster` (ids 1..=8, as Cilium numbers them, with the
/// cluster id like every identity, so a remote cluster's `host` never matches a local rule for
/// `host`). They are published for people and tools reading the store; agents define the
/// reserved labels themselves ([`mesh_api::identity`]) and never take them from a record.
pub fn reserved_identities(settings: &Settings) -> BTreeMap<Key, Record> {
    RESERVED
        .iter()
        .map(|(local, label)| {
            (
                Key::Identity {
                    cluster: settings.cluster.clone(),
                    id: identity(settings.cluster_id, *local),
                },
                Record::Identity(IdentityRecord {
                    schema: SCHEMA,
                    labels: vec![(*label).to_owned()],
                }),
            )
        })
        .collect()
}

/// Which cluster the records are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--cluster-name`.
    pub cluster: String,
    /// `--cluster-id`, 1..=65535.
    pub cluster_id: u16,
}

/// An object that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// An object without a name (or namespace, for namespaced kinds).
    Unnamed {
        /// Its kind.
        kind: &'static str,
    },
    /// A name that is not a valid key segment.
    BadName {
        /// Its kind.
        kind: &'static str,
        /// `namespace/name` or `name`.
        name: String,
    },
    /// A Service with no selector and no EndpointSlices: nothing could ever back it.
    NoBackends {
        /// `namespace/name`.
        service: String,
    },
    /// An EndpointSlice whose Service does not exist.
    OrphanSlice {
        /// `namespace/name` of the slice.
        slice: String,
    },
    /// An address that does not parse.
    BadAddress {
        /// `kind namespace/name`.
        object: String,
        /// The address.
        address: String,
    },
    /// A pod IP outside every pod CIDR of its node.
    PodIpOutsideNode {
        /// `namespace/name`.
        pod: String,
        /// The IP.
        ip: IpAddr,
        /// The node.
        node: String,
    },
    /// A connected cluster whose cluster record claims this cluster's id.
    DuplicateClusterId {
        /// The other cluster.
        cluster: String,
        /// The id both claim.
        id: u32,
    },
    /// An annotation with a value it cannot have.
    BadAnnotation {
        /// `namespace/name` of the Service.
        service: String,
        /// The annotation.
        annotation: String,
        /// Its value.
        value: String,
    },
}

impl Problem {
    /// A short, stable name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Unnamed { .. } => "unnamed",
            Problem::BadName { .. } => "bad_name",
            Problem::NoBackends { .. } => "service_without_backends",
            Problem::OrphanSlice { .. } => "orphan_slice",
            Problem::BadAddress { .. } => "bad_address",
            Problem::PodIpOutsideNode { .. } => "pod_ip_outside_node",
            Problem::BadAnnotation { .. } => "bad_annotation",
            Problem::DuplicateClusterId { .. } => "duplicate_cluster_id",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unnamed { kind } => write!(f, "a {kind} without a name or namespace"),
            Problem::BadName { kind, name } => write!(f, "{kind} {name}: not a DNS-1123 name"),
            Problem::NoBackends { service } => {
                write!(f, "Service {service} has no selector and no EndpointSlices")
            }
            Problem::OrphanSlice { slice } => {
                write!(f, "EndpointSlice {slice} names no existing Service")
            }
            Problem::BadAddress { object, address } => {
                write!(f, "{object}: {address:?} is not an IP address")
            }
            Problem::PodIpOutsideNode { pod, ip, node } => {
                write!(
                    f,
                    "Pod {pod}: IP {ip} is outside the pod CIDRs of node {node}"
                )
            }
            Problem::BadAnnotation {
                service,
                annotation,
                value,
            } => write!(f, "Service {service}: {annotation}={value:?} is not valid"),
            Problem::DuplicateClusterId { cluster, id } => write!(
                f,
                "connected cluster {cluster} also has cluster id {id}: identities of the two would collide"
            ),
        }
    }
}

/// A pod as identities and the ipcache need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// One of its IPs.
    pub ip: IpAddr,
    /// Its identity's label set: sorted `key=value`.
    pub labels: Vec<String>,
    /// The IP of its node.
    pub node_ip: String,
    /// `namespace/name`.
    pub pod: String,
}

/// What the cluster should publish.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Nodes, services, endpoints and policies.
    pub records: BTreeMap<Key, Record>,
    /// Pods, for identities and the ipcache.
    pub workloads: Vec<Workload>,
    /// Objects skipped.
    pub problems: Vec<Problem>,
}

impl Desired {
    /// Every label set the workloads need an identity for.
    pub fn label_sets(&self) -> BTreeSet<Vec<String>> {
        self.workloads.iter().map(|w| w.labels.clone()).collect()
    }
}

/// The records `objects` call for.
pub fn desired(settings: &Settings, objects: &Objects) -> Desired {
    let mut d = Desired::default();
    let c = &settings.cluster;
    let mut node_cidrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in &objects.nodes {
        if let Some((name, record)) = node_record(node, &mut d.problems) {
            node_cidrs.insert(name.clone(), record.pod_cidrs.clone());
            d.records.insert(
                Key::Node {
                    cluster: c.clone(),
                    node: name,
                },
                Record::Node(record),
            );
        }
    }

    let mut sliced: BTreeSet<(String, String)> = BTreeSet::new();
    for slice in &objects.slices {
        if let (Some(ns), Some(svc)) = (&slice.metadata.namespace, service_of(slice)) {
            sliced.insert((ns.clone(), svc));
        }
    }
    // ServiceExports by namespace/name: the earliest creation time (an object listed in two
    // versions is one export).
    let mut exports: BTreeMap<(String, String), i64> = BTreeMap::new();
    for export in &objects.exports {
        if let Some(key) = named(&export.metadata, "ServiceExport", &mut d.problems) {
            let created = exports.entry(key).or_insert(i64::MAX);
            *created = (*created).min(export.created());
        }
    }
    // Services whose slices are published.
    let mut shared: BTreeSet<(String, String)> = BTreeSet::new();
    for svc in &objects.services {
        let Some((ns, name)) = named(&svc.metadata, "Service", &mut d.problems) else {
            continue;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let full = format!("{ns}/{name}");
        if spec.selector.as_ref().is_none_or(BTreeMap::is_empty)
            && !sliced.contains(&(ns.clone(), name.clone()))
        {
            d.problems.push(Problem::NoBackends { service: full });
            continue;
        }
        let export = exports.get(&(ns.clone(), name.clone())).copied();
        let record = service_record(&ns, &name, svc, export, &mut d.problems);
        if record.shared || record.global {
            shared.insert((ns.clone(), name.clone()));
        }
        d.records.insert(
            Key::Service {
                cluster: c.clone(),
                namespace: ns,
                name,
            },
            Record::Service(record),
        );
    }

    let services: BTreeSet<(String, String)> = objects
        .services
        .iter()
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .collect();
    for slice in &objects.slices {
        if imported(slice) {
            continue;
        }
        let Some((ns, slice_name)) = named(&slice.metadata, "EndpointSlice", &mut d.problems)
        else {
            continue;
        };
        let Some(svc) = service_of(slice).filter(|s| services.contains(&(ns.clone(), s.clone())))
        else {
            d.problems.push(Problem::OrphanSlice {
                slice: format!("{ns}/{slice_name}"),
            });
            continue;
        };
        if !shared.contains(&(ns.clone(), svc.clone())) || slice.address_type == "FQDN" {
            continue;
        }
        for (i, record) in endpoint_records(&ns, &slice_name, slice, &mut d.problems)
            .into_iter()
            .enumerate()
        {
            let slice = if i == 0 {
                slice_name.clone()
            } else {
                format!("{slice_name}.{i}")
            };
            d.records.insert(
                Key::Endpoints {
                    cluster: c.clone(),
                    namespace: ns.clone(),
                    service: svc.clone(),
                    slice,
                },
                Record::Endpoints(record),
            );
        }
    }

    for policy in &objects.policies {
        if let Some((ns, name)) = named(&policy.metadata, "MeshPolicy", &mut d.problems) {
            let record = policy_record(&ns, &name, policy);
            d.records.insert(
                Key::Policy {
                    cluster: c.clone(),
                    namespace: ns,
                    name,
                },
                Record::Policy(record),
            );
        }
    }

    for pod in &objects.pods {
        workloads(pod, &node_cidrs, &mut d);
    }
    d.workloads.sort_by_key(|w| w.ip);
    d
}

/// `identities/<id>` and `ipcache/<ip>` for `workloads`, given each label set's id. A
/// workload whose label set has no id yet is left out.
pub fn identity_records(
    cluster: &str,
    workloads: &[Workload],
    ids: &BTreeMap<Vec<String>, u32>,
) -> BTreeMap<Key, Record> {
    let mut out = BTreeMap::new();
    for (labels, id) in ids {
        out.insert(
            Key::Identity {
                cluster: cluster.to_owned(),
                id: *id,
            },
            Record::Identity(IdentityRecord {
                schema: SCHEMA,
                labels: labels.clone(),
            }),
        );
    }
    for w in workloads {
        if let Some(id) = ids.get(&w.labels) {
            out.insert(
                Key::IpCache {
                    cluster: cluster.to_owned(),
                    ip: w.ip,
                },
                Record::IpCache(IpCacheRecord {
                    schema: SCHEMA,
                    identity: *id,
                    node_ip: w.node_ip.clone(),
                    pod: w.pod.clone(),
                }),
            );
        }
    }
    out
}

/// `(namespace, name)` of a namespaced object, or a problem.
fn named(
    meta: &ObjectMeta,
    kind: &'static str,
    problems: &mut Vec<Problem>,
) -> Option<(String, String)> {
    let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
        problems.push(Problem::Unnamed { kind });
        return None;
    };
    if !valid_name(ns) || !valid_name(name) {
        problems.push(Problem::BadName {
            kind,
            name: format!("{ns}/{name}"),
        });
        return None;
    }
    Some((ns.clone(), name.clone()))
}

fn valid_name(s: &str) -> bool {
    mesh_api::keys::is_name(s)
}

fn node_record(node: &Node, problems: &mut Vec<Problem>) -> Option<(String, NodeRecord)> {
    let Some(name) = node.metadata.name.clone() else {
        problems.push(Problem::Unnamed { kind: "Node" });
        return None;
    };
    if !valid_name(&name) {
        problems.push(Problem::BadName { kind: "Node", name });
        return None;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let mut pod_cidrs = spec.pod_cidrs.unwrap_or_default();
    if pod_cidrs.is_empty() {
        pod_cidrs.extend(spec.pod_cidr);
    }
    let (mut internal_ips, mut external_ips) = (Vec::new(), Vec::new());
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default()
    {
        if a.address.parse::<IpAddr>().is_err() {
            continue; // Hostname and DNS entries.
        }
        match a.type_.as_str() {
            "InternalIP" => internal_ips.push(a.address),
            "ExternalIP" => external_ips.push(a.address),
            _ => {}
        }
    }
    let record = NodeRecord {
        schema: SCHEMA,
        name: name.clone(),
        internal_ips,
        external_ips,
        pod_cidrs,
        zone: labels.get(ZONE_LABEL).cloned().unwrap_or_default(),
        labels,
    };
    Some((name, record))
}

fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<(String, &'a str)> {
    [
        format!("mesh.raftmesh.io/{name}"),
        format!("service.cilium.io/{name}"),
    ]
    .into_iter()
    .find_map(|key| annotations.get(&key).map(|v| (key, v.as_str())))
}

/// The record of Service `ns/name`; `export` is its ServiceExport's creation time, if it has
/// one: an exported service is global and shared whatever its annotations say.
fn service_record(
    ns: &str,
    name: &str,
    svc: &Service,
    export: Option<i64>,
    problems: &mut Vec<Problem>,
) -> ServiceRecord {
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let mut flag = |which: &str, default: bool| match annotation(&annotations, which) {
        None => default,
        Some((_, v)) if v.eq_ignore_ascii_case("true") => true,
        Some((_, v)) if v.eq_ignore_ascii_case("false") => false,
        Some((key, v)) => {
            problems.push(Problem::BadAnnotation {
                service: format!("{ns}/{name}"),
                annotation: key,
                value: v.to_owned(),
            });
            default
        }
    };
    let global = flag("global", false) || export.is_some();
    let shared = flag("shared", true) || export.is_some();
    let affinity = match annotation(&annotations, "affinity") {
        None => Affinity::None,
        Some((_, v)) if v.eq_ignore_ascii_case("local") => Affinity::Local,
        Some((_, v)) if v.eq_ignore_ascii_case("remote") => Affinity::Remote,
        Some((_, v)) if v.eq_ignore_ascii_case("none") => Affinity::None,
        Some((key, v)) => {
            problems.push(Problem::BadAnnotation {
                service: format!("{ns}/{name}"),
                annotation: key,
                value: v.to_owned(),
            });
            Affinity::None
        }
    };
    let mut cluster_ips = spec.cluster_ips.unwrap_or_default();
    if cluster_ips.is_empty() {
        cluster_ips.extend(spec.cluster_ip);
    }
    let headless = cluster_ips.iter().any(|ip| ip == "None");
    cluster_ips.retain(|ip| ip.parse::<IpAddr>().is_ok());
    // Only a ServiceImport reads these: other services' records keep their bytes.
    let for_import = |field: Option<String>| field.filter(|_| export.is_some()).unwrap_or_default();
    let internal_traffic_policy = for_import(spec.internal_traffic_policy);
    let traffic_distribution = for_import(spec.traffic_distribution);
    let client_ip_affinity = spec.session_affinity.as_deref() == Some("ClientIP");
    let affinity_timeout = spec
        .session_affinity_config
        .and_then(|c| c.client_ip?.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|_| client_ip_affinity)
        .unwrap_or(0);
    ServiceRecord {
        schema: SCHEMA,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        cluster_ips,
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| Port {
                name: p.name.unwrap_or_default(),
                port: u32::try_from(p.port).unwrap_or(0),
                protocol: p.protocol.unwrap_or_else(|| "TCP".to_owned()),
            })
            .collect(),
        global,
        shared,
        affinity: affinity as i32,
        exported: export.is_some(),
        export_created: export.unwrap_or(0),
        headless,
        client_ip_affinity,
        affinity_timeout,
        internal_traffic_policy,
        traffic_distribution,
    }
}

/// An EndpointSlice the MCS controller wrote (another cluster's endpoints of an import): not
/// this cluster's to publish.
fn imported(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
        .is_some_and(|m| m == crate::mcs::desired::MANAGED_BY)
}

fn service_of(slice: &EndpointSlice) -> Option<String> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .cloned()
}

/// A slice's endpoints, at most [`MAX_ENDPOINTS_PER_KEY`] a record.
fn endpoint_records(
    ns: &str,
    name: &str,
    slice: &EndpointSlice,
    problems: &mut Vec<Problem>,
) -> Vec<EndpointsRecord> {
    let ports: Vec<Port> = slice
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| Port {
            name: p.name.unwrap_or_default(),
            port: p.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            protocol: p.protocol.unwrap_or_else(|| "TCP".to_owned()),
        })
        .collect();
    let mut out = Vec::new();
    for chunk in slice.endpoints.chunks(MAX_ENDPOINTS_PER_KEY) {
        let mut record = EndpointsRecord {
            schema: SCHEMA,
            ports: ports.clone(),
            ..Default::default()
        };
        for e in chunk {
            let mut addresses = Vec::new();
            for a in &e.addresses {
                match a.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(address_bytes(ip)),
                    Err(_) => problems.push(Problem::BadAddress {
                        object: format!("EndpointSlice {ns}/{name}"),
                        address: a.clone(),
                    }),
                }
            }
            if addresses.is_empty() {
                continue;
            }
            let conditions = e.conditions.clone().unwrap_or_default();
            let terminating = conditions.terminating.unwrap_or(false);
            // As Kubernetes: unset ready means ready unless terminating; unset serving means ready.
            let ready = conditions.ready.unwrap_or(!terminating);
            record.endpoints.push(Endpoint {
                addresses,
                node: index_of(&mut record.nodes, e.node_name.as_deref()),
                zone: index_of(&mut record.zones, e.zone.as_deref()),
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating,
                hostname: e.hostname.clone().unwrap_or_default(),
            });
        }
        out.push(record);
    }
    out
}

/// Index + 1 of `value` in `table`, adding it; 0 for none.
fn index_of(table: &mut Vec<String>, value: Option<&str>) -> u32 {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return 0;
    };
    let i = table.iter().position(|v| v == value).unwrap_or_else(|| {
        table.push(value.to_owned());
        table.len() - 1
    });
    u32::try_from(i + 1).expect("at most 100 entries")
}

fn policy_record(ns: &str, name: &str, policy: &MeshPolicy) -> PolicyRecord {
    PolicyRecord {
        schema: SCHEMA,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        endpoint_selector: policy.spec.endpoint_selector.match_labels.clone(),
        ingress: policy
            .spec
            .ingress
            .iter()
            .map(|rule| PolicyRule {
                from_clusters: rule.from_clusters.clone(),
                from_labels: rule.from_endpoints.match_labels.clone(),
                ports: rule
                    .ports
                    .iter()
                    .map(|p| PolicyPort {
                        port: u32::from(p.port),
                        protocol: p.protocol.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn workloads(pod: &Pod, node_cidrs: &BTreeMap<String, Vec<String>>, d: &mut Desired) {
    let Some((ns, name)) = named(&pod.metadata, "Pod", &mut d.problems) else {
        return;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    if spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return; // Host identity, or gone.
    }
    let mut ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip);
    }
    let mut labels: Vec<String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !IGNORED_POD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.push(format!("{NAMESPACE_LABEL}={ns}"));
    labels.sort();
    let node = spec.node_name.unwrap_or_default();
    for ip in ips {
        let Ok(parsed) = ip.parse::<IpAddr>() else {
            d.problems.push(Problem::BadAddress {
                object: format!("Pod {ns}/{name}"),
                address: ip,
            });
            continue;
        };
        if let Some(cidrs) = node_cidrs.get(&node)
            && !cidrs.is_empty()
            && !cidrs.iter().any(|c| cidr_contains(c, parsed))
        {
            d.problems.push(Problem::PodIpOutsideNode {
                pod: format!("{ns}/{name}"),
                ip: parsed,
                node: node.clone(),
            });
            continue;
        }
        d.workloads.push(Workload {
            ip: parsed,
            labels: labels.clone(),
            node_ip: status.host_ip.clone().unwrap_or_default(),
            pod: format!("{ns}/{name}"),
        });
    }
}

/// Whether `cidr` (`a.b.c.d/n` or IPv6) contains `ip`; false for a CIDR that does not parse.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<mesh_api::cidr::Cidr>()
        .is_ok_and(|c| c.contains(ip))
}

#[cfg(test)]
mod tests;
