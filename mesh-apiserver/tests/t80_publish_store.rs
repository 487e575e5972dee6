//! Writing records (issue 5): identity allocation gives one id per label set however writers
//! race (acceptance 4), and a reconcile writes only what differs, so an unchanged state
//! costs zero writes (the mechanism behind acceptance 5).
//!
//! Runs against etcd too (`RAFTMESH_TEST_SERVER=etcd`): only the etcd API is used.

#[path = "support/util.rs"]
mod util;

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::GetOptions;
use mesh_apiserver::publish::store::{Changes, allocate, identities, reconcile};
use testkit::localcluster::{Cluster, Spec};
use util::{connect, current_revision, flavor};

fn label_sets(n: usize) -> BTreeSet<Vec<String>> {
    (0..n)
        .map(|i| {
            vec![
                format!("app=svc-{i}"),
                "io.kubernetes.pod.namespace=shop".to_owned(),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_give_each_label_set_one_id() {
    let cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .unwrap();
    let sets = label_sets(400);
    let mut tasks = Vec::new();
    for member in [0, 1] {
        let url = cluster.client_url(member);
        let sets = sets.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await.unwrap();
            allocate(&mut client, "apps", 7, &sets).await.unwrap()
        }));
    }
    let a = tasks.remove(0).await.unwrap();
    let b = tasks.remove(0).await.unwrap();
    assert_eq!(a, b, "both writers see the same id for every set");

    let mut client = connect(&cluster.client_url(2)).await.unwrap();
    let stored = identities(&mut client, "apps").await.unwrap();
    assert_eq!(stored, a, "the store holds exactly the ids handed out");
    let listed = client
        .get(
            "mesh/v1/apps/identities/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(
        listed.count() as usize,
        sets.len(),
        "one key per label set, no duplicates"
    );
    let ids: BTreeSet<u32> = a.values().copied().collect();
    assert_eq!(ids.len(), sets.len(), "no id is shared");
    assert!(
        ids.iter().all(|id| id >> 16 == 7 && id & 0xffff >= 256),
        "cluster id 7, no reserved ids"
    );

    // Asking again allocates nothing.
    let before = current_revision(&mut client).await.unwrap();
    assert_eq!(allocate(&mut client, "apps", 7, &sets).await.unwrap(), a);
    assert_eq!(current_revision(&mut client).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_writes_only_what_differs() {
    let cluster = Cluster::start(flavor(), Spec::with_members(3))
        .await
        .unwrap();
    let mut client = connect(&cluster.client_url(1)).await.unwrap();
    client
        .put("mesh/v1/apps/nodekeys/n1", "agent-owned", None)
        .await
        .unwrap();
    client
        .put("mesh/v1/apps/services/shop/stale", "old", None)
        .await
        .unwrap();
    let prefixes = vec![
        "mesh/v1/apps/services/".to_owned(),
        "mesh/v1/apps/nodes/".to_owned(),
    ];
    let mut desired: BTreeMap<Vec<u8>, Vec<u8>> = (0..300)
        .map(|i| {
            (
                format!("mesh/v1/apps/services/shop/s{i:03}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    desired.insert(b"mesh/v1/apps/nodes/node-a".to_vec(), b"node".to_vec());

    let first = reconcile(&mut client, &prefixes, &desired).await.unwrap();
    assert_eq!(
        first,
        Changes {
            puts: 301,
            deletes: 1,
            conflicts: 0
        }
    );
    let after_first = current_revision(&mut client).await.unwrap();

    let again = reconcile(&mut client, &prefixes, &desired).await.unwrap();
    assert_eq!(again, Changes::default());
    assert_eq!(
        current_revision(&mut client).await.unwrap(),
        after_first,
        "an unchanged state writes nothing"
    );

    desired.insert(
        b"mesh/v1/apps/services/shop/s007".to_vec(),
        b"changed".to_vec(),
    );
    desired.remove(b"mesh/v1/apps/services/shop/s100".as_slice());
    let third = reconcile(&mut client, &prefixes, &desired).await.unwrap();
    assert_eq!(
        third,
        Changes {
            puts: 1,
            deletes: 1,
            conflicts: 0
        }
    );

    let all = client
        .get("mesh/v1/apps/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let stored: BTreeMap<Vec<u8>, Vec<u8>> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    let mut expected = desired.clone();
    expected.insert(
        b"mesh/v1/apps/nodekeys/n1".to_vec(),
        b"agent-owned".to_vec(),
    );
    assert_eq!(stored, expected, "keys outside the prefixes are left alone");
}
