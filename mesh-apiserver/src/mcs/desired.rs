//! Records → the Multi-Cluster Services objects this cluster should have. Pure: the same view
//! and local objects always give the same [`Desired`], so a sink writes only differences.
//!
//! - A `ServiceImport` for every service exported by any cluster, in every namespace of this
//!   cluster that exists: the merged import ([`mesh_api::clusterset::merge`]), its ClusterSetIP
//!   (from this cluster's `--clusterset-service-cidr`), the exporting clusters in its status.
//! - For a headless import, one `EndpointSlice` per exporting cluster (at most 100 endpoints a
//!   slice, then `-1`, `-2`, …), labelled `multicluster.kubernetes.io/service-name` and
//!   `multicluster.kubernetes.io/source-cluster`, managed by [`MANAGED_BY`], so DNS servers
//!   reading the MCS objects (CoreDNS's `multicluster` option) name every pod.
//! - The conditions of each of this cluster's `ServiceExport`s: `Valid` (the Service exists and
//!   is not ExternalName), `Ready` (this cluster's export is in the store, mirrored by the
//!   others from there), `Conflict` (the exports disagree: the reasons, comma-separated, and
//!   what differs — on every export of the service, as the KEP recommends).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use mesh_api::cidr::Cidr;
use mesh_api::clusterset::{self, Export, Import, ImportPort, ImportType, SessionAffinity};
use mesh_api::codec::address;
use serde_json::{Value, json};

use super::view::View;

/// The `endpointslice.kubernetes.io/managed-by` of the imported EndpointSlices (and the
/// `app.kubernetes.io/managed-by` of the ServiceImports): what this controller may replace or
/// delete, and nothing else.
pub const MANAGED_BY: &str = "mcs.raftmesh.io";

/// Endpoints in one imported EndpointSlice.
pub const MAX_SLICE_ENDPOINTS: usize = 100;

/// One of this cluster's `ServiceExport`s, as the source lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The version it was read in (`v1beta1`, `v1alpha1`).
    pub version: String,
}

/// What this cluster's objects say, besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    /// Its ServiceExports.
    pub exports: Vec<LocalExport>,
    /// Its Services (`namespace/name`) and their `type` (`ClusterIP` when unset).
    pub services: BTreeMap<(String, String), String>,
    /// The namespaces that exist; `None` when not known (the live API: a create in a missing
    /// namespace is refused, and tried again at the next pass).
    pub namespaces: Option<BTreeSet<String>>,
}

/// A condition of a ServiceExport, without its transition time (the sink keeps the time a
/// condition last changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Valid`, `Ready`, `Conflict`.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    /// The mcs-api reason.
    pub reason: String,
    /// For people.
    pub message: String,
}

/// What the cluster's MCS objects should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// ServiceImports by (namespace, name).
    pub imports: BTreeMap<(String, String), ImportObject>,
    /// Imported EndpointSlices by (namespace, slice name).
    pub slices: BTreeMap<(String, String), SliceObject>,
    /// Conditions of this cluster's ServiceExports by (namespace, name), with the version
    /// each was read in.
    pub statuses: BTreeMap<(String, String), (String, Vec<Condition>)>,
}

/// A ServiceImport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportObject {
    /// The merged import.
    pub import: Import,
    /// Its ClusterSetIP (none for headless imports, without a range, or in a full range).
    pub ip: Option<Ipv4Addr>,
}

/// One endpoint of an imported slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its hostname, if it has one.
    pub hostname: String,
    /// Ready.
    pub ready: bool,
    /// Serving.
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
}

/// An imported EndpointSlice: one exporting cluster's endpoints of a headless import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceObject {
    /// The service.
    pub service: String,
    /// The exporting cluster.
    pub cluster: String,
    /// `IPv4` or `IPv6`.
    pub address_type: &'static str,
    /// Its ports (the slices' in that cluster).
    pub ports: Vec<ImportPort>,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// The objects `view` and `local` call for in cluster `own`.
