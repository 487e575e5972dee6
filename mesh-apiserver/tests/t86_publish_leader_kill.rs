//! Acceptance (issue 5, point 3): kill -9 of the leader in the middle of a large initial sync
//! (1,000 services, 10,000 pods): the new leader completes it, every label set has exactly
//! one identity, and no key is left behind.
//!
//! raftmesh only.

/// The benchmarks' synthetic clusters (test data, kept out of the product), by path: this
/// crate does not depend on `bench`.
#[path = "../../bench/src/synthetic.rs"]
mod synthetic;
#[path = "support/util.rs"]
mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::ensure;
use etcd_client::{Client, GetOptions};
use mesh_api::Record;
use mesh_apiserver::publish::convert::{Settings, desired};
use mesh_apiserver::publish::objects::Objects;
use synthetic::Shape;
use testkit::localcluster::Cluster;
use tokio::time::Instant;
use util::{connect, eventually, flavor, publishing_spec, raftmesh_only};

const SERVICES: usize = 1_000;
const PODS: usize = 10_000;
const NODES: usize = 10;

async fn count(client: &mut Client, prefix: &str) -> anyhow::Result<usize> {
    let r = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    Ok(r.count() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_completes_an_interrupted_initial_sync() {
    raftmesh_only("publishing is raftmesh's; nothing to check against etcd");
    let shape = Shape {
        nodes: NODES,
        services: SERVICES,
        pods: PODS,
    };
    let yaml = shape.manifests();
    let mut objects = Objects::default();
    assert_eq!(objects.add_yaml(&yaml).unwrap(), shape.objects());
    let settings = Settings {
        cluster: "apps".into(),
        cluster_id: 7,
    };
    let want = desired(&settings, &objects);
    assert!(
        want.problems.is_empty(),
        "{:?}",
        &want.problems[..want.problems.len().min(3)]
    );

    // The manifests are there from the start: the first leader's first pass is the initial
    // sync (a publisher starts as soon as its member leads).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), &yaml).unwrap();
    let mut cluster = Cluster::start(flavor(), publishing_spec(dir.path(), &[]))
        .await
        .unwrap();
    let leader = cluster.leader().await.unwrap();
    let survivor = (leader + 1) % 3;
    let mut client = connect(&cluster.client_url(survivor)).await.unwrap();

    // Kill the leader once the sync has written a good part but not its markers (which come
    // last), i.e. in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        assert!(Instant::now() < deadline, "the initial sync did not start");
        // A read may time out while the sync loads the machine: just read again.
        let (Ok(written), Ok(markers)) = (
            count(&mut client, "mesh/v1/apps/").await,
            count(&mut client, "mesh/v1/apps/synced/").await,
        ) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        assert_eq!(
            markers, 0,
            "the initial sync finished before it could be interrupted ({written} keys)"
        );
        // Past the 8 reserved identities: into the allocation or the records.
        if written > 100 {
            cluster.kill(leader);
            break written;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!("killed the leader with {at_kill} keys written");

    eventually(
        "the new leader completes the sync",
        Duration::from_secs(180),
        async || {
            let markers = count(&mut client, "mesh/v1/apps/synced/").await?;
            ensure!(markers == 6, "{markers} markers");
            Ok(())
        },
    )
    .await;

    let all = client
        .get("mesh/v1/apps/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut identities: BTreeMap<Vec<String>, Vec<u32>> = BTreeMap::new();
    let mut others = BTreeSet::new();
    for kv in all.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match Record::decode_at(&key, kv.value()).unwrap() {
            (mesh_api::Key::Identity { id, .. }, Record::Identity(r)) => {
                if !r.labels.iter().any(|l| l.starts_with("reserved:")) {
                    identities.entry(r.labels).or_default().push(id);
                }
            }
            _ => {
                others.insert(key);
            }
        }
    }
    assert_eq!(identities.len(), SERVICES, "one identity per label set");
    let duplicated: Vec<_> = identities
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .collect();
    assert!(
        duplicated.is_empty(),
        "label sets with several ids: {duplicated:?}"
    );
    assert_eq!(
        identities.keys().cloned().collect::<BTreeSet<_>>(),
        want.label_sets()
    );

    let mut expected: BTreeSet<String> = want.records.keys().map(ToString::to_string).collect();
    expected.extend(
        want.workloads
            .iter()
            .map(|w| format!("mesh/v1/apps/ipcache/{}", w.ip)),
    );
    expected.insert("mesh/v1/apps/cluster".into());
    expected.extend(
        [
            "nodes",
            "identities",
            "ipcache",
            "services",
            "endpoints",
            "policies",
        ]
        .map(|k| format!("mesh/v1/apps/synced/{k}")),
    );
    assert_eq!(others.len(), expected.len());
    assert_eq!(others, expected, "a key is missing or left behind");
}
