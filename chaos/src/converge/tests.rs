use std::net::Ipv4Addr;

use lab::plan::Plan;
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
    // Two empty sides are not agreement: the origin publishes nothing.
    let empty = kv(&[]);
    assert_eq!(
        mirror_diff("a", "b", &empty, &empty).map(|d| d.examples),
        Some(vec!["a has no records".to_owned()])
    );
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
            against_spec: 0,
            unreadable: None,
        })
    );
    // A frontend only one side has counts too.
    assert_eq!(
        maps_diff("apps/node-1", &Tables::default(), &want).map(|d| d.services),
        Some(1)
    );
}

#[test]
fn the_spec_says_which_backends_each_global_service_has() {
    let mut spec = crate::scenario::chaos_spec(std::time::Duration::from_secs(10));
    let plan = Plan::new(0);
    let sets = |ips: &[[u8; 4]]| -> BTreeSet<(Ipv4Addr, u16)> {
        ips.iter().map(|ip| (Ipv4Addr::from(*ip), 8080)).collect()
    };
    let frontend = |c: u8, i: u8, port: u16| Frontend {
        vip: Ipv4Addr::new(10, 255, c, 10 + i),
        port,
        proto: PROTO_TCP,
    };
    let apps = expected_services(&spec, &plan, "apps");
    // demo/echo (global, shared, affinity none): both clusters' echo pods, on TCP and UDP.
    let echo = sets(&[
        [10, 1, 1, 10],
        [10, 1, 2, 10],
        [10, 2, 1, 10],
        [10, 2, 2, 10],
    ]);
    assert_eq!(apps[&frontend(1, 0, 80)], echo);
    assert!(
        apps.keys()
            .any(|f| f.proto == PROTO_UDP && f.vip == frontend(1, 0, 80).vip)
    );
    // demo/db: apps has no db pod, infra's is the only backend.
    assert_eq!(apps[&frontend(1, 1, 5432)], sets(&[[10, 2, 2, 12]]));
    // demo/local (not shared, affinity local): apps' own echo pods only.
    assert_eq!(
        apps[&frontend(1, 3, 80)],
        sets(&[[10, 1, 1, 10], [10, 1, 2, 10]])
    );
    // demo/churn: four ready pods in each cluster; one turned not ready drops out.
    assert_eq!(apps[&frontend(1, 2, 9000)].len(), 8);
    let churn = spec.clusters[1]
        .pods
        .iter_mut()
        .find(|p| p.name == "churn-1")
        .unwrap();
    churn.ready = false;
    let after = expected_services(&spec, &plan, "apps");
    assert_eq!(after[&frontend(1, 2, 9000)].len(), 7);

    // An agent whose maps say otherwise differs from the spec, one frontend per difference.
    let mut read = Tables::default();
    for (f, backends) in &after {
        read.services.insert(
            *f,
            backends
                .iter()
                .map(|(ip, port)| Backend {
                    ip: *ip,
                    port: *port,
                    cluster_id: 1,
                    flags: 0,
                })
                .collect(),
        );
    }
    assert_eq!(spec_diff(&read, &after), 0);
    assert_eq!(spec_diff(&read, &apps), 1);
    read.services.remove(&frontend(1, 1, 5432));
    assert_eq!(spec_diff(&read, &after), 1);
}
