use mesh_api::records::Affinity;

use super::*;
use crate::testing::*;

#[test]
fn changes_report_what_they_touch() {
    let mut m = Mesh::default();
    let t = m.cluster_record("apps", 1);
    assert!(t.all_services && t.all_ips && t.policy);
    m.cluster("apps", 1);
    assert!(m.state.clusters["apps"].complete());
    let mut m2 = Mesh::default();
    m2.cluster("apps", 1);
    let before = m2.state.clusters["apps"].services.len();
    m2.service(
        "apps",
        "demo/echo",
        &["10.96.0.10"],
        true,
        true,
        Affinity::None,
    );
    assert_eq!(m2.state.clusters["apps"].services.len(), before + 1);
    let t = m2
        .state
        .apply("mesh/v1/apps/endpoints/demo/echo/a", Some(&[]), 1);
    // An empty value is not a record (no schema): treated as absent, counted.
    assert_eq!(t.services, BTreeSet::from(["demo/echo".to_owned()]));
    assert_eq!(m2.state.skipped.undecodable, 1);
    let t = m2.state.apply("mesh/v1/apps/ipcache/10.1.0.11", None, 0);
    assert_eq!(t.ips, BTreeSet::from([ip("10.1.0.11")]));
    assert!(m2.state.apply("not/a/mesh/key", Some(b"x"), 1).is_empty());
}

#[test]
fn a_cluster_whose_every_key_is_gone_is_forgotten() {
    let mut m = Mesh::default();
    m.cluster("infra", 2)
        .pod("infra", "10.2.0.21", 2 << 16 | 300);
    assert!(m.state.clusters.contains_key("infra"));
    let keys: Vec<String> = std::iter::once("mesh/v1/infra/cluster".to_owned())
        .chain(
            Kind::SYNCED
                .iter()
                .map(|k| format!("mesh/v1/infra/synced/{k}")),
        )
        .chain(std::iter::once(
            "mesh/v1/infra/ipcache/10.2.0.21".to_owned(),
        ))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        m.state.apply(k, None, 0);
        // Partial while keys remain (markers gone first: incomplete).
        assert_eq!(
            m.state.clusters.contains_key("infra"),
            i + 1 < keys.len(),
            "after {k}"
        );
    }
}

#[test]
fn slices_of_a_service_do_not_include_a_longer_named_one() {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .slice("apps", "demo/echo", "a", 80, &[ready("10.1.0.1")])
        .slice("apps", "demo/echo2", "a", 80, &[ready("10.1.0.2")])
        .slice("apps", "demo/echo-x", "a", 80, &[ready("10.1.0.3")]);
    let c = &m.state.clusters["apps"];
    let eps: Vec<_> = c
        .slices_of("demo/echo")
        .flat_map(|s| s.endpoints.clone())
        .collect();
    assert_eq!(
        eps,
        [(
            ip("10.1.0.1"),
            endpoint_flags::READY | endpoint_flags::SERVING
        )]
    );
}
