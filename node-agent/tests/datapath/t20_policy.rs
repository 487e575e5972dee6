//! Acceptance 3: a MeshPolicy (with a cluster selector) allows some identities to a pod's port
//! and drops the rest, counting drops by reason.

use std::time::Duration;

use mesh_api::records::{PolicyPort, PolicyRecord, PolicyRule};
use mesh_api::{Key, Record, SCHEMA};

use crate::support::*;

fn ok(lines: &[serde_json::Value]) -> bool {
    !lines.is_empty() && lines.iter().all(|l| l["ok"] == true)
}

fn denied(lines: &[serde_json::Value]) -> bool {
    !lines.is_empty() && lines.iter().all(|l| l["ok"] == false)
}

fn policy() -> (Key, Option<Record>) {
    let labels = |k: &str, v: &str| [(k.to_owned(), v.to_owned())].into_iter().collect();
    let ports = |list: &[(u32, &str)]| {
        list.iter()
            .map(|(port, protocol)| PolicyPort {
                port: *port,
                protocol: (*protocol).to_owned(),
            })
            .collect()
    };
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
            ingress: vec![
                PolicyRule {
                    from_clusters: vec![],
                    from_labels: labels("app", "allowed"),
                    ports: ports(&[(8080, "TCP"), (5353, "UDP")]),
                },
                PolicyRule {
                    from_clusters: vec!["infra".to_owned()],
                    from_labels: labels("app", "client"),
                    ports: ports(&[(8080, "TCP")]),
                },
            ],
        })),
    )
}

#[test]
fn mesh_policy_allows_named_identities_and_drops_the_rest() {
    allows_and_drops("tcx");
}

/// The same with legacy tc filters, as on kernels before 6.6 (EKS AL2023 with Linux 6.1).
#[test]
fn mesh_policy_allows_named_identities_and_drops_the_rest_in_tc_mode() {
    let node = allows_and_drops("tc");
    // iproute2 sees our direct-action filters first on both sides of every pod interface.
    for pod in node.host_ifs.keys() {
        for (direction, program) in [("egress", "pol_to_pod"), ("ingress", "pol_from_pod")] {
            let shown = node.tc_filters(pod, direction);
            let first = shown
                .lines()
                .find(|l| l.contains("handle"))
                .unwrap_or_else(|| panic!("no filter on {pod} {direction}: {shown}"));
            assert!(
                first.contains("pref 1 bpf")
                    && first.contains("handle 0x524d")
                    && first.contains(program)
                    && first.contains("direct-action"),
                "{pod} {direction}: {shown}"
            );
        }
    }
    assert!(
        node.attachments().values().all(|m| m == "tc") && node.attachments().len() == 5,
        "{:?}",
        node.attachments()
    );
}

