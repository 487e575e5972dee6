//! Legacy tc: another agent's filter added after ours at our priority runs first (cls_bpf runs
//! a priority's filters newest first) and, if it accepts, policy never runs. The agent moves
//! its filter back to the front within a scan, without a gap, and leaves the other in place.

use std::time::Duration;

use mesh_api::records::{PolicyRecord, PolicyRule};
use mesh_api::{Key, Record, SCHEMA};

use crate::support::*;

#[test]
fn a_filter_added_ahead_of_ours_is_overtaken_again() {
    let mut node = Node::new(&[("server", "10.244.1.30"), ("denied", "10.244.1.32")]);
    node.serve(&["server"]);
    let ns = "io.kubernetes.pod.namespace=demo";
    let labels = |k: &str, v: &str| [(k.to_owned(), v.to_owned())].into_iter().collect();
    let mut records = vec![cluster(CLUSTER, CLUSTER_ID)];
    records.extend(synced(CLUSTER));
    records.extend([
        identity(CLUSTER, 1 << 16 | 300, &["app=server", ns]),
        identity(CLUSTER, 1 << 16 | 302, &["app=denied", ns]),
        ipcache(CLUSTER, node.pods["server"].ip, 1 << 16 | 300),
        ipcache(CLUSTER, node.pods["denied"].ip, 1 << 16 | 302),
        (
            Key::Policy {
                cluster: CLUSTER.to_owned(),
                namespace: "demo".to_owned(),
                name: "server".to_owned(),
            },
            Some(Record::Policy(PolicyRecord {
                schema: SCHEMA,
                namespace: "demo".to_owned(),
                name: "server".to_owned(),
                endpoint_selector: labels("app", "server"),
                ingress: vec![PolicyRule {
                    from_clusters: vec![],
                    from_labels: labels("app", "nobody"),
                    ports: vec![],
                }],
            })),
        ),
    ]);
    node.write(records);
    node.policy_attach = "tc";
    node.start_agent();
    node.wait_maps("the policy", |t| t.enforced.contains(&(1 << 16 | 300)));
    let tcp = ["--tcp", "10.244.1.30:8080", "--timeout-ms", "1000"];
    let denied = |node: &Node| node.probe("denied", &tcp).iter().all(|l| l["ok"] == false);
    eventually("the policy enforced", Duration::from_secs(10), || {
        denied(&node).then_some(())
    });

    // Another agent's accept-all filter at priority 1, handle 1, on the server's interface.
    let object = node.compile_bpf("foreign_tc_accept");
    let dev = node.host_ifs["server"].clone();
    let out = node
        .ns
        .command("tc")
        .args([
            "filter", "add", "dev", &dev, "egress", "pref", "1", "handle", "1",
        ])
        .args(["bpf", "da", "obj"])
        .arg(&object)
        .args(["sec", "classifier"])
        .output()
        .expect("tc filter add");
    assert!(out.status.success(), "{out:?}");

    // Ours is first again (under its other handle), the other filter is still there, and the
    // policy holds.
    let first = |node: &Node| {
        node.tc_filters("server", "egress")
            .lines()
            .find(|l| l.contains("handle"))
            .unwrap_or_default()
            .to_owned()
    };
    eventually(
        "the policy filter first again",
        Duration::from_secs(10),
        || {
            let f = first(&node);
            (f.contains("pol_to_pod") && f.contains("handle 0x524e")).then_some(())
        },
    );
    let shown = node.tc_filters("server", "egress");
    assert!(shown.contains("foreign_accept"), "{shown}");
    assert_eq!(
        shown.lines().filter(|l| l.contains("pol_to_pod")).count(),
        1,
        "{shown}"
    );
    assert!(denied(&node), "the policy was bypassed");
    let log = std::fs::read_to_string(node.log("agent")).expect("agent log");
    assert!(log.contains("ours moved back to the front"), "{log}");
}
