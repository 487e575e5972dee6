//! Both sinks on the same desired objects: a port conflict (infra exported first, apps' export
//! disagrees), seen from apps; and a headless import with a slice from infra.

use mesh_api::SCHEMA;
use mesh_api::codec::address_bytes;
use mesh_api::records::{ClusterRecord, Endpoint, EndpointsRecord, Port, ServiceRecord};
use serde_json::json;
use testkit::kube::FakeApi;

use super::*;
use crate::mcs::desired::{Local, LocalExport, desired};
use crate::mcs::view::View;

fn service(port: u32, created: i64, headless: bool) -> ServiceRecord {
    ServiceRecord {
        schema: SCHEMA,
        ports: vec![Port {
            name: "http".into(),
            port,
            protocol: "TCP".into(),
        }],
        global: true,
        shared: true,
        exported: true,
        export_created: created,
        headless,
        ..Default::default()
    }
}

/// infra exported demo/web (port 80) first, apps later (8080); infra exports headless
/// demo/db with one endpoint.
fn view() -> View {
    let mut v = View::default();
    v.clusters.insert(
        "apps".into(),
        ClusterRecord {
            schema: SCHEMA,
            name: "apps".into(),
            clusterset_cidr: "10.254.0.0/16".into(),
            ..Default::default()
        },
    );
    let key = |c: &str, n: &str| (c.to_owned(), "demo".to_owned(), n.to_owned());
    v.services
        .insert(key("infra", "web"), service(80, 10, false));
    v.services
        .insert(key("apps", "web"), service(8080, 20, false));
    v.services
        .insert(key("infra", "db"), service(5432, 10, true));
    v.slices.insert(
        ("infra".into(), "demo".into(), "db".into(), "x".into()),
        EndpointsRecord {
            schema: SCHEMA,
            endpoints: vec![Endpoint {
                addresses: vec![address_bytes("10.2.0.7".parse().unwrap())],
                ready: true,
                hostname: "db-0".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    v
}

fn local(version: &str) -> Local {
    Local {
        exports: vec![LocalExport {
            namespace: "demo".into(),
            name: "web".into(),
            version: version.into(),
        }],
        services: [(
            ("demo".to_owned(), "web".to_owned()),
            "ClusterIP".to_owned(),
        )]
        .into(),
        namespaces: None,
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

#[test]
fn the_manifests_sink_writes_imports_slices_and_conditions_and_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mcs");
    let mut sink = ManifestsSink::new(&out);
    let d = desired(&view(), "apps", &local("v1alpha1"));
    let w = sink.apply(&d).unwrap();
    assert_eq!((w.written, w.statuses), (2, 1));
    let read = |file: &str| parse_documents(&std::fs::read_to_string(out.join(file)).unwrap());
    let imports = read("serviceimports.yaml");
    let names: Vec<&str> = imports
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(
        imports[1]["spec"]["ports"][0]["port"], 80,
        "the oldest export's port"
    );
    assert_eq!(
        imports[1]["status"]["clusters"],
        json!([{"cluster": "apps"}, {"cluster": "infra"}])
    );
    let slices = read("endpointslices.yaml");
    assert_eq!(
        slices[0]["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"],
        "infra"
    );
    let statuses = read("serviceexports-status.yaml");
    assert_eq!(statuses[0]["apiVersion"], "multicluster.x-k8s.io/v1alpha1");
    let conflict = condition(&statuses[0]["status"], "Conflict");
    assert_eq!(
        (&conflict["status"], &conflict["reason"]),
        (&json!("True"), &json!("PortConflict"))
    );
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains(r#"port "http": 8080/TCP in apps, 80/TCP in infra (exported first)"#),
        "{conflict}"
    );
    // Nothing changed: nothing written.
    assert_eq!(sink.apply(&d).unwrap(), Writes::default());
    // apps' export agrees once it says 80: no conflict; the other conditions keep their time.
    let mut v = view();
    v.services.insert(
        ("apps".into(), "demo".into(), "web".into()),
        service(80, 20, false),
    );
    let valid_at = condition(&statuses[0]["status"], "Valid")["lastTransitionTime"].clone();
    sink.apply(&desired(&v, "apps", &local("v1alpha1")))
        .unwrap();
    let statuses = read("serviceexports-status.yaml");
    assert_eq!(
        condition(&statuses[0]["status"], "Conflict")["reason"],
        "NoConflicts"
    );
    assert_eq!(
        condition(&statuses[0]["status"], "Valid")["lastTransitionTime"],
        valid_at
    );
    // Nobody exports: no import, no slice.
    let empty = View::default();
    sink.apply(&desired(&empty, "apps", &Local::default()))
        .unwrap();
    assert!(read("serviceimports.yaml").is_empty() && read("endpointslices.yaml").is_empty());
}

const IMPORTS: &str = "/apis/multicluster.x-k8s.io/v1beta1/serviceimports";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const EXPORT: &str = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/demo/serviceexports/web";

fn fake() -> (FakeApi, kube::Client) {
    let api = FakeApi::default();
    let empty = json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []});
    api.put(IMPORTS, empty.clone());
    api.put(SLICES, empty);
    api.put(
        EXPORT,
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
               "metadata": {"name": "web", "namespace": "demo", "resourceVersion": "1"}}),
    );
    let url = api.serve();
    let config = kube::Config::new(url.parse().unwrap());
    (api, kube::Client::try_from(config).unwrap())
}

#[tokio::test]
async fn the_live_sink_creates_updates_and_deletes_only_what_changed() {
    // Acceptance 4 against a (fake) API server: the newer export's Conflict condition says why.
    let (api, client) = fake();
    let mut sink = LiveSink::new(client);
    let d = desired(&view(), "apps", &local("v1alpha1"));
    let w = sink.apply(&d).await.unwrap();
    assert_eq!((w.written, w.deleted), (3, 0), "two imports and a slice");
    let web = api.get("/apis/multicluster.x-k8s.io/v1beta1/namespaces/demo/serviceimports/web");
    assert_eq!(
        web["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        MANAGED_BY
    );
    assert_eq!(
        web["spec"]["ports"],
        json!([{"name": "http", "port": 80, "protocol": "TCP"}])
    );
    assert_eq!(
        web["status"]["clusters"],
        json!([{"cluster": "apps"}, {"cluster": "infra"}])
    );
    let slice = api.get("/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/db-infra");
    assert_eq!(
        slice["metadata"]["labels"]["multicluster.kubernetes.io/service-name"],
        "db"
    );
    let export = api.get(EXPORT);
    let conflict = condition(&export["status"], "Conflict");
    assert_eq!(conflict["reason"], "PortConflict");
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains("8080/TCP in apps"),
        "{conflict}"
    );
    assert!(
        api.take_writes()
            .iter()
            .any(|w| w == &format!("PUT {EXPORT}/status"))
    );
    // The same desired state again: not one request that writes.
    sink.apply(&d).await.unwrap();
    assert_eq!(api.take_writes(), Vec::<String>::new());
    // Unexported everywhere: the imports and the slice go.
    let w = sink
        .apply(&desired(&View::default(), "apps", &Local::default()))
        .await
        .unwrap();
    assert_eq!(w.deleted, 3);
    let mut writes = api.take_writes();
    writes.sort();
    assert_eq!(
        writes,
        [
            "DELETE /apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/db-infra",
            "DELETE /apis/multicluster.x-k8s.io/v1beta1/namespaces/demo/serviceimports/db",
            "DELETE /apis/multicluster.x-k8s.io/v1beta1/namespaces/demo/serviceimports/web",
        ]
    );
}

#[tokio::test]
async fn without_the_crd_the_live_sink_says_so() {
    let api = FakeApi::default();
    let url = api.serve();
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let mut sink = LiveSink::new(client);
    let e = sink.apply(&Desired::default()).await.unwrap_err();
    assert!(matches!(e, SinkError::NoCrd), "{e}");
}
