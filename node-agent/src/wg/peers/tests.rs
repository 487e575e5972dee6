use std::collections::BTreeSet;

use mesh_api::{Key, Kind};

use super::*;
use crate::testing::{Mesh, ip, local, test_key};

const OWN: u8 = 1;

/// apps (ours: apps-1, apps-2) and infra (infra-1 with an ExternalIP, infra-2), all keyed.
fn mesh() -> Mesh {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .node_with("apps", "apps-1", "192.168.1.1", None, &["10.1.1.0/24"])
        .node_with("apps", "apps-2", "192.168.1.2", None, &["10.1.2.0/24"])
        .nodekey("apps", "apps-1", OWN, 51871)
        .nodekey("apps", "apps-2", 2, 51871);
    m.cluster("infra", 2)
        .node_with(
            "infra",
            "infra-1",
            "192.168.2.1",
            Some("203.0.113.1"),
            &["10.2.1.0/24", "10.2.9.7/16"],
        )
        .node_with("infra", "infra-2", "192.168.2.2", None, &["10.2.2.0/24"])
        .nodekey("infra", "infra-1", 11, 51871)
        .nodekey("infra", "infra-2", 12, 4000);
    m
}

fn want(m: &Mesh, intra: bool) -> BTreeMap<PublicKey, Peer> {
    let (peers, conflicts) = desired(&m.state, &local(), &test_key(OWN), intra);
    assert_eq!(conflicts, []);
    peers
}

fn cidrs(list: &[(&str, u8)]) -> BTreeSet<Cidr> {
    list.iter().map(|(a, l)| (ip(a), *l)).collect()
}

#[test]
fn peers_are_the_other_clusters_nodes() {
    let peers = want(&mesh(), false);
    assert_eq!(
        peers,
        BTreeMap::from([
            (
                test_key(11),
                Peer {
                    cluster: "infra".into(),
                    node: "infra-1".into(),
                    // The ExternalIP wins; CIDRs are normalised (10.2.9.7/16 → 10.2.0.0/16).
                    endpoint: Some("203.0.113.1:51871".parse().unwrap()),
                    allowed: cidrs(&[("10.2.1.0", 24), ("10.2.0.0", 16)]),
                }
            ),
            (
                test_key(12),
                Peer {
                    cluster: "infra".into(),
                    node: "infra-2".into(),
                    endpoint: Some("192.168.2.2:4000".parse().unwrap()),
                    allowed: cidrs(&[("10.2.2.0", 24)]),
                }
            ),
        ])
    );
}

#[test]
fn own_cluster_only_when_asked_and_never_itself() {
    let peers = want(&mesh(), true);
    assert_eq!(
        peers.values().map(|p| p.node.as_str()).collect::<Vec<_>>(),
        ["apps-2", "infra-1", "infra-2"]
    );
}

#[test]
fn a_key_without_its_node_or_a_node_without_a_key_is_no_peer() {
    let mut m = mesh();
    m.delete(Key::Node {
        cluster: "infra".into(),
        node: "infra-1".into(),
    });
    m.delete(Key::NodeKey {
        cluster: "infra".into(),
        node: "infra-2".into(),
    });
    assert!(want(&m, false).is_empty());
}

#[test]
fn without_pod_cidrs_the_pods_of_the_node_are_allowed() {
    let mut m = Mesh::default();
    m.cluster("apps", 1);
    m.cluster("eks", 3)
        .node_with("eks", "ip-1", "192.168.3.1", None, &[])
        .node_with("eks", "ip-2", "192.168.3.2", None, &[])
        .nodekey("eks", "ip-1", 31, 51871)
        .nodekey("eks", "ip-2", 32, 51871);
    m.pod_on("eks", "192.168.3.77", 100, "192.168.3.1");
    let touched = m.put(
        Key::IpCache {
            cluster: "eks".into(),
            ip: "192.168.3.78".parse().unwrap(),
        },
        mesh_api::Record::IpCache(mesh_api::records::IpCacheRecord {
            schema: mesh_api::SCHEMA,
            identity: 100,
            node_ip: "192.168.3.2".into(),
            ..Default::default()
        }),
    );
    assert!(
        touched.peers,
        "a pod of a cluster without CIDRs touches the peers"
    );
    let peers = want(&m, false);
    assert_eq!(peers[&test_key(31)].allowed, cidrs(&[("192.168.3.77", 32)]));
    assert_eq!(peers[&test_key(32)].allowed, cidrs(&[("192.168.3.78", 32)]));

    // With CIDRs, pods do not touch the peers.
    let mut m = mesh();
    let touched = m
        .put(
            Key::IpCache {
                cluster: "infra".into(),
                ip: "10.2.1.5".parse().unwrap(),
            },
            mesh_api::Record::IpCache(mesh_api::records::IpCacheRecord {
                schema: mesh_api::SCHEMA,
                identity: 100,
                node_ip: "192.168.2.1".into(),
                ..Default::default()
            }),
        )
        .peers;
    assert!(!touched);
}

fn conflict(claimant: (&str, &str), holder: (&str, &str)) -> Conflict {
    Conflict {
        claimant: (claimant.0.into(), claimant.1.into()),
        holder: (holder.0.into(), holder.1.into()),
    }
}

#[test]
fn a_duplicated_key_is_one_peer_and_counted() {
    let mut m = mesh();
    m.nodekey("infra", "infra-2", 11, 51871);
    let (peers, conflicts) = desired(&m.state, &local(), &test_key(OWN), false);
    assert_eq!(peers.len(), 1);
    assert_eq!(
        conflicts,
        [conflict(("infra", "infra-2"), ("infra", "infra-1"))]
    );
}

