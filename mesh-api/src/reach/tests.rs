use super::*;

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn names_the_unreachable_nodes_and_puts_whole_clusters_first() {
    let probed = BTreeMap::from([
        ("infra".to_owned(), 3),
        ("db".to_owned(), 2),
        ("edge".to_owned(), 4),
    ]);
    let down = BTreeMap::from([
        ("infra".to_owned(), set(&["infra-2"])),
        ("db".to_owned(), set(&["db-1", "db-2"])),
        ("edge".to_owned(), set(&[])),
    ]);
    let r = ReachRecord::new(&probed, &down);
    assert_eq!(
        (r.probed_nodes, r.probed_clusters, r.unreachable_nodes),
        (9, 3, 3)
    );
    let order: Vec<_> = r.clusters.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(
        order,
        ["db", "infra"],
        "whole clusters first; none for edge"
    );
    assert!(r.clusters[0].whole() && !r.clusters[1].whole());
    assert_eq!(r.cluster("infra").unwrap().nodes, ["infra-2"]);
    assert_eq!(r.omitted_clusters, 0);
    let bytes = r.encode_to_vec();
    assert_eq!(ReachRecord::decode_checked(&bytes).unwrap(), r);
    assert_eq!(r.to_json()["clusters"][0]["wholeCluster"], true);
}

#[test]
fn a_mesh_of_255_unreachable_clusters_still_fits() {
    let name = |i: usize| format!("cluster-with-a-long-name-{i:03}");
    let probed: BTreeMap<String, usize> = (0..255).map(|i| (name(i), 100)).collect();
    let down: BTreeMap<String, BTreeSet<String>> = (0..255)
        .map(|i| {
            let n = if i % 2 == 0 { 100 } else { 3 };
            let nodes = (0..n).map(|j| format!("{}-node-{j}", name(i))).collect();
            (name(i), nodes)
        })
        .collect();
    let r = ReachRecord::new(&probed, &down);
    assert!(r.encoded_len() <= MAX_BYTES, "{} bytes", r.encoded_len());
    assert_eq!(r.clusters.len() + r.omitted_clusters as usize, 255);
    assert!(r.omitted_clusters > 0);
    // The whole clusters are kept before the partly unreachable ones.
    assert!(r.clusters.iter().all(ReachCluster::whole), "{r:?}");
    assert_eq!(r.unreachable_nodes, 128 * 100 + 127 * 3);
}

#[test]
fn names_give_way_before_clusters_do() {
    let probed: BTreeMap<String, usize> = (0..20).map(|i| (format!("c{i:02}"), 10)).collect();
    let down: BTreeMap<String, BTreeSet<String>> = (0..20)
        .map(|i| {
            let nodes = (0..4)
                .map(|j| format!("a-rather-long-node-name-{i}-{j}"))
                .collect();
            (format!("c{i:02}"), nodes)
        })
        .collect();
    let r = ReachRecord::new(&probed, &down);
    assert!(r.encoded_len() <= MAX_BYTES, "{} bytes", r.encoded_len());
    assert_eq!(r.omitted_clusters, 0, "every cluster fits without names");
    assert_eq!(r.clusters.len(), 20);
    assert!(r.clusters[0].nodes.len() == 4, "the first keep their names");
    assert!(r.clusters[19].nodes.is_empty(), "the last lose theirs");
}

#[test]
fn a_newer_schema_is_refused() {
    let r = ReachRecord {
        schema: SCHEMA + 1,
        ..ReachRecord::default()
    };
    assert!(ReachRecord::decode_checked(&r.encode_to_vec()).is_err());
}
