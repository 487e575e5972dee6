//! Golden test (issue 5, acceptance 1): real-shaped manifests (Nodes, Pods, Services with and
//! without the global annotations, EndpointSlices with ready and terminating endpoints, a
//! MeshPolicy) give exactly the expected keys and decoded values, and the expected problems.
//!
//! The expected file is `tests/fixtures/publish/expected.json`. After an intended change,
//! regenerate it with `RAFTMESH_BLESS=1 cargo test -p mesh-apiserver --test t70_publish_golden`
//! and review the diff. The blessing run fails after writing, so it never passes by comparing
//! the output with itself; with `CI` set it refuses to bless.

use std::collections::BTreeMap;
use std::path::Path;

use mesh_apiserver::publish::convert::{
    FIRST_LOCAL_ID, Settings, desired, identity, identity_records,
};
use mesh_apiserver::publish::objects::Objects;
use serde_json::{Value, json};

#[test]
fn manifests_give_the_expected_records() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/publish");
    let mut objects = Objects::default();
    let taken = objects
        .add_yaml(&std::fs::read_to_string(dir.join("manifests.yaml")).unwrap())
        .unwrap();
    assert_eq!(
        taken, 17,
        "objects of the published kinds (the Deployment is ignored)"
    );

    let settings = Settings {
        cluster: "apps".into(),
        cluster_id: 7,
    };
    let d = desired(&settings, &objects);
    // A fresh store allocates in label-set order from the first unreserved id.
    let ids: BTreeMap<Vec<String>, u32> = d
        .label_sets()
        .into_iter()
        .zip(FIRST_LOCAL_ID..)
        .map(|(labels, local)| (labels, identity(7, local as u16)))
        .collect();
    let mut records = d.records.clone();
    records.extend(identity_records("apps", &d.workloads, &ids));

    let got = json!({
        "records": records
            .iter()
            .map(|(k, r)| (k.to_string(), r.to_json()))
            .collect::<serde_json::Map<String, Value>>(),
        "problems": d.problems.iter().map(|p| format!("{}: {p}", p.reason())).collect::<Vec<_>>(),
    });
    // Every record decodes from its encoding at its key.
    for (k, r) in &records {
        let (_, back) = mesh_api::Record::decode_at(&k.to_string(), &r.encode()).unwrap();
        assert_eq!(&back, r);
    }
    let expected_path = dir.join("expected.json");
    if bless() {
        std::fs::write(
            &expected_path,
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        panic!(
            "blessed {}: check the diff and run again without RAFTMESH_BLESS",
            expected_path.display()
        );
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
    assert_eq!(
        got,
        expected,
        "got:\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
}

/// Whether to rewrite the golden: only with `RAFTMESH_BLESS=1`, and never under CI (a run that
/// blesses compares nothing, so it fails once it has written).
fn bless() -> bool {
    bless_from(
        std::env::var("RAFTMESH_BLESS").ok().as_deref(),
        std::env::var_os("CI").is_some(),
    )
}

fn bless_from(bless: Option<&str>, ci: bool) -> bool {
    match (bless, ci) {
        (Some("1"), true) => {
            panic!("RAFTMESH_BLESS=1 under CI: the golden is never rewritten in CI")
        }
        (Some("1"), false) => true,
        _ => false,
    }
}

#[test]
fn only_bless_1_outside_ci_rewrites_the_golden() {
    assert!(bless_from(Some("1"), false));
    for v in [None, Some("0"), Some(""), Some("yes"), Some("true")] {
        assert!(!bless_from(v, false), "{v:?}");
        assert!(!bless_from(v, true), "{v:?}");
    }
    assert!(std::panic::catch_unwind(|| bless_from(Some("1"), true)).is_err());
}