/// Finding 5 of the trust review: a node published later copies a key; the first publisher
/// keeps it whatever the names, and a remote can never take a key of this cluster's nodes.
#[test]
fn a_copied_key_stays_with_its_first_publisher() {
    let mut m = mesh();
    // hostile's node "a" sorts before infra and infra-1, but publishes infra-1's key later.
    m.cluster("hostile", 3)
        .node_with("hostile", "a", "192.168.3.1", None, &["10.3.1.0/24"])
        .nodekey("hostile", "a", 11, 51871)
        // …and apps-2's key (this cluster's nodes are no peers here, but their keys are
        // theirs) and this node's own.
        .node_with("hostile", "b", "192.168.3.2", None, &["10.3.2.0/24"])
        .nodekey("hostile", "b", 2, 51871)
        .node_with("hostile", "c", "192.168.3.3", None, &["10.3.3.0/24"])
        .nodekey("hostile", "c", OWN, 51871);
    let (peers, conflicts) = desired(&m.state, &local(), &test_key(OWN), false);
    assert_eq!(peers[&test_key(11)].cluster, "infra");
    assert_eq!(peers[&test_key(11)].node, "infra-1");
    assert!(!peers.contains_key(&test_key(2)));
    assert_eq!(
        conflicts,
        [
            conflict(("hostile", "a"), ("infra", "infra-1")),
            conflict(("hostile", "b"), ("apps", "apps-2")),
            conflict(("hostile", "c"), ("apps", "apps-1")),
        ]
    );
    // A record deleted and made again (its lease expired in an outage) is a new claim: the
    // copy, older now, keeps the key (the README's security model says so).
    m.delete(Key::NodeKey {
        cluster: "infra".into(),
        node: "infra-1".into(),
    });
    m.nodekey("infra", "infra-1", 11, 51871);
    let (peers, _) = desired(&m.state, &local(), &test_key(OWN), false);
    assert_eq!(peers[&test_key(11)].cluster, "hostile");
}

#[test]
fn plan_adds_updates_one_peer_and_removes_on_a_complete_view() {
    let mut m = mesh();
    let mut table = PeerTable::default();
    let first = table.plan(&want(&m, false), &m.state);
    assert_eq!(first.upsert.len(), 2);
    table.commit(&first);
    assert!(table.plan(&want(&m, false), &m.state).is_empty());
    assert_eq!(
        table.routes(),
        cidrs(&[("10.2.1.0", 24), ("10.2.0.0", 16), ("10.2.2.0", 24)])
    );

    // A new key for infra-2: one peer added, the old one removed; infra-1 untouched.
    m.nodekey("infra", "infra-2", 13, 4000);
    let plan = table.plan(&want(&m, false), &m.state);
    assert_eq!(
        plan.upsert.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [test_key(13)]
    );
    assert_eq!(plan.remove, [test_key(12)]);
    table.commit(&plan);

    // A moved endpoint updates that peer only.
    m.node_with("infra", "infra-2", "192.168.2.22", None, &["10.2.2.0/24"]);
    let plan = table.plan(&want(&m, false), &m.state);
    assert_eq!(plan.upsert.len(), 1);
    assert_eq!(
        plan.upsert[0].1.endpoint,
        Some("192.168.2.22:4000".parse().unwrap())
    );
    assert!(plan.remove.is_empty());
}

#[test]
fn partial_views_keep_their_peers_and_a_drained_remote_goes() {
    let mut m = mesh();
    let mut table = PeerTable::default();
    let first = table.plan(&want(&m, false), &m.state);
    table.commit(&first);

    // infra's view is partial (a synced marker gone, as during a resync): a missing node
    // keeps its peer.
    m.delete(Key::Synced {
        cluster: "infra".into(),
        kind: Kind::Node,
    });
    m.delete(Key::Node {
        cluster: "infra".into(),
        node: "infra-1".into(),
    });
    let plan = table.plan(&want(&m, false), &m.state);
    assert!(plan.remove.is_empty());
    assert_eq!(plan.kept, 1);

    // Complete again: removed.
    m.cluster("infra", 2);
    let plan = table.plan(&want(&m, false), &m.state);
    assert_eq!(plan.remove, [test_key(11)]);
    table.commit(&plan);

    // Every infra key gone (a disconnected remote drained): the cluster is gone, peers too.
    let keys: Vec<String> = m
        .state
        .clusters
        .get("infra")
        .map(|_| {
            vec![
                "mesh/v1/infra/cluster".to_owned(),
                "mesh/v1/infra/nodes/infra-2".to_owned(),
                "mesh/v1/infra/nodekeys/infra-1".to_owned(),
                "mesh/v1/infra/nodekeys/infra-2".to_owned(),
            ]
        })
        .unwrap();
    for k in keys {
        m.state.apply(&k, None, 0);
    }
    for kind in Kind::SYNCED {
        m.delete(Key::Synced {
            cluster: "infra".into(),
            kind,
        });
    }
    assert!(!m.state.clusters.contains_key("infra"));
    let plan = table.plan(&want(&m, false), &m.state);
    assert_eq!(plan.remove, [test_key(12)]);
}

#[test]
fn adopted_peers_of_unknown_owner_wait_for_every_view() {
    let mut m = Mesh::default();
    m.cluster_record("apps", 1); // partial
    let stranger = test_key(99);
    let table = PeerTable::adopt(BTreeMap::from([(
        stranger,
        Applied {
            endpoint: None,
            allowed: BTreeSet::new(),
            keepalive: None,
        },
    )]));
    let plan = table.plan(&BTreeMap::new(), &m.state);
    assert!(plan.remove.is_empty(), "a partial view keeps a stranger");
    m.cluster("apps", 1);
    let plan = table.plan(&BTreeMap::new(), &m.state);
    assert_eq!(plan.remove, [stranger]);
}
