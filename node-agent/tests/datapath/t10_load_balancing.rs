//! Acceptance 2: socket load balancing of a global service over local and remote backends.

use std::collections::BTreeSet;

use crate::support::*;

#[test]
fn global_service_balances_over_every_ready_backend() {
    let mut node = Node::new(&[
        ("client", "10.244.0.10"),
        ("b1", "10.244.1.11"),
        ("b2", "10.244.1.12"),
        ("r1", "10.244.2.21"),
    ]);
    node.serve(&["b1", "b2", "r1"]);
    let ip = |p: &str| node.pods[p].ip;
    let (b1, b2, r1) = (ip("b1"), ip("b2"), ip("r1"));
    let mut records = vec![cluster(CLUSTER, CLUSTER_ID), cluster("infra", 2)];
    records.extend(synced(CLUSTER));
    records.extend(synced("infra"));
    records.push(service(CLUSTER, "10.96.0.10", true));
    records.push(service("infra", "10.100.0.10", true));
    records.push(slice(CLUSTER, "echo-a", &[(b1, true), (b2, true)]));
    records.push(slice("infra", "echo-x", &[(r1, true)]));
    // Every pod has its identity (an unknown one takes only this node's traffic).
    records.push(ipcache("infra", r1, 2 << 16 | 900));
    node.write(records);
    node.publish_pods(&[b1, b2]);
    node.start_agent();
    node.wait_maps("3 backends for the VIP", |t| {
        t.services.values().next().is_some_and(|b| b.len() == 3)
    });

    // TCP: every ready backend answers, and getpeername shows the VIP.
    let lines = node.probe("client", &["--tcp", "10.96.0.10:80", "--count", "60"]);
    assert_eq!(lines.len(), 60);
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
    assert_eq!(
        replies(&lines),
        BTreeSet::from(["b1".into(), "b2".into(), "r1".into()])
    );
    assert!(
        lines.iter().all(|l| l["peer"] == "10.96.0.10:80"),
        "{lines:?}"
    );

    // UDP: request/response through the VIP; the reply comes from the VIP.
    let lines = node.probe("client", &["--udp", "10.96.0.10:53", "--count", "30"]);
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
    assert!(
        lines.iter().all(|l| l["peer"] == "10.96.0.10:53"),
        "{lines:?}"
    );
    assert_eq!(replies(&lines).len(), 3);
    let lines = node.probe(
        "client",
        &["--udp-connected", "10.96.0.10:53", "--count", "5"],
    );
    assert!(
        lines
            .iter()
            .all(|l| l["ok"] == true && l["peer"] == "10.96.0.10:53"),
        "{lines:?}"
    );

    // A backend marked not ready stops receiving new connections.
    node.write(vec![slice(CLUSTER, "echo-a", &[(b1, true), (b2, false)])]);
    node.wait_maps("b2 removed", |t| {
        t.services
            .values()
            .next()
            .is_some_and(|b| b.len() == 2 && b.iter().all(|b| b.ip != b2))
    });
    let lines = node.probe("client", &["--tcp", "10.96.0.10:80", "--count", "40"]);
    assert!(lines.iter().all(|l| l["ok"] == true), "{lines:?}");
    assert_eq!(replies(&lines), BTreeSet::from(["b1".into(), "r1".into()]));

    // No usable backend: the connect is refused by the program (EPERM), not left to time out.
    node.write(vec![
        slice(CLUSTER, "echo-a", &[(b1, false), (b2, false)]),
        slice("infra", "echo-x", &[(r1, false)]),
    ]);
    node.wait_maps("no backend", |t| t.services.values().all(Vec::is_empty));
    let lines = node.probe(
        "client",
        &["--tcp", "10.96.0.10:80", "--timeout-ms", "5000"],
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["ok"], false);
    let error = lines[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("Operation not permitted"), "{error}");
    // The refusal is counted, and the agent exports it (read with curl, once a second).
    eventually(
        "the no_backend metric",
        std::time::Duration::from_secs(10),
        || {
            (metric(
                &node.metrics()?,
                "raftmesh_agent_lb_total{result=\"no_backend\"}",
            )? >= 1.0)
                .then_some(())
        },
    );
}
