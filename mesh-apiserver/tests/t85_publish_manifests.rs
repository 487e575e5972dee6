//! Acceptance (issue 5, points 2 and 5): a 3-member cluster started with `--manifests-dir`
//! publishes the manifests' records and the `synced/` markers; adding, changing and deleting
//! a manifest adds, changes and removes the matching keys; a restart with unchanged manifests
//! writes nothing (checked by the store's revision).
//!
//! raftmesh only (etcd does not publish anything).

#[path = "support/util.rs"]
mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{Client, GetOptions};
use localcluster::Cluster;
use mesh_api::{Key, Record};
use util::{
    connect, current_revision, eventually, flavor, metric_opt, publishing_spec, raftmesh_only,
    restart_together, scrape_metrics,
};

/// Bound on the publisher noticing a change (it polls every second).
const PATIENCE: Duration = Duration::from_secs(20);

const CART: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {selector: {app: cart}, clusterIP: 10.96.10.30, ports: [{port: 80}]}\n";

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

    // The golden records (identities get their ids by probing, so only their count is fixed).
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.with_file_name("expected.json")).unwrap(),
    )
    .unwrap();
    let golden: BTreeSet<String> = expected["records"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.contains("/identities/"))
        .cloned()
        .collect();
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
    let identities = published
        .iter()
        .filter(|k| k.contains("/identities/"))
        .count();
    let rest: BTreeSet<String> = published
        .iter()
        .filter(|k| {
            !k.contains("/identities/") && !k.contains("/synced/") && !k.ends_with("/cluster")
        })
        .cloned()
        .collect();
    assert_eq!(rest, golden);
    assert_eq!(
        identities,
        2 + 8,
        "two label sets and the eight reserved identities"
    );
    assert!(published.contains("mesh/v1/apps/cluster"));
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
