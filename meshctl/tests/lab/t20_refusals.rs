//! What the lab refuses, and a crashed lab cleaned by `down`.

use crate::support::{TestLab, leftovers};

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let lab = TestLab::new("r");
    let spec = lab.dir.path().join("bad.yaml");
    std::fs::write(&spec, "clusters:\n- {name: a, id: 1, members: 9}\n").unwrap();
    let out = lab.meshctl(&["lab", "up", "--spec", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clusters[0].members: 1 to 7, not 9"), "{err}");
    assert!(
        !lab.base().exists(),
        "a refused up made {}",
        lab.base().display()
    );
    for args in [
        &["lab", "down"][..],
        &["lab", "status"],
        &["lab", "kill", "apps/m1"],
    ] {
        let out = lab.meshctl(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no lab named"),
            "{args:?}"
        );
    }
}

#[test]
fn a_crashed_lab_is_refused_by_up_and_cleaned_by_down() {
    let mut lab = TestLab::new("c");
    let spec = lab.dir.path().join("small.yaml");
    std::fs::write(
        &spec,
        "clusters:\n- {name: east, id: 11, members: 1, nodes: 1, pods: [{name: a}]}\n- {name: west, id: 12, members: 1, nodes: 1}\n",
    )
    .unwrap();
    lab.up(&["--spec", spec.to_str().unwrap()]);
    let status = lab.status();
    let tag = format!("rl{}", status["slot"]);
    let dir = std::path::PathBuf::from(status["dir"].as_str().unwrap());
    // Bad targets and pairs are refused.
    for args in [
        &["lab", "kill", "east/m9"][..],
        &["lab", "kill", "nowhere/m1"],
        &["lab", "partition", "east", "east"],
        &["lab", "exec", "east/m1", "--", "true"],
    ] {
        assert_eq!(lab.meshctl(args).status.code(), Some(64), "{args:?}");
    }
    // exec passes the command's exit code through.
    assert_eq!(
        lab.meshctl(&["lab", "exec", "east/a", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    // A crash: every process of the lab killed at once.
    let cgroup = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|r| std::path::Path::new(r).join(format!("raftmesh-lab-{tag}")))
        .find(|p| p.exists())
        .expect("the lab's cgroup");
    std::fs::write(cgroup.join("cgroup.kill"), "1").unwrap();
    crate::support::eventually(
        "the lab's processes to die",
        crate::support::PATIENCE,
        || {
            let s = lab.status();
            (s["clusters"][0]["members"][0]["process"]["state"] == "stopped").then_some(())
        },
    );
    let out = lab.meshctl(&["lab", "up", "--spec", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lab down"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.ok(&["lab", "down"]);
    lab.up = false;
    let left = leftovers(&tag, &dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}
