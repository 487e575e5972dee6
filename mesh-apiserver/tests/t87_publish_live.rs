//! The live Kubernetes source (issue 5, point 6). These need a Kubernetes API server
//! (in-cluster, or KUBECONFIG / ~/.kube/config) with the MeshPolicy CRD
//! (`deploy/helm/raftmesh/crds/meshpolicy.yaml`) and, for the ServiceExport test, the mcs-api
//! CRDs installed; run them with `cargo test -- --ignored`.
//! The conversion they feed is the one the directory source uses, covered by
//! `t70_publish_golden`; the CRD file's names are checked here without a cluster.

use std::path::Path;
use std::time::Duration;

use mesh_apiserver::publish::controller::{Config, Source, SourceConfig, pass};
use mesh_apiserver::publish::convert::{Settings, desired};
use mesh_apiserver::publish::live::{LiveSource, mesh_policy_resource};
use testkit::localcluster::{Cluster, Flavor, Spec};
use tokio::time::Instant;

async fn ready_source() -> LiveSource {
    let client = kube::Client::try_default()
        .await
        .expect("a Kubernetes API server");
    let live = LiveSource::start(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !live.ready() {
        assert!(
            Instant::now() < deadline,
            "the reflectors did not list every kind in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live
}

#[test]
fn the_crd_names_what_the_source_watches() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/raftmesh/crds/meshpolicy.yaml"),
    )
    .unwrap();
    let crd: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let ar = mesh_policy_resource();
    assert_eq!(crd["spec"]["group"].as_str(), Some(ar.group.as_str()));
    assert_eq!(
        crd["spec"]["names"]["plural"].as_str(),
        Some(ar.plural.as_str())
    );
    assert_eq!(
        crd["spec"]["names"]["kind"].as_str(),
        Some(ar.kind.as_str())
    );
    assert_eq!(
        crd["spec"]["versions"][0]["name"].as_str(),
        Some(ar.version.as_str())
    );
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn the_live_source_lists_every_kind() {
    let live = ready_source().await;
    let objects = live.objects();
    assert!(!objects.nodes.is_empty(), "a cluster has nodes");
    let d = desired(
        &Settings {
            cluster: "live".into(),
            cluster_id: 1,
        },
        &objects,
    );
    let nodes = d
        .records
        .keys()
        .filter(|k| k.kind() == Some(mesh_api::Kind::Node))
        .count();
    assert_eq!(nodes, objects.nodes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster"]
async fn the_live_source_publishes_into_a_store() {
    let live = ready_source().await;
    let node_count = live.objects().nodes.len();
    let server = Path::new(env!("CARGO_BIN_EXE_mesh-apiserver")).to_owned();
    let cluster = Cluster::start(Flavor::Raftmesh(server), Spec::with_members(3))
        .await
        .unwrap();
    let config = Config {
        identity_gc_grace: Duration::from_secs(900),
        settings: Settings {
            cluster: "live".into(),
            cluster_id: 1,
        },
        record: Default::default(),
        source: SourceConfig::Kubernetes,
    };
    let source = Source::Live(live);
    let mut client = cluster.client_for(0).await.unwrap();
    let report = pass(&mut client, &config, &source, &[], &mut Default::default())
        .await
        .unwrap();
    assert!(report.records.puts >= node_count);
    let nodes = client
        .get(
            "mesh/v1/live/nodes/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(nodes.count() as usize, node_count);
}

/// The live source reads the cluster's ServiceExports in every MCS version the cluster serves
/// (the mcs-api CRDs, `deploy/helm/raftmesh/crds/mcs-api.yaml`): the same `namespace/name`s
/// as a plain list of each version, and a version the cluster does not serve counts as none.
#[tokio::test]
#[ignore = "needs a cluster"]
async fn the_live_source_reads_service_exports_of_every_served_version() {
    use kube::api::{Api, DynamicObject, ListParams};
    use mesh_apiserver::publish::live::service_export_resource;
    use mesh_apiserver::publish::objects::MCS_VERSIONS;

    let live = ready_source().await;
    let client = kube::Client::try_default().await.unwrap();
    let mut listed = std::collections::BTreeSet::new();
    for version in MCS_VERSIONS {
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &service_export_resource(version));
        match api.list(&ListParams::default()).await {
            Ok(list) => listed.extend(list.items.into_iter().map(|e| {
                (
                    e.metadata.namespace.unwrap_or_default(),
                    e.metadata.name.unwrap_or_default(),
                )
            })),
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => panic!("listing ServiceExports {version}: {e}"),
        }
    }
    let read: std::collections::BTreeSet<(String, String)> = live
        .objects()
        .exports
        .iter()
        .map(|e| {
            (
                e.metadata.namespace.clone().unwrap_or_default(),
                e.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(read, listed);
}
