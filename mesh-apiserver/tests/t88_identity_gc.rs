//! Identities (issue 5): every cluster has its reserved identities, carrying its cluster id;
//! an identity no workload uses is kept for the grace period, then deleted, and the others
//! stay; a connected cluster that claims the same cluster id is reported.
//!
//! raftmesh only.

#[path = "support/util.rs"]
mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use etcd_client::{Client, GetOptions};
use mesh_api::{Key, Record};
use testkit::localcluster::Cluster;
use util::{
    connect, eventually, flavor, metric_opt, publishing_spec, raftmesh_only, scrape_metrics,
};

const PATIENCE: Duration = Duration::from_secs(30);

fn pod(name: &str, app: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{nodeName: node-a}}\nstatus: {{phase: Running, hostIP: 172.18.0.2, podIP: {ip}}}\n"
    )
}

/// Stored identities: labels → id.
async fn identities(client: &mut Client) -> anyhow::Result<BTreeMap<Vec<String>, u32>> {
    let resp = client
        .get(
            "mesh/v1/apps/identities/",
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut out = BTreeMap::new();
    for kv in resp.kvs() {
        if let (Key::Identity { id, .. }, Record::Identity(r)) =
            Record::decode_at(&String::from_utf8_lossy(kv.key()), kv.value())?
        {
            out.insert(r.labels, id);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_identities_stay_and_unused_ones_go_after_the_grace_period() {
    raftmesh_only("publishing is raftmesh's; nothing to check against etcd");
    let dir = tempfile::tempdir().unwrap();
    let node =
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {podCIDR: 10.1.1.0/24}\n";
    std::fs::write(
        dir.path().join("a.yaml"),
        format!("{node}{}", pod("a-1", "a", "10.1.1.10")),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.yaml"), pod("b-1", "b", "10.1.1.11")).unwrap();
    let mut spec = publishing_spec(dir.path(), &["--identity-gc-grace", "3"]);
    spec.metrics = true;
    let cluster = Cluster::start(flavor(), spec).await.unwrap();
    let mut client = connect(&cluster.client_url(0)).await.unwrap();

    let b_labels = vec![
        "app=b".to_owned(),
        "io.kubernetes.pod.namespace=shop".to_owned(),
    ];
    let first = eventually("both workloads have identities", PATIENCE, async || {
        let ids = identities(&mut client).await?;
        ensure!(ids.len() == 10, "{} identities", ids.len());
        Ok(ids)
    })
    .await;
    assert_eq!(first[&vec!["reserved:host".to_owned()]], 7 << 16 | 1);
    assert_eq!(first[&vec!["reserved:remote-node".to_owned()]], 7 << 16 | 6);

    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    eventually("b's ipcache entry goes at once", PATIENCE, async || {
        let resp = client.get("mesh/v1/apps/ipcache/10.1.1.11", None).await?;
        ensure!(resp.kvs().is_empty());
        Ok(())
    })
    .await;
    assert_eq!(
        identities(&mut client).await.unwrap().get(&b_labels),
        first.get(&b_labels),
        "b's identity outlives its last pod by the grace period"
    );

    let after = eventually(
        "b's identity goes after the grace period",
        PATIENCE,
        async || {
            let ids = identities(&mut client).await?;
            ensure!(!ids.contains_key(&b_labels));
            Ok(ids)
        },
    )
    .await;
    let mut expected = first.clone();
    expected.remove(&b_labels);
    assert_eq!(after, expected, "only b's identity went");

    // A connected cluster claiming the same cluster id is reported (and changes nothing here).
    client
        .put("mesh/config/remotes/infra", "connection", None)
        .await
        .unwrap();
    let infra = Record::Cluster(mesh_api::records::ClusterRecord {
        schema: mesh_api::SCHEMA,
        name: "infra".into(),
        id: 7,
        ..Default::default()
    });
    client
        .put("mesh/v1/infra/cluster", infra.encode(), None)
        .await
        .unwrap();
    std::fs::write(dir.path().join("c.yaml"), pod("c-1", "c", "10.1.1.12")).unwrap();
    eventually(
        "the duplicate cluster id is reported",
        PATIENCE,
        async || {
            let mut reported = 0.0;
            for i in 0..3 {
                let text = scrape_metrics(&cluster, i).await?;
                // Only the member that published has the sample; the sum must come to one.
                reported += metric_opt(
                    &text,
                    "raftmesh_publish_skipped_objects{reason=\"duplicate_cluster_id\"}",
                )
                .unwrap_or(0.0);
            }
            ensure!(reported == 1.0, "reported {reported} times");
            Ok(())
        },
    )
    .await;
}