fn allows_and_drops(mode: &'static str) -> Node {
    let mut node = Node::new(&[
        ("server", "10.244.1.30"),
        ("allowed", "10.244.1.31"),
        ("denied", "10.244.1.32"),
        ("stranger", "10.244.1.33"),
        ("remote", "10.244.2.40"),
    ]);
    node.serve(&["server", "denied"]);
    let ip = |p: &str| node.pods[p].ip;
    let ns = "io.kubernetes.pod.namespace=demo";
    let mut records = vec![cluster(CLUSTER, CLUSTER_ID), cluster("infra", 2)];
    records.extend(synced(CLUSTER));
    records.extend(synced("infra"));
    records.extend([
        identity(CLUSTER, 1 << 16 | 300, &["app=server", ns]),
        identity(CLUSTER, 1 << 16 | 301, &["app=allowed", ns]),
        identity(CLUSTER, 1 << 16 | 302, &["app=denied", ns]),
        // A local identity with the remote rule's labels: the rule names infra only.
        identity(CLUSTER, 1 << 16 | 303, &["app=client", ns]),
        identity("infra", 2 << 16 | 300, &["app=client", ns]),
        ipcache(CLUSTER, ip("server"), 1 << 16 | 300),
        ipcache(CLUSTER, ip("allowed"), 1 << 16 | 301),
        ipcache(CLUSTER, ip("denied"), 1 << 16 | 302),
        ipcache("infra", ip("remote"), 2 << 16 | 300),
        policy(),
    ]);
    node.write(records);
    node.policy_attach = mode;
    node.start_agent();
    node.wait_maps("the policy", |t| {
        t.enforced.contains(&(1 << 16 | 300)) && t.ipcache.len() == 4
    });
    // The policy programs attach to pod interfaces within a second of their appearance.
    eventually(
        "policy programs on every pod interface",
        Duration::from_secs(10),
        || (metric(&node.metrics()?, "raftmesh_agent_pod_interfaces")? >= 5.0).then_some(()),
    );

    let tcp = ["--tcp", "10.244.1.30:8080", "--timeout-ms", "1000"];
    let udp = ["--udp", "10.244.1.30:5353", "--timeout-ms", "1000"];
    assert!(
        ok(&node.probe("allowed", &tcp)),
        "allowed identity, allowed port"
    );
    assert!(
        ok(&node.probe("allowed", &udp)),
        "allowed identity, allowed UDP port"
    );
    assert!(
        ok(&node.probe("remote", &tcp)),
        "infra's app=client, allowed port"
    );
    assert!(
        denied(&node.probe("remote", &udp)),
        "infra's app=client, port not allowed"
    );
    assert!(
        denied(&node.probe("denied", &tcp)),
        "identity no rule allows"
    );
    assert!(
        denied(&node.probe("stranger", &tcp)),
        "an address without identity"
    );
    // The server's own UDP request to an unenforced pod gets its reply back in.
    assert!(ok(&node.probe(
        "server",
        &["--udp", "10.244.1.32:5353", "--timeout-ms", "1000"]
    )));
    // The unenforced pod takes anything.
    assert!(ok(&node.probe("stranger", &["--tcp", "10.244.1.32:8080"])));

    let counters = node_agent::datapath::KernelMaps::open(&node.pins.0)
        .and_then(|m| m.counters())
        .expect("counters");
    let get = |name: &str| {
        counters
            .policy
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    assert!(get("policy_denied") >= 2, "{counters:?}");
    assert!(get("unknown_identity") >= 1, "{counters:?}");
    assert!(get("allowed") >= 3, "{counters:?}");
    assert!(get("reply") >= 1, "{counters:?}");
    // The verdicts name the identity each new flow was judged as.
    let verdicts = node_agent::datapath::KernelMaps::open(&node.pins.0)
        .and_then(|m| m.verdicts())
        .expect("verdicts");
    let flows = |peer: u32, verdict: &str| {
        verdicts
            .iter()
            .filter(|v| v.endpoint == 1 << 16 | 300 && v.peer == peer && v.verdict == verdict)
            .map(|v| v.flows)
            .sum::<u64>()
    };
    assert!(flows(1 << 16 | 301, "allowed") >= 2, "{verdicts:?}");
    assert!(flows(2 << 16 | 300, "allowed") >= 1, "{verdicts:?}");
    assert!(flows(2 << 16 | 300, "denied") >= 1, "{verdicts:?}");
    assert!(flows(1 << 16 | 302, "denied") >= 1, "{verdicts:?}");
    assert!(flows(0, "unknown_identity") >= 1, "{verdicts:?}");
    assert_eq!(flows(1 << 16 | 302, "allowed"), 0, "{verdicts:?}");
    eventually("drop metrics", Duration::from_secs(10), || {
        let m = node.metrics()?;
        (metric(&m, "raftmesh_agent_drops_total{reason=\"policy_denied\"}")? >= 2.0
            && metric(
                &m,
                "raftmesh_agent_drops_total{reason=\"unknown_identity\"}",
            )? >= 1.0)
            .then_some(())
    });

    // Removing the policy stops enforcement: the denied identity gets through.
    let (key, _) = policy();
    node.write(vec![(key, None)]);
    node.wait_maps("no enforcement", |t| {
        t.enforced.is_empty() && t.rules.is_empty()
    });
    assert!(ok(&node.probe("denied", &tcp)));
    node
}
