use super::*;
use crate::spec::LabSpec;

fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

#[test]
fn a_cluster_renders_every_kind() {
    let spec = LabSpec::default_lab();
    let plan = Plan::new(0);
    let infra = spec.cluster("infra").unwrap();
    let files = render(&plan, infra);
    let kinds: Vec<(&str, usize)> = files.iter().map(|(f, o)| (*f, o.len())).collect();
    assert_eq!(
        kinds,
        [
            ("nodes.yaml", 2),
            ("pods.yaml", 4),
            ("services.yaml", 2),
            ("endpointslices.yaml", 2),
            ("meshpolicies.yaml", 1),
            ("serviceexports.yaml", 0)
        ]
    );
    let yaml = to_yaml(&files[3].1);
    let slices = docs(&yaml);
    let echo = &slices[0];
    assert_eq!(
        echo["metadata"]["labels"]["kubernetes.io/service-name"],
        "echo"
    );
    let addrs: Vec<&str> = echo["endpoints"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap())
        .collect();
    assert_eq!(addrs, ["10.2.1.10", "10.2.2.10"]);
    assert_eq!(echo["ports"][0]["port"].as_u64(), Some(8080));
    let svc = &docs(&to_yaml(&files[2].1))[0];
    assert_eq!(svc["spec"]["clusterIP"], "10.255.2.10");
    assert_eq!(
        svc["metadata"]["annotations"]["mesh.raftmesh.io/global"],
        "true"
    );
    let policy = &docs(&to_yaml(&files[4].1))[0];
    assert_eq!(policy["spec"]["ingress"][0]["fromClusters"][0], "apps");
}

#[test]
fn a_pod_that_is_not_ready_stays_in_the_slice_as_not_ready() {
    let mut spec = LabSpec::default_lab();
    spec.clusters[0].pods[0].ready = false;
    let files = render(&Plan::new(0), &spec.clusters[0]);
    let slices = docs(&to_yaml(&files[3].1));
    let ready: Vec<bool> = slices[0]["endpoints"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["conditions"]["ready"].as_bool().unwrap())
        .collect();
    assert_eq!(ready, [false, true]);
}

#[test]
fn write_replaces_changed_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LabSpec::default_lab();
    let plan = Plan::new(0);
    write(dir.path(), &plan, &spec.clusters[0]).unwrap();
    let nodes = dir.path().join("nodes.yaml");
    let before = std::fs::metadata(&nodes).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut changed = spec.clusters[0].clone();
    changed.pods[0].ready = false;
    write(dir.path(), &plan, &changed).unwrap();
    assert_eq!(
        std::fs::metadata(&nodes).unwrap().modified().unwrap(),
        before
    );
    assert!(
        std::fs::read_to_string(dir.path().join("endpointslices.yaml"))
            .unwrap()
            .contains("ready: false")
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn an_exported_headless_service_has_an_export_and_named_endpoints() {
    let mut spec = LabSpec::default_lab();
    let infra = spec
        .clusters
        .iter_mut()
        .find(|c| c.name == "infra")
        .unwrap();
    infra.services[1].exported = true;
    infra.services[1].headless = true;
    let files = render(&Plan::new(0), infra);
    let exports = docs(&to_yaml(&files[5].1));
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0]["kind"], "ServiceExport");
    assert_eq!(exports[0]["metadata"]["name"], "db");
    // infra's id is 2: two seconds after the base, after apps' (id 1).
    assert_eq!(
        exports[0]["metadata"]["creationTimestamp"],
        "2026-01-01T00:00:02Z"
    );
    let db = &docs(&to_yaml(&files[2].1))[1];
    assert_eq!(db["spec"]["clusterIP"], "None");
    let slice = &docs(&to_yaml(&files[3].1))[1];
    assert_eq!(slice["endpoints"][0]["hostname"], "db");
    // The publisher takes the export and the hostnames as written.
    let echo = &docs(&to_yaml(&files[3].1))[0];
    assert!(echo["endpoints"][0].get("hostname").is_none());
}
