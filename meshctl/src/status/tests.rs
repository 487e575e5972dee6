use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// The record of an agent probing `probed` nodes of each cluster, finding `down` unreachable.
fn report(probed: &[(&str, usize)], down: &[(&str, &[&str])]) -> ReachRecord {
    let probed: BTreeMap<String, usize> =
        probed.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
    let down: BTreeMap<String, BTreeSet<String>> = down
        .iter()
        .map(|(c, nodes)| {
            (
                (*c).to_owned(),
                nodes.iter().map(|n| (*n).to_owned()).collect(),
            )
        })
        .collect();
    ReachRecord::new(&probed, &down)
}

#[test]
fn a_partitioned_remote_is_unreachable_from_every_reporting_node() {
    let reports = [
        report(&[("infra", 2), ("db", 1)], &[("infra", &["n1", "n2"])]),
        report(&[("infra", 2), ("db", 1)], &[("infra", &["n1", "n2"])]),
        report(&[("infra", 2), ("db", 1)], &[]),
    ];
    let infra = reach_summary(&reports, "infra");
    assert_eq!(infra["agents"], 3);
    assert_eq!(infra["unreachableFrom"], 2);
    assert_eq!(reach_cell(&infra), "unreachable from 2/3 nodes");
    assert_eq!(reach_cell(&reach_summary(&reports, "db")), "ok (3 nodes)");
}

#[test]
fn one_dead_node_is_named_with_how_many_nodes_find_it_unreachable() {
    let reports = [
        report(&[("infra", 2)], &[("infra", &["n2"])]),
        report(&[("infra", 2)], &[("infra", &["n2"])]),
    ];
    let infra = reach_summary(&reports, "infra");
    assert_eq!(infra["partlyUnreachableFrom"], 2);
    assert_eq!(infra["unreachableNodes"]["n2"], 2);
    assert_eq!(reach_cell(&infra), "n2 unreachable from 2/2");
}

#[test]
fn no_report_is_a_dash_and_a_left_out_cluster_is_unknown() {
    assert_eq!(reach_cell(&reach_summary(&[], "infra")), "-");
    assert_eq!(
        reach_cell(&reach_summary(&[report(&[("infra", 2)], &[])], "infra")),
        "ok (1 node)"
    );
    let mut full = report(&[("infra", 2)], &[]);
    full.omitted_clusters = 7;
    assert_eq!(
        reach_cell(&reach_summary(&[full], "infra")),
        "not reported by 1/1"
    );
}
