//! A lab cluster's Kubernetes objects, as `kubectl get -o yaml` would print them: Nodes, Pods,
//! Services, EndpointSlices, MeshPolicies and ServiceExports, one file per kind in the directory the cluster's
//! API servers publish from (`--manifests-dir`). Files are written whole and renamed into
//! place, so a publisher never reads half of one.

use std::path::Path;

use serde_json::{Value, json};

use crate::plan::{Plan, selected};
use crate::spec::ClusterSpec;

/// The objects of cluster `c` (index `index` in the spec), by file name.
pub fn render(plan: &Plan, c: &ClusterSpec) -> Vec<(&'static str, Vec<Value>)> {
    let nodes = plan.nodes(c);
    let pods = plan.pods(c);
    let node_objects = nodes
        .iter()
        .map(|n| {
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": n.name,
                    "labels": {"kubernetes.io/hostname": n.name, "raftmesh.io/lab": plan.tag()},
                },
                // The VPC CNI assigns pod addresses from the VPC: its Nodes carry no podCIDR.
                "spec": if c.flavor.node_pod_cidr() {
                    json!({"podCIDR": format!("{}/24", n.pod_net), "podCIDRs": [format!("{}/24", n.pod_net)]})
                } else {
                    json!({})
                },
                "status": {"addresses": [
                    {"type": "InternalIP", "address": n.ip.to_string()},
                    {"type": "Hostname", "address": n.name},
                ]},
            })
        })
        .collect();
    let node_ip = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.ip.to_string())
    };
    let pod_objects = pods
        .iter()
        .map(|p| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": p.spec.name, "namespace": p.spec.namespace, "labels": p.spec.labels},
                "spec": {"nodeName": p.node, "containers": [{"name": "echo", "image": "mesh-echo"}]},
                "status": {
                    "phase": "Running",
                    "hostIP": node_ip(&p.node),
                    "podIP": p.ip.to_string(),
                    "podIPs": [{"ip": p.ip.to_string()}],
                    "conditions": [{"type": "Ready", "status": if p.spec.ready { "True" } else { "False" }}],
                },
            })
        })
        .collect();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut exports = Vec::new();
    for (i, s) in c.services.iter().enumerate() {
        let vip = if s.headless {
            "None".to_owned()
        } else {
            Plan::vip(c, i).to_string()
        };
        if s.exported {
            exports.push(json!({
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceExport",
                "metadata": {
                    "name": s.name,
                    "namespace": s.namespace,
                    "creationTimestamp": export_created(c),
                },
            }));
        }
        let mut annotations = serde_json::Map::new();
        if s.global {
            annotations.insert("mesh.raftmesh.io/global".into(), json!("true"));
            annotations.insert(
                "mesh.raftmesh.io/shared".into(),
                json!(s.shared.to_string()),
            );
            annotations.insert("mesh.raftmesh.io/affinity".into(), json!(s.affinity));
        }
        services.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace, "annotations": annotations},
            "spec": {
                "type": "ClusterIP",
                "selector": s.selector,
                "clusterIP": vip,
                "clusterIPs": [vip],
                // As an API server defaults it (Kubernetes 1.26+); imports copy it.
                "internalTrafficPolicy": "Cluster",
                "ports": s.ports.iter().map(|p| json!({
                    "name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol,
                })).collect::<Vec<_>>(),
            },
        }));
        let endpoints: Vec<Value> = selected(s, &pods)
            .into_iter()
            .map(|p| {
                let mut e = json!({
                    "addresses": [p.ip.to_string()],
                    "conditions": {"ready": p.spec.ready, "serving": p.spec.ready, "terminating": false},
                    "nodeName": p.node,
                    "targetRef": {"kind": "Pod", "name": p.spec.name, "namespace": p.spec.namespace},
                });
                if s.headless {
                    e["hostname"] = json!(p.spec.name);
                }
                e
            })
            .collect();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-lab", s.name),
                "namespace": s.namespace,
                "labels": {"kubernetes.io/service-name": s.name},
            },
            "addressType": "IPv4",
            "ports": s.ports.iter().map(|p| json!({
                "name": p.name, "port": p.target_port, "protocol": p.protocol,
            })).collect::<Vec<_>>(),
            "endpoints": endpoints,
        }));
    }
    let policies = c
        .policies
        .iter()
        .map(|p| {
            json!({
                "apiVersion": "mesh.raftmesh.io/v1alpha1",
                "kind": "MeshPolicy",
                "metadata": {"name": p.name, "namespace": p.namespace},
                "spec": serde_json::to_value(&p.spec).unwrap_or(Value::Null),
            })
        })
        .collect();
    vec![
        ("nodes.yaml", node_objects),
        ("pods.yaml", pod_objects),
        ("services.yaml", services),
        ("endpointslices.yaml", slices),
        ("meshpolicies.yaml", policies),
        ("serviceexports.yaml", exports),
    ]
}

/// The creation time of cluster `c`'s ServiceExports: fixed, so rewriting the manifests never
/// changes it, and ordered by cluster id, so where exports conflict the cluster with the lower
/// id exported first (the oldest export wins, as the MCS API says).
fn export_created(c: &ClusterSpec) -> String {
    format!("2026-01-01T00:{:02}:{:02}Z", c.id / 60, c.id % 60)
}

/// One YAML stream of `objects` (`---` between documents).
pub fn to_yaml(objects: &[Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o).expect("JSON values are YAML"));
    }
    out
}

/// Writes cluster `c`'s manifests into `dir` (created if missing), each file atomically;
/// files whose content is unchanged are not touched.
pub fn write(dir: &Path, plan: &Plan, c: &ClusterSpec) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, objects) in render(plan, c) {
        let text = to_yaml(&objects);
        let path = dir.join(file);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
