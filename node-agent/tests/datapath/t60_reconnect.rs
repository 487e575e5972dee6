//! The agent and its API server: a broken watch resumes from the revision it reached (no new
//! list); a revision compacted while the agent was cut off means a new list, and the diff
//! against the maps removes what the new list lacks (mark and sweep).

use std::time::Duration;

use crate::support::*;

/// Cuts the agent off its API server (it connects to 127.0.0.2) or lets it back.
fn cut(node: &Node, on: bool) {
    let out = node
        .ns
        .command("iptables")
        .args([
            if on { "-I" } else { "-D" },
            "INPUT",
            "-d",
            "127.0.0.2",
            "-p",
            "tcp",
        ])
        .args([
            "--dport",
            "2379",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])
        .output()
        .expect("iptables");
    assert!(out.status.success(), "{out:?}");
}

fn lists(node: &Node) -> Option<f64> {
    metric(&node.metrics()?, "raftmesh_agent_lists_total")
}

fn backends(node: &Node) -> Vec<std::net::Ipv4Addr> {
    let t = node.tables().expect("maps");
    let mut ips: Vec<_> = t
        .services
        .values()
        .next()
        .map(|b| b.iter().map(|b| b.ip).collect())
        .unwrap_or_default();
    ips.sort();
    ips
}

#[test]
fn a_broken_watch_resumes_and_a_compacted_one_lists_again() {
    let mut node = Node::new(&[
        ("b1", "10.244.1.11"),
        ("b2", "10.244.1.12"),
        ("b3", "10.244.1.13"),
    ]);
    let ip = |p: &str| node.pods[p].ip;
    let (b1, b2, b3) = (ip("b1"), ip("b2"), ip("b3"));
    node.start_with_echo(&[b1, b2], vec![]);
    assert_eq!(lists(&node), Some(1.0));

    // Resume: the server restarts while the agent cannot reconnect; a change meanwhile.
    cut(&node, true);
    node.kill_apiserver();
    node.restart_apiserver();
    node.write(vec![slice(
        CLUSTER,
        "echo-a",
        &[(b1, true), (b2, true), (b3, true)],
    )]);
    eventually("the agent notices", Duration::from_secs(10), || {
        (metric(&node.metrics()?, "raftmesh_agent_connected")? == 0.0).then_some(())
    });
    cut(&node, false);
    node.wait_maps("b3 after the reconnect", |t| t.backends() == 6);
    assert_eq!(backends(&node), [b1, b2, b3]);
    assert_eq!(
        lists(&node),
        Some(1.0),
        "a resumed watch lists nothing again"
    );

    // Compaction: what happened while the agent was away is no longer in the history.
    cut(&node, true);
    node.kill_apiserver();
    node.restart_apiserver();
    node.write(vec![slice(CLUSTER, "echo-a", &[(b1, true)])]);
    node.store(|mut c| async move {
        let revision = c
            .get("ready", None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
        c.compact(revision, None).await.map(|_| ())
    })
    .expect("compact");
    eventually("the agent notices", Duration::from_secs(10), || {
        (metric(&node.metrics()?, "raftmesh_agent_connected")? == 0.0).then_some(())
    });
    cut(&node, false);
    node.wait_maps("only b1 after the new list", |t| t.backends() == 2);
    assert_eq!(backends(&node), [b1]);
    eventually("the second list counted", Duration::from_secs(10), || {
        (lists(&node)? == 2.0).then_some(())
    });
}
