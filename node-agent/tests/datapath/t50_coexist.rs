//! Coexistence with a CNI: a foreign connect4 program attached to the same cgroup keeps
//! working beside ours, and `--uninstall` removes only ours.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::support::*;

/// A pinned foreign program, unpinned on drop.
struct Foreign(PathBuf);

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_foreign_connect4_program_keeps_working_beside_ours() {
    let mut node = Node::new(&[
        ("client", "10.244.0.10"),
        ("b1", "10.244.1.11"),
        ("b2", "10.244.1.12"),
    ]);
    node.serve(&["b1", "b2"]);
    // The foreign program is there first, as a CNI's would be, attached in multi mode.
    let object = node.compile_bpf("foreign_connect4");
    let foreign = Foreign(PathBuf::from(format!("/sys/fs/bpf/{}-foreign", node.id)));
    let pin = foreign.0.to_str().unwrap();
    lab::run(
        "bpftool",
        &[
            "prog",
            "load",
            object.to_str().unwrap(),
            pin,
            "type",
            "cgroup/connect4",
        ],
    )
    .expect("bpftool prog load");
    let cg = node.cgroup.path().to_str().unwrap().to_owned();
    lab::run(
        "bpftool",
        &["cgroup", "attach", &cg, "connect4", "pinned", pin, "multi"],
    )
    .expect("bpftool cgroup attach");

    let (b1, b2) = (node.pods["b1"].ip, node.pods["b2"].ip);
    node.start_with_echo(&[b1, b2], vec![]);

    let shown = lab::run("bpftool", &["cgroup", "show", &cg]).expect("bpftool cgroup show");
    assert!(
        shown.contains("foreign_connect4") && shown.contains("lb_connect4"),
        "{shown}"
    );
    let ours = node.probe("client", &["--tcp", "10.96.0.10:80", "--count", "30"]);
    assert!(ours.iter().all(|l| l["ok"] == true), "{ours:?}");
    assert_eq!(replies(&ours), BTreeSet::from(["b1".into(), "b2".into()]));
    let theirs = node.probe("client", &["--tcp", "10.97.0.1:80", "--count", "5"]);
    assert!(
        theirs.iter().all(|l| l["ok"] == true && l["reply"] == "b1"),
        "{theirs:?}"
    );

    assert!(node.agent.as_mut().expect("agent").terminate());
    let out = node
        .ns
        .command(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--uninstall", "--wg-backend", "none", "--bpffs"])
        .arg(node.pins.0.root())
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{out:?}");
    let shown = lab::run("bpftool", &["cgroup", "show", &cg]).expect("bpftool cgroup show");
    assert!(
        shown.contains("foreign_connect4") && !shown.contains("lb_"),
        "{shown}"
    );
    let theirs = node.probe("client", &["--tcp", "10.97.0.1:80"]);
    assert!(
        theirs.iter().all(|l| l["ok"] == true && l["reply"] == "b1"),
        "{theirs:?}"
    );
}