pub fn desired(view: &View, own: &str, local: &Local) -> Desired {
    let mut out = Desired::default();
    // Every export of every cluster, by service.
    let mut exports: BTreeMap<(String, String), Vec<Export>> = BTreeMap::new();
    for ((cluster, ns, name), s) in &view.services {
        if s.exported {
            exports
                .entry((ns.clone(), name.clone()))
                .or_default()
                .push(Export::of_record(cluster, s));
        }
    }
    let range: Option<Cidr> = view
        .clusters
        .get(own)
        .and_then(|c| c.clusterset_cidr.parse().ok());
    let imports = clusterset::imports(&exports, range.as_ref());
    let exists = |ns: &str| local.namespaces.as_ref().is_none_or(|n| n.contains(ns));
    for (key, (import, ip)) in &imports {
        if !exists(&key.0) {
            continue;
        }
        if import.type_ == ImportType::Headless {
            for cluster in &import.clusters {
                slices(view, cluster, &key.0, &key.1, &mut out.slices);
            }
        }
        out.imports.insert(
            key.clone(),
            ImportObject {
                import: import.clone(),
                ip: *ip,
            },
        );
    }
    for e in &local.exports {
        let key = (e.namespace.clone(), e.name.clone());
        let published = view
            .services
            .get(&(own.to_owned(), e.namespace.clone(), e.name.clone()))
            .is_some_and(|s| s.exported);
        let conditions = conditions(
            local.services.get(&key).map(String::as_str),
            published,
            imports.get(&key).map(|(i, _)| i),
        );
        out.statuses.insert(key, (e.version.clone(), conditions));
    }
    out
}

/// `cluster`'s endpoints of `ns/name` as imported slices of at most
/// [`MAX_SLICE_ENDPOINTS`], one address family each.
fn slices(
    view: &View,
    cluster: &str,
    ns: &str,
    name: &str,
    out: &mut BTreeMap<(String, String), SliceObject>,
) {
    let from = (
        cluster.to_owned(),
        ns.to_owned(),
        name.to_owned(),
        String::new(),
    );
    let mut by_family: BTreeMap<&'static str, (Vec<ImportPort>, Vec<SliceEndpoint>)> =
        BTreeMap::new();
    for ((c, n, s, _), record) in view.slices.range(from..) {
        if (c.as_str(), n.as_str(), s.as_str()) != (cluster, ns, name) {
            break;
        }
        let ports: Vec<ImportPort> = record
            .ports
            .iter()
            .filter_map(ImportPort::of_record)
            .collect();
        for e in &record.endpoints {
            let addresses: Vec<IpAddr> = e
                .addresses
                .iter()
                .filter_map(|a| address(a).parse().ok())
                .collect();
            let Some(first) = addresses.first() else {
                continue;
            };
            let family = if first.is_ipv4() { "IPv4" } else { "IPv6" };
            let entry = by_family.entry(family).or_default();
            if entry.0.is_empty() {
                entry.0 = ports.clone();
            }
            entry.1.push(SliceEndpoint {
                addresses,
                hostname: e.hostname.clone(),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            });
        }
    }
    for (family, (ports, endpoints)) in by_family {
        let base = match family {
            "IPv4" => format!("{name}-{cluster}"),
            _ => format!("{name}-{cluster}-v6"),
        };
        for (i, chunk) in endpoints.chunks(MAX_SLICE_ENDPOINTS).enumerate() {
            let slice = if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            out.insert(
                (ns.to_owned(), slice),
                SliceObject {
                    service: name.to_owned(),
                    cluster: cluster.to_owned(),
                    address_type: family,
                    ports: ports.clone(),
                    endpoints: chunk.to_vec(),
                },
            );
        }
    }
}

