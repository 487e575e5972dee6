//! Acceptance (issue 5, points 2 and 5): a 3-member cluster started with `--manifests-dir`
//! publishes the manifests' records and the `synced/` markers; adding, changing and deleting
//! a manifest adds, changes and removes the matching keys; a restart with unchanged manifests
//! writes nothing (checked by the store's revision).
//!
//! The expected keys are derived by hand from the fixture's manifests ([`EXPECTED_KEYS`]), not
//! read from `expected.json`: the publisher golden of `t70_publish_golden` would make a wrong
//! golden, blessed once, pass both tests.
//!
//! raftmesh only (etcd does not publish anything).

#[path = "support/util.rs"]
mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{Client, GetOptions};
use mesh_api::{Key, Record};
use testkit::localcluster::Cluster;
use util::{
    connect, current_revision, eventually, flavor, metric_opt, publishing_spec, raftmesh_only,
    restart_together, scrape_metrics,
};

/// Bound on the publisher noticing a change (it polls every second).
const PATIENCE: Duration = Duration::from_secs(20);

const CART: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {selector: {app: cart}, clusterIP: 10.96.10.30, ports: [{port: 80}]}\n";

/// Every key `tests/fixtures/publish/manifests.yaml` publishes as cluster `apps` (id 7) but
/// the identities allocated for its pods (see [`POD_IDENTITIES`]), each with what gives it.
const EXPECTED_KEYS: &[&str] = &[
    // The cluster record, from the flags (--cluster-name apps --cluster-id 7), with the Nodes'
    // pod CIDRs.
    "mesh/v1/apps/cluster",
    // Node node-a.
    "mesh/v1/apps/nodes/node-a",
    // Node node-b.
    "mesh/v1/apps/nodes/node-b",
    // The eight reserved identities every cluster publishes, numbered 7 << 16 | 1..=8
    // (reserved:host, world, unmanaged, health, init, remote-node, kube-apiserver, ingress).
    "mesh/v1/apps/identities/458753",
    "mesh/v1/apps/identities/458754",
    "mesh/v1/apps/identities/458755",
    "mesh/v1/apps/identities/458756",
    "mesh/v1/apps/identities/458757",
    "mesh/v1/apps/identities/458758",
    "mesh/v1/apps/identities/458759",
    "mesh/v1/apps/identities/458760",
    // Pod shop/web-7d4b9c-x2x7q (Running on node-a, inside 10.1.1.0/24).
    "mesh/v1/apps/ipcache/10.1.1.10",
    // Pod shop/web-7d4b9c-k9p2m (Running on node-b, inside 10.1.2.0/24).
    "mesh/v1/apps/ipcache/10.1.2.11",
    // Pod shop/db-0 (Running on node-b).
    "mesh/v1/apps/ipcache/10.1.2.20",
    // No ipcache key: kube-system/kube-proxy-abcde (host network), shop/migrate-xyz
    // (Succeeded), shop/stray (10.9.9.9 is outside node-a's CIDR: skipped as
    // pod_ip_outside_node).
    //
    // Service shop/web (mesh.raftmesh.io/global).
    "mesh/v1/apps/services/shop/web",
    // Service shop/db (service.cilium.io/global, shared: false).
    "mesh/v1/apps/services/shop/db",
    // Service shop/db-headless (clusterIP None, a selector).
    "mesh/v1/apps/services/shop/db-headless",
    // No service key: shop/legacy (no selector and no EndpointSlice: skipped as
    // service_without_backends), shop/docs (ExternalName).
    //
    // EndpointSlice shop/web-h7k2p of the global Service web.
    "mesh/v1/apps/endpoints/shop/web/web-h7k2p",
    // EndpointSlice shop/db-q8w2z of the global Service db (global publishes its slices even
    // with shared: false).
    "mesh/v1/apps/endpoints/shop/db/db-q8w2z",
    // No endpoints key: shop/gone-abcde (names no Service: skipped as orphan_slice).
    //
    // MeshPolicy shop/db-from-infra.
    "mesh/v1/apps/policies/shop/db-from-infra",
    // No key: the Deployment shop/web (not a kind the publisher reads).
    //
    // The initial-sync markers, one per synced kind, written once the kind is published.
    "mesh/v1/apps/synced/nodes",
    "mesh/v1/apps/synced/identities",
    "mesh/v1/apps/synced/ipcache",
    "mesh/v1/apps/synced/services",
    "mesh/v1/apps/synced/endpoints",
    "mesh/v1/apps/synced/policies",
];

