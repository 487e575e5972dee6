use mesh_api::SCHEMA;
use mesh_api::codec::address_bytes;
use mesh_api::records::{ClusterRecord, Endpoint, EndpointsRecord, Port, ServiceRecord};

use super::*;

fn port(name: &str, number: u32) -> Port {
    Port {
        name: name.to_owned(),
        port: number,
        protocol: "TCP".to_owned(),
    }
}

/// `cluster`'s record of `ns/name` exported at `created`.
fn export(
    view: &mut View,
    cluster: &str,
    name: &str,
    created: i64,
    headless: bool,
    ports: Vec<Port>,
) {
    let (ns, svc) = name.split_once('/').unwrap();
    view.services.insert(
        (cluster.to_owned(), ns.to_owned(), svc.to_owned()),
        ServiceRecord {
            schema: SCHEMA,
            namespace: ns.to_owned(),
            name: svc.to_owned(),
            ports,
            global: true,
            shared: true,
            exported: true,
            export_created: created,
            headless,
            ..Default::default()
        },
    );
}

fn view() -> View {
    let mut v = View::default();
    for (name, range) in [("apps", "10.254.0.0/16"), ("infra", "10.254.0.0/16")] {
        v.clusters.insert(
            name.to_owned(),
            ClusterRecord {
                schema: SCHEMA,
                name: name.to_owned(),
                clusterset_cidr: range.to_owned(),
                ..Default::default()
            },
        );
    }
    v
}

fn local(exports: &[(&str, &str)], services: &[(&str, &str)]) -> Local {
    let split = |s: &str| {
        let (a, b) = s.split_once('/').unwrap();
        (a.to_owned(), b.to_owned())
    };
    Local {
        exports: exports
            .iter()
            .map(|(n, version)| {
                let (namespace, name) = split(n);
                LocalExport {
                    namespace,
                    name,
                    version: (*version).to_owned(),
                }
            })
            .collect(),
        services: services
            .iter()
            .map(|(n, t)| (split(n), (*t).to_owned()))
            .collect(),
        namespaces: None,
    }
}

/// The view with infra's export of `demo/web` (port `http` 80, created at 10).
fn web_exported_by_infra() -> View {
    let mut v = view();
    export(
        &mut v,
        "infra",
        "demo/web",
        10,
        false,
        vec![port("http", 80)],
    );
    v
}

fn condition(d: &Desired, name: &str, type_: &str) -> (String, String, String) {
    let (ns, svc) = name.split_once('/').unwrap();
    let (_, conditions) = &d.statuses[&(ns.to_owned(), svc.to_owned())];
    let c = conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.to_owned(), c.reason.clone(), c.message.clone())
}

#[test]
fn an_export_of_one_cluster_is_imported_everywhere_with_the_same_address() {
    let v = web_exported_by_infra();
    let in_apps = desired(&v, "apps", &Local::default());
    let in_infra = desired(
        &v,
        "infra",
        &local(&[("demo/web", "v1beta1")], &[("demo/web", "ClusterIP")]),
    );
    let key = ("demo".to_owned(), "web".to_owned());
    let a = &in_apps.imports[&key];
    assert_eq!(a, &in_infra.imports[&key]);
    assert!(a.ip.is_some());
    let object = import_object("demo", "web", a, "v1alpha1");
    assert_eq!(object["apiVersion"], "multicluster.x-k8s.io/v1alpha1");
    assert_eq!(object["spec"]["type"], "ClusterSetIP");
    assert_eq!(object["spec"]["ips"][0], a.ip.unwrap().to_string());
    assert_eq!(
        object["spec"]["ports"],
        json!([{"name": "http", "port": 80, "protocol": "TCP"}])
    );
    assert_eq!(
        import_status(a),
        json!({"clusters": [{"cluster": "infra"}]})
    );
    // infra's own export: valid, published, no conflict.
    assert_eq!(condition(&in_infra, "demo/web", "Valid").0, "True");
    assert_eq!(condition(&in_infra, "demo/web", "Ready").1, "Exported");
    assert_eq!(
        condition(&in_infra, "demo/web", "Conflict").1,
        "NoConflicts"
    );
    assert!(in_apps.statuses.is_empty(), "apps exports nothing");
    for unset in [
        "internalTrafficPolicy",
        "trafficDistribution",
        "sessionAffinityConfig",
    ] {
        assert!(object["spec"].get(unset).is_none(), "{unset}: {object}");
    }
}

/// Conformance (Required): "The InternalTrafficPolicy for a ClusterSetIP ServiceImport should
/// match the exported service's InternalTrafficPolicy", and the same for TrafficDistribution.
#[test]
fn the_import_copies_the_exported_service_s_traffic_policy_and_distribution() {
    let mut v = web_exported_by_infra();
    let record = v.services.values_mut().next().unwrap();
    record.internal_traffic_policy = "Local".into();
    record.traffic_distribution = "PreferClose".into();
    let d = desired(&v, "apps", &Local::default());
    let object = import_object(
        "demo",
        "web",
        &d.imports[&("demo".into(), "web".into())],
        "v1beta1",
    );
    assert_eq!(object["spec"]["internalTrafficPolicy"], "Local");
    assert_eq!(object["spec"]["trafficDistribution"], "PreferClose");
}