/// The conditions of an export whose Service has type `service` (`None`: no Service), whose
/// record is `published` (exported, in the store), and whose service imports as `import`.
fn conditions(service: Option<&str>, published: bool, import: Option<&Import>) -> Vec<Condition> {
    let c = |type_, status, reason: &str, message: String| Condition {
        type_,
        status,
        reason: reason.to_owned(),
        message,
    };
    let valid = match service {
        None => c(
            "Valid",
            "False",
            "NoService",
            "no Service of this name in the namespace".into(),
        ),
        Some("ExternalName") => c(
            "Valid",
            "False",
            "InvalidServiceType",
            "an ExternalName Service cannot be exported".into(),
        ),
        Some(_) => c("Valid", "True", "Valid", "the Service is exported".into()),
    };
    let ready = if valid.status == "False" {
        c("Ready", "False", "Failed", "the export is not valid".into())
    } else if published {
        c(
            "Ready",
            "True",
            "Exported",
            "in this cluster's records, mirrored by every connected cluster".into(),
        )
    } else {
        c(
            "Ready",
            "False",
            "Pending",
            "not in this cluster's records yet".into(),
        )
    };
    let conflict = match import.filter(|i| !i.conflicts.is_empty() && valid.status == "True") {
        Some(i) => c(
            "Conflict",
            "True",
            &i.conflict_reasons(),
            format!(
                "using the oldest export's ({}) where exports disagree: {}",
                i.decided_by,
                i.conflicts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        None => c(
            "Conflict",
            "False",
            "NoConflicts",
            "the exports agree".into(),
        ),
    };
    vec![valid, ready, conflict]
}

/// The label that marks what this controller manages.
pub fn managed_labels() -> Value {
    json!({"app.kubernetes.io/managed-by": MANAGED_BY})
}

/// The ServiceImport `ns/name` as a Kubernetes object of `version`, without status (the
/// status subresource is written apart: [`import_status`]).
pub fn import_object(ns: &str, name: &str, o: &ImportObject, version: &str) -> Value {
    let i = &o.import;
    let mut spec = json!({
        "type": i.type_.as_str(),
        "ports": i.ports.iter().map(|p| {
            let mut v = json!({"port": p.port, "protocol": p.protocol});
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            v
        }).collect::<Vec<_>>(),
        "sessionAffinity": i.session_affinity.as_str(),
    });
    if let SessionAffinity::ClientIp { timeout } = i.session_affinity {
        spec["sessionAffinityConfig"] =
            json!({"clientIP": {"timeoutSeconds": if timeout == 0 { 10_800 } else { timeout }}});
    }
    if let Some(policy) = &i.internal_traffic_policy {
        spec["internalTrafficPolicy"] = json!(policy);
    }
    if let Some(distribution) = &i.traffic_distribution {
        spec["trafficDistribution"] = json!(distribution);
    }
    if let Some(ip) = o.ip {
        spec["ips"] = json!([ip.to_string()]);
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    json!({
        "apiVersion": format!("{}/{version}", crate::publish::objects::MCS_GROUP),
        "kind": "ServiceImport",
        "metadata": {"name": name, "namespace": ns, "labels": managed_labels()},
        "spec": spec,
    })
}

/// The status of a ServiceImport: its exporting clusters.
pub fn import_status(o: &ImportObject) -> Value {
    json!({"clusters": o.import.clusters.iter().map(|c| json!({"cluster": c})).collect::<Vec<_>>()})
}

/// An imported EndpointSlice `ns/name`.
pub fn slice_object(ns: &str, name: &str, s: &SliceObject) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "multicluster.kubernetes.io/service-name": s.service,
                "multicluster.kubernetes.io/source-cluster": s.cluster,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "addressType": s.address_type,
        "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
        "endpoints": s.endpoints.iter().map(|e| {
            let mut v = json!({
                "addresses": e.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
            });
            if !e.hostname.is_empty() {
                v["hostname"] = json!(e.hostname);
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// `conditions` as the status of a ServiceExport, keeping each unchanged condition's
/// `lastTransitionTime` from `old` (the status as it is) and giving changed ones `now`
/// (RFC 3339).
pub fn export_status(conditions: &[Condition], old: Option<&Value>, now: &str) -> Value {
    let before: BTreeMap<&str, &Value> = old
        .and_then(|s| s["conditions"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["type"].as_str()?, c)))
        .collect();
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|c| {
            let same = before.get(c.type_).filter(|b| {
                b["status"] == c.status
                    && b["reason"] == c.reason.as_str()
                    && b["message"] == c.message.as_str()
            });
            let at = same
                .and_then(|b| b["lastTransitionTime"].as_str())
                .unwrap_or(now);
            json!({
                "type": c.type_,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": at,
            })
        })
        .collect();
    json!({"conditions": conditions})
}

#[cfg(test)]
mod tests;