/// The label sets of the identities allocated for the manifests' pods with an ipcache key.
/// Their ids come from probing, so the test checks these records' labels, not their keys.
const POD_IDENTITIES: [&[&str]; 2] = [
    // Pod shop/db-0 (statefulset.kubernetes.io/pod-name and controller-revision-hash are
    // ignored).
    &["app=db", "io.kubernetes.pod.namespace=shop"],
    // Pods shop/web-7d4b9c-x2x7q and shop/web-7d4b9c-k9p2m: one identity, as their labels
    // differ only in pod-template-hash, which is ignored.
    &["app=web", "io.kubernetes.pod.namespace=shop", "tier=front"],
];

async fn keys(client: &mut Client) -> anyhow::Result<BTreeSet<String>> {
    let resp = client
        .get(
            "mesh/v1/apps/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}

async fn record(client: &mut Client, key: &str) -> anyhow::Result<Record> {
    let resp = client.get(key, None).await?;
    let kv = resp.kvs().first().with_context(|| format!("no {key}"))?;
    Ok(Record::decode_at(key, kv.value())?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_are_published_kept_in_sync_and_not_rewritten_after_a_restart() {
    raftmesh_only("publishing is raftmesh's; nothing to check against etcd");
    let manifests = tempfile::tempdir().unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/publish/manifests.yaml");
    std::fs::copy(&fixture, manifests.path().join("cluster.yaml")).unwrap();
    let mut spec = publishing_spec(manifests.path(), &[]);
    spec.metrics = true;
    let mut cluster = Cluster::start(flavor(), spec).await.unwrap();
    let mut client = connect(&cluster.client_url(0)).await.unwrap();

    let published = eventually(
        "the manifests are published with their markers",
        PATIENCE,
        async || {
            let keys = keys(&mut client).await?;
            let markers = keys.iter().filter(|k| k.contains("/synced/")).count();
            ensure!(markers == 6, "{markers} synced markers");
            Ok(keys)
        },
    )
    .await;
    // Every key is expected but the pods' identities, which are then checked by their labels:
    // one identity per label set, none missing, none extra.
    let expected: BTreeSet<String> = EXPECTED_KEYS.iter().map(|k| (*k).to_owned()).collect();
    let allocated: Vec<&String> = published
        .iter()
        .filter(|k| k.contains("/identities/") && !expected.contains(*k))
        .collect();
    let rest: BTreeSet<String> = published
        .iter()
        .filter(|k| !allocated.contains(k))
        .cloned()
        .collect();
    assert_eq!(
        rest, expected,
        "the published keys (left), the manifests' (right)"
    );
    let mut label_sets = Vec::new();
    for key in allocated {
        let Ok(Key::Identity { id, .. }) = key.parse::<Key>() else {
            panic!("{key} is not an identity key");
        };
        assert!(
            mesh_api::identity::cluster_of(id) == 7 && !mesh_api::identity::is_reserved(id),
            "{key}: not an allocated identity of cluster 7"
        );
        let Record::Identity(identity) = record(&mut client, key).await.unwrap() else {
            panic!("{key} is not an identity record");
        };
        label_sets.push(identity.labels);
    }
    label_sets.sort();
    let pod_identities: Vec<Vec<String>> = POD_IDENTITIES
        .iter()
        .map(|set| set.iter().map(|l| (*l).to_owned()).collect())
        .collect();
    assert_eq!(label_sets, pod_identities, "the pods' identities");
    let Record::Cluster(c) = record(&mut client, "mesh/v1/apps/cluster").await.unwrap() else {
        panic!("not a cluster record");
    };
    assert_eq!(
        (c.name.as_str(), c.id, c.pod_cidrs.clone()),
        (
            "apps",
            7,
            vec!["10.1.1.0/24".to_owned(), "10.1.2.0/24".to_owned()]
        )
    );

    // The skipped objects are counted by the member that published.
    let skipped = eventually("the leader reports what it skipped", PATIENCE, async || {
        let mut sum = [0.0; 4];
        for i in 0..3 {
            let text = scrape_metrics(&cluster, i).await?;
            for (slot, series) in [
                "raftmesh_publish_leading",
                "raftmesh_publish_skipped_objects{reason=\"orphan_slice\"}",
                "raftmesh_publish_skipped_objects{reason=\"pod_ip_outside_node\"}",
                "raftmesh_publish_skipped_objects{reason=\"service_without_backends\"}",
            ]
            .iter()
            .enumerate()
            {
                // A member that never published has no sample for a reason; the sums must
                // still come to one leader and one skip each.
                sum[slot] += metric_opt(&text, series).unwrap_or(0.0);
            }
        }
        ensure!(sum[0] == 1.0, "{} members lead the publishing", sum[0]);
        // The first pass's counts are recorded when it returns, just after its last write.
        ensure!(sum[1..] != [0.0; 3], "no pass recorded yet");
        Ok(sum)
    })
    .await;
    assert_eq!(skipped[1..], [1.0, 1.0, 1.0]);

    // Add a manifest.
    std::fs::write(manifests.path().join("cart.yaml"), CART).unwrap();
    let cart = Key::Service {
        cluster: "apps".into(),
        namespace: "shop".into(),
        name: "cart".into(),
    }
    .to_string();
    eventually("the added Service is published", PATIENCE, async || {
        ensure!(keys(&mut client).await?.contains(&cart));
        Ok(())
    })
    .await;

    // Change one.
    let text = std::fs::read_to_string(manifests.path().join("cluster.yaml")).unwrap();
    std::fs::write(
        manifests.path().join("cluster.yaml"),
        text.replace(
            "mesh.raftmesh.io/affinity: local",
            "mesh.raftmesh.io/affinity: remote",
        ),
    )
    .unwrap();
    eventually(
        "the changed annotation is published",
        PATIENCE,
        async || {
            let Record::Service(web) =
                record(&mut client, "mesh/v1/apps/services/shop/web").await?
            else {
                anyhow::bail!("not a service");
            };
            ensure!(
                web.affinity == mesh_api::records::Affinity::Remote as i32,
                "affinity {}",
                web.affinity
            );
            Ok(())
        },
    )
    .await;

    // Delete one.
    std::fs::remove_file(manifests.path().join("cart.yaml")).unwrap();
    eventually("the deleted Service is removed", PATIENCE, async || {
        ensure!(!keys(&mut client).await?.contains(&cart));
        Ok(())
    })
    .await;

    // A restart with unchanged manifests writes nothing: after it, adding one Service moves
    // the revision by exactly one (that put), proving the new leader's publisher ran its
    // initial pass without rewriting anything.
    let before = current_revision(&mut client).await.unwrap();
    restart_together(&mut cluster, &[0, 1, 2]).await.unwrap();
    let mut client = connect(&cluster.client_url(1)).await.unwrap();
    std::fs::write(manifests.path().join("cart.yaml"), CART).unwrap();
    eventually(
        "the publisher runs after the restart",
        PATIENCE,
        async || {
            ensure!(keys(&mut client).await?.contains(&cart));
            Ok(())
        },
    )
    .await;
    assert_eq!(
        current_revision(&mut client).await.unwrap(),
        before + 1,
        "the restart rewrote records"
    );
}
