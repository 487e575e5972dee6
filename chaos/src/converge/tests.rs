use std::net::Ipv4Addr;

use node_agent::maps::{Backend, Frontend, PROTO_TCP};

use super::*;

fn kv(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn equal_mirrors_converged_and_each_difference_counted() {
    let origin = kv(&[
        ("mesh/v1/a/x", "1"),
        ("mesh/v1/a/y", "2"),
        ("mesh/v1/a/z", "3"),
    ]);
    assert_eq!(mirror_diff("a", "b", &origin, &origin.clone()), None);
    let mirror = kv(&[
        ("mesh/v1/a/x", "1"),
        ("mesh/v1/a/y", "old"),
        ("mesh/v1/a/gone", "9"),
    ]);
    assert_eq!(
        mirror_diff("a", "b", &origin, &mirror),
        Some(MirrorDiff {
            origin: "a".to_owned(),
            mirror: "b".to_owned(),
            missing: 1,
            extra: 1,
            different: 1,
            examples: vec![
                "mesh/v1/a/gone".to_owned(),
                "mesh/v1/a/y".to_owned(),
                "mesh/v1/a/z".to_owned(),
            ],
        })
    );
}

fn tables(backends: &[[u8; 4]]) -> Tables {
    let f = Frontend {
        vip: Ipv4Addr::new(10, 255, 1, 10),
        port: 80,
        proto: PROTO_TCP,
    };
    let mut t = Tables::default();
    t.services.insert(
        f,
        backends
            .iter()
            .map(|ip| Backend {
                ip: Ipv4Addr::from(*ip),
                port: 8080,
                cluster_id: 1,
                flags: 0,
            })
            .collect(),
    );
    t
}

#[test]
fn backends_compare_as_sets_and_a_missing_one_counts() {
    let want = tables(&[[10, 1, 1, 10], [10, 2, 1, 10]]);
    let reordered = tables(&[[10, 2, 1, 10], [10, 1, 1, 10]]);
    assert_eq!(maps_diff("apps/node-1", &reordered, &want), None);
    let short = tables(&[[10, 1, 1, 10]]);
    assert_eq!(
        maps_diff("apps/node-1", &short, &want),
        Some(MapsDiff {
            agent: "apps/node-1".to_owned(),
            services: 1,
            ipcache: 0,
            policy: 0,
            unreadable: None,
        })
    );
    // A frontend only one side has counts too.
    assert_eq!(
        maps_diff("apps/node-1", &Tables::default(), &want).map(|d| d.services),
        Some(1)
    );
}