#[test]
fn a_port_conflict_is_won_by_the_oldest_export_and_reported_on_the_newer() {
    // Acceptance 4 (the pure part): infra exported first; apps' export says 8080.
    let mut v = web_exported_by_infra();
    export(
        &mut v,
        "apps",
        "demo/web",
        20,
        false,
        vec![port("http", 8080)],
    );
    let d = desired(
        &v,
        "apps",
        &local(&[("demo/web", "v1alpha1")], &[("demo/web", "ClusterIP")]),
    );
    let import = &d.imports[&("demo".to_owned(), "web".to_owned())].import;
    assert_eq!(
        import.ports,
        vec![ImportPort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into()
        }]
    );
    assert_eq!(import.clusters, ["apps", "infra"]);
    assert_eq!(
        condition(&d, "demo/web", "Conflict"),
        (
            "True".to_owned(),
            "PortConflict".to_owned(),
            r#"using the oldest export's (infra) where exports disagree: PortConflict: port "http": 8080/TCP in apps, 80/TCP in infra (exported first)"#.to_owned()
        )
    );
    // The winner sees the same conflict on its export (reported on every export).
    let d = desired(
        &v,
        "infra",
        &local(&[("demo/web", "v1beta1")], &[("demo/web", "ClusterIP")]),
    );
    assert_eq!(condition(&d, "demo/web", "Conflict").1, "PortConflict");
}

#[test]
fn an_export_without_a_valid_service_is_not_valid() {
    let v = view();
    let d = desired(
        &v,
        "apps",
        &local(
            &[("demo/none", "v1beta1"), ("demo/ext", "v1beta1")],
            &[("demo/ext", "ExternalName")],
        ),
    );
    assert_eq!(condition(&d, "demo/none", "Valid").1, "NoService");
    assert_eq!(condition(&d, "demo/ext", "Valid").1, "InvalidServiceType");
    assert_eq!(
        condition(&d, "demo/ext", "Ready"),
        (
            "False".into(),
            "Failed".into(),
            "the export is not valid".into()
        )
    );
    assert!(d.imports.is_empty());
    // A valid export not in the store yet is pending.
    let d = desired(
        &v,
        "apps",
        &local(&[("demo/web", "v1beta1")], &[("demo/web", "ClusterIP")]),
    );
    assert_eq!(condition(&d, "demo/web", "Ready").1, "Pending");
}

#[test]
fn headless_imports_have_a_labelled_slice_per_cluster_and_no_address() {
    let mut v = view();
    export(&mut v, "infra", "demo/db", 10, true, vec![port("pg", 5432)]);
    export(&mut v, "apps", "demo/db", 20, true, vec![port("pg", 5432)]);
    for (cluster, ip, host) in [("infra", "10.2.0.7", "db-0"), ("apps", "10.1.0.7", "")] {
        v.slices.insert(
            (cluster.into(), "demo".into(), "db".into(), "s".into()),
            EndpointsRecord {
                schema: SCHEMA,
                ports: vec![port("pg", 5432)],
                endpoints: vec![Endpoint {
                    addresses: vec![address_bytes(ip.parse().unwrap())],
                    ready: true,
                    serving: true,
                    hostname: host.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
    }
    let d = desired(&v, "apps", &Local::default());
    let import = &d.imports[&("demo".to_owned(), "db".to_owned())];
    assert_eq!(import.ip, None);
    assert_eq!(
        import_object("demo", "db", import, "v1beta1")["spec"].get("ips"),
        None
    );
    let names: Vec<&String> = d.slices.keys().map(|(_, n)| n).collect();
    assert_eq!(names, ["db-apps", "db-infra"]);
    let slice = slice_object(
        "demo",
        "db-infra",
        &d.slices[&("demo".to_owned(), "db-infra".to_owned())],
    );
    assert_eq!(
        slice["metadata"]["labels"]["multicluster.kubernetes.io/service-name"],
        "db"
    );
    assert_eq!(
        slice["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"],
        "infra"
    );
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        MANAGED_BY
    );
    assert_eq!(slice["endpoints"][0]["hostname"], "db-0");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "10.2.0.7");
}

#[test]
fn imports_go_only_to_namespaces_that_exist() {
    let mut v = web_exported_by_infra();
    export(
        &mut v,
        "infra",
        "prod/web",
        10,
        false,
        vec![port("http", 80)],
    );
    let l = Local {
        namespaces: Some(BTreeSet::from(["prod".to_owned()])),
        ..Local::default()
    };
    let d = desired(&v, "apps", &l);
    let keys: Vec<_> = d.imports.keys().collect();
    assert_eq!(keys, [&("prod".to_owned(), "web".to_owned())]);
}

#[test]
fn a_condition_keeps_its_transition_time_until_it_changes() {
    let c = |status: &'static str| Condition {
        type_: "Ready",
        status,
        reason: "Exported".into(),
        message: "m".into(),
    };
    let first = export_status(&[c("True")], None, "2026-12-07T10:00:00Z");
    let again = export_status(&[c("True")], Some(&first), "2026-12-07T11:00:00Z");
    assert_eq!(
        again["conditions"][0]["lastTransitionTime"],
        "2026-12-07T10:00:00Z"
    );
    let changed = export_status(&[c("False")], Some(&again), "2026-12-07T12:00:00Z");
    assert_eq!(
        changed["conditions"][0]["lastTransitionTime"],
        "2026-12-07T12:00:00Z"
    );
}
