use super::*;

#[test]
fn identities_carry_the_cluster_id_in_the_high_bits() {
    assert_eq!(identity(7, 256), 0x0007_0100);
    assert_eq!(identity(65535, 1), 0xffff_0001);
}

#[test]
fn cidrs_contain_what_they_should() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(cidr_contains("10.1.2.0/24", ip("10.1.2.255")));
    assert!(!cidr_contains("10.1.2.0/24", ip("10.1.3.0")));
    assert!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")));
    assert!(cidr_contains("fd00:1::/64", ip("fd00:1::5")));
    assert!(!cidr_contains("fd00:1::/64", ip("fd00:2::5")));
    assert!(!cidr_contains("10.1.2.0/24", ip("fd00::1")));
    assert!(!cidr_contains("10.1.2.0/33", ip("10.1.2.1")));
    assert!(!cidr_contains("garbage", ip("10.1.2.1")));
}

#[test]
fn tables_index_from_one_and_zero_means_none() {
    let mut t = Vec::new();
    assert_eq!(index_of(&mut t, Some("a")), 1);
    assert_eq!(index_of(&mut t, Some("b")), 2);
    assert_eq!(index_of(&mut t, Some("a")), 1);
    assert_eq!(index_of(&mut t, None), 0);
    assert_eq!(index_of(&mut t, Some("")), 0);
    assert_eq!(t, ["a", "b"]);
}

#[test]
fn large_slices_are_split_into_keys_of_at_most_100() {
    let mut objects = Objects::default();
    let endpoints: String = (0..250)
        .map(|i| format!("  - addresses: [\"10.1.{}.{}\"]\n", i / 200, i % 200 + 1))
        .collect();
    objects
        .add_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\nspec: {{selector: {{app: big}}, clusterIP: 10.96.0.5}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-abc\n  namespace: default\n  labels: {{kubernetes.io/service-name: big}}\naddressType: IPv4\nendpoints:\n{endpoints}"
        ))
        .unwrap();
    let d = desired(
        &Settings {
            cluster: "apps".into(),
            cluster_id: 1,
        },
        &objects,
    );
    let sizes: Vec<(String, usize)> = d
        .records
        .iter()
        .filter_map(|(k, r)| match r {
            Record::Endpoints(e) => Some((k.to_string(), e.endpoints.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        sizes,
        [
            ("mesh/v1/apps/endpoints/default/big/big-abc".to_owned(), 100),
            (
                "mesh/v1/apps/endpoints/default/big/big-abc.1".to_owned(),
                100
            ),
            (
                "mesh/v1/apps/endpoints/default/big/big-abc.2".to_owned(),
                50
            ),
        ]
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn slices_are_published_for_shared_or_global_services_only() {
    let mut objects = Objects::default();
    let service = |name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\nspec: {{selector: {{app: {name}}}, clusterIP: 10.96.0.5}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-abc\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nendpoints:\n  - addresses: [\"10.1.0.1\"]\n---\n"
        )
    };
    let yaml = [
        service("plain", ""),
        // Global but not shared: its own cluster's agents need its backends.
        service(
            "private",
            "mesh.raftmesh.io/global: \"true\", mesh.raftmesh.io/shared: \"false\"",
        ),
        service("hidden", "mesh.raftmesh.io/shared: \"false\""),
    ]
    .concat();
    objects.add_yaml(&yaml).unwrap();
    let d = desired(
        &Settings {
            cluster: "apps".into(),
            cluster_id: 1,
        },
        &objects,
    );
    let slices: Vec<String> = d
        .records
        .keys()
        .filter(|k| matches!(k, Key::Endpoints { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        slices,
        [
            "mesh/v1/apps/endpoints/default/plain/plain-abc",
            "mesh/v1/apps/endpoints/default/private/private-abc",
        ]
    );
}

#[test]
fn a_service_export_makes_the_service_exported_global_and_shared() {
    let mut objects = Objects::default();
    let taken = objects
        .add_yaml(
            r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations: {mesh.raftmesh.io/global: "false", mesh.raftmesh.io/shared: "false"}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.9
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  internalTrafficPolicy: Local
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: unexported, namespace: demo}
spec: {selector: {app: web}, clusterIP: 10.96.0.10, internalTrafficPolicy: Local, ports: [{port: 80}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: demo, creationTimestamp: "2026-12-01T10:00:00Z"}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: web, namespace: demo, creationTimestamp: "2026-12-01T09:00:00Z"}
---
apiVersion: multicluster.x-k8s.io/v2
kind: ServiceExport
metadata: {name: other, namespace: demo}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {selector: {app: db}, clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: db, namespace: demo}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: demo
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- {addresses: ["10.1.0.7"], hostname: db-0}
- {addresses: ["10.1.0.8"]}
"#,
        )
        .unwrap();
    assert_eq!(taken, 7, "an unknown MCS version is not taken");
    assert_eq!(objects.exports[0].version, "v1alpha1");
    assert_eq!(objects.exports[1].version, "v1beta1");
    let d = desired(
        &Settings {
            cluster: "apps".into(),
            cluster_id: 1,
        },
        &objects,
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let service = |name: &str| match &d.records[&Key::Service {
        cluster: "apps".into(),
        namespace: "demo".into(),
        name: name.into(),
    }] {
        Record::Service(s) => s.clone(),
        other => panic!("{other:?}"),
    };
    let web = service("web");
    assert!(web.exported && web.global && web.shared, "{web:?}");
    // The earlier of the two versions' objects (one export listed twice).
    assert_eq!(web.export_created, 1_796_115_600); // 2026-12-01T09:00:00Z
    assert!(web.client_ip_affinity && !web.headless);
    assert_eq!(web.affinity_timeout, 600);
    assert_eq!(
        (&*web.internal_traffic_policy, &*web.traffic_distribution),
        ("Local", "PreferClose")
    );
    let unexported = service("unexported");
    assert!(!unexported.exported);
    assert_eq!(
        unexported.internal_traffic_policy, "",
        "only imports read it: an unexported service's record keeps its bytes"
    );
    let db = service("db");
    assert!(db.exported && db.headless && db.cluster_ips.is_empty());
    assert_eq!(db.export_created, 0, "no creationTimestamp in the manifest");
    let Record::Endpoints(slice) = &d.records[&Key::Endpoints {
        cluster: "apps".into(),
        namespace: "demo".into(),
        service: "db".into(),
        slice: "db-1".into(),
    }] else {
        panic!()
    };
    let hostnames: Vec<&str> = slice
        .endpoints
        .iter()
        .map(|e| e.hostname.as_str())
        .collect();
    assert_eq!(hostnames, ["db-0", ""]);
}
