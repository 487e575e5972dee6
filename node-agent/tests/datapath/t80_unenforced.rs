//! A pod of this node that no interface with the policy programs leads to — here a pod address
//! routed through a veth that is no pod's — is counted (`raftmesh_agent_pods_unenforced`) and makes
//! `/healthz` say `degraded` (still 200, so a liveness probe does not restart the agent for
//! it) within 2 s; fixed, both go back.

use std::time::{Duration, Instant};

use mesh_api::records::NodeRecord;
use mesh_api::{Key, Record, SCHEMA};

use crate::support::*;

/// `curl -s -w '%{http_code}' /healthz`: (status, body).
fn healthz(node: &Node) -> (u16, String) {
    let out = node
        .ns
        .command("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{METRICS}/healthz"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn a_pod_without_an_enforcing_interface_is_reported_and_degrades_health() {
    let mut node = Node::new(&[("a", "10.244.1.11"), ("b", "10.244.1.12")]);
    let (a, b) = (node.pods["a"].ip, node.pods["b"].ip);
    // This node (n1) is 10.244.0.1, where the ipcache places every pod of the test.
    let this_node = (
        Key::Node {
            cluster: CLUSTER.to_owned(),
            node: "n1".to_owned(),
        },
        Some(Record::Node(NodeRecord {
            schema: SCHEMA,
            name: "n1".to_owned(),
            internal_ips: vec!["10.244.0.1".to_owned()],
            pod_cidrs: vec!["10.244.0.0/16".to_owned()],
            ..Default::default()
        })),
    );
    node.start_with_echo(
        &[a, b],
        vec![
            this_node,
            identity(CLUSTER, 1 << 16 | 300, &["app=echo"]),
            ipcache(CLUSTER, a, 1 << 16 | 300),
            ipcache(CLUSTER, b, 1 << 16 | 300),
        ],
    );
    // Both pods are behind br0, every port of which has the programs.
    eventually(
        "healthy with both pods enforced",
        Duration::from_secs(10),
        || {
            let m = node.metrics()?;
            (healthz(&node) == (200, "ok\n".to_owned())
                && metric(&m, "raftmesh_agent_pods_unenforced")? == 0.0
                && metric(&m, "raftmesh_agent_pod_interfaces")? >= 2.0)
                .then_some(())
        },
    );

    // A third pod, reached through a veth whose peer is in the node's own namespace (as
    // Cilium's cilium_host is): not a pod interface, so nothing enforces policy on it.
    node.ns
        .ip(&[
            "link", "add", "side0", "type", "veth", "peer", "name", "side1",
        ])
        .expect("veth");
    node.ns.ip(&["link", "set", "side0", "up"]).expect("up");
    node.ns.ip(&["link", "set", "side1", "up"]).expect("up");
    node.ns
        .ip(&["route", "add", "10.245.0.9/32", "dev", "side0"])
        .expect("route");
    let c: std::net::Ipv4Addr = "10.245.0.9".parse().unwrap();
    node.write(vec![ipcache(CLUSTER, c, 1 << 16 | 300)]);
    let written = Instant::now();
    // The acceptance bound: reported within 2 s of the pod's record (the agent checks every
    // second and on every link change).
    let body = eventually("degraded within 2 s", Duration::from_secs(2), || {
        let (code, body) = healthz(&node);
        (code == 200 && body.starts_with("degraded")).then_some(body)
    });
    eprintln!("degraded after {:?}", written.elapsed());
    assert!(
        body.contains("10.245.0.9 (routed via side0 (veth), which has no policy programs)"),
        "{body}"
    );
    let m = node.metrics().expect("the agent's metrics");
    assert_eq!(
        metric(&m, "raftmesh_agent_pods_unenforced"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "raftmesh_agent_degraded"), Some(1.0), "{m}");

    // Routed through a pod interface again (a's veth), it is enforced: healthy.
    node.ns
        .ip(&[
            "route",
            "replace",
            "10.245.0.9/32",
            "dev",
            &node.host_ifs["a"],
        ])
        .expect("route");
    eventually("healthy again", Duration::from_secs(10), || {
        let m = node.metrics()?;
        (healthz(&node) == (200, "ok\n".to_owned())
            && metric(&m, "raftmesh_agent_pods_unenforced")? == 0.0
            && metric(&m, "raftmesh_agent_degraded")? == 0.0)
            .then_some(())
    });
    let log = std::fs::read_to_string(node.log("agent")).expect("agent log");
    assert!(log.contains("degraded: 1 pod address(es)"), "{log}");
    assert!(log.contains("no longer degraded"), "{log}");
}
