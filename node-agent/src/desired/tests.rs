//! Golden tests: records (local and mirrored remote) → the tables every node programs.

use mesh_api::records::Affinity;

use super::*;
use crate::maps::protocol_name;
use crate::testing::*;

const NOW: i64 = 1_000_000;

/// The services table, one line per slot: `vip:port/proto -> ip:port c<id> flags`.
fn golden(services: &BTreeMap<Frontend, Vec<Backend>>) -> Vec<String> {
    let mut out = Vec::new();
    for (f, backends) in services {
        let frontend = format!("{}:{}/{}", f.vip, f.port, protocol_name(f.proto));
        if backends.is_empty() {
            out.push(format!("{frontend} -> (none)"));
        }
        for b in backends {
            let mut flags = Vec::new();
            for (bit, name) in [
                (backend_flags::READY, "ready"),
                (backend_flags::TERMINATING, "terminating"),
                (backend_flags::LOCAL, "local"),
                (backend_flags::STALE, "stale"),
            ] {
                if b.flags & bit != 0 {
                    flags.push(name);
                }
            }
            out.push(format!(
                "{frontend} -> {}:{} c{} {}",
                b.ip,
                b.port,
                b.cluster_id,
                flags.join(",")
            ));
        }
    }
    out
}

/// The TCP lines of [`golden`].
fn tcp(m: &Mesh) -> Vec<String> {
    golden(&services(&m.state, &local(), NOW))
        .into_iter()
        .filter(|l| l.contains("/TCP"))
        .collect()
}

/// Three clusters with `demo/echo`: apps (this node's; not shared), infra (shared, target
/// port 9090), web (global but not shared).
fn three_clusters(affinity: Affinity) -> Mesh {
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2).cluster("web", 3);
    m.service("apps", "demo/echo", &["10.96.0.10"], true, false, affinity)
        .slice(
            "apps",
            "demo/echo",
            "a",
            8080,
            &[ready("10.1.0.11"), not_ready("10.1.0.12")],
        )
        .global("infra", "demo/echo", "10.100.0.10")
        .slice("infra", "demo/echo", "x", 9090, &[ready("10.2.0.21")])
        .slice("infra", "demo/echo", "x.1", 9090, &[ready("10.2.0.22")])
        .service(
            "web",
            "demo/echo",
            &["10.200.0.10"],
            true,
            false,
            Affinity::None,
        )
        .slice("web", "demo/echo", "w", 8080, &[ready("10.3.0.31")]);
    m
}

#[test]
fn global_service_is_the_union_of_sharing_clusters() {
    let m = three_clusters(Affinity::None);
    assert_eq!(
        golden(&services(&m.state, &local(), NOW)),
        [
            // 53/UDP sorts before 80/TCP.
            "10.96.0.10:53/UDP -> 10.1.0.11:5353 c1 ready,local",
            "10.96.0.10:53/UDP -> 10.2.0.21:5353 c2 ready",
            "10.96.0.10:53/UDP -> 10.2.0.22:5353 c2 ready",
            // This cluster's backends serve it although it is not shared; web's are not
            // offered (shared: false); infra's use infra's target port.
            "10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local",
            "10.96.0.10:80/TCP -> 10.2.0.21:9090 c2 ready",
            "10.96.0.10:80/TCP -> 10.2.0.22:9090 c2 ready",
        ]
    );
}

#[test]
fn only_this_clusters_global_services_are_programmed() {
    let mut m = three_clusters(Affinity::None);
    // Not global here: the CNI's, even though other clusters export it.
    m.service(
        "apps",
        "demo/echo",
        &["10.96.0.10"],
        false,
        true,
        Affinity::None,
    );
    // Global elsewhere only: no VIP on this cluster.
    m.global("infra", "demo/other", "10.100.0.11");
    assert_eq!(
        golden(&services(&m.state, &local(), NOW)),
        Vec::<String>::new()
    );
}

#[test]
fn affinity_prefers_its_side_while_any_is_ready() {
    let m = three_clusters(Affinity::Local);
    assert_eq!(
        tcp(&m),
        ["10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local"]
    );

    let mut m = three_clusters(Affinity::Remote);
    assert_eq!(
        tcp(&m),
        [
            "10.96.0.10:80/TCP -> 10.2.0.21:9090 c2 ready",
            "10.96.0.10:80/TCP -> 10.2.0.22:9090 c2 ready",
        ]
    );
    // No remote backend ready: the local ones serve.
    m.slice("infra", "demo/echo", "x", 9090, &[not_ready("10.2.0.21")])
        .slice("infra", "demo/echo", "x.1", 9090, &[not_ready("10.2.0.22")]);
    assert_eq!(
        tcp(&m),
        ["10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local"]
    );
}

#[test]
fn terminating_backends_serve_only_when_nothing_is_ready() {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .global("apps", "demo/echo", "10.96.0.10")
        .slice(
            "apps",
            "demo/echo",
            "a",
            8080,
            &[ready("10.1.0.11"), draining("10.1.0.12")],
        );
    assert_eq!(
        tcp(&m),
        ["10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local"]
    );
    m.slice(
        "apps",
        "demo/echo",
        "a",
        8080,
        &[not_ready("10.1.0.11"), draining("10.1.0.12")],
    );
    assert_eq!(
        tcp(&m),
        ["10.96.0.10:80/TCP -> 10.1.0.12:8080 c1 terminating,local"]
    );
    // Nothing usable: an empty slot list, which refuses connects.
    m.slice("apps", "demo/echo", "a", 8080, &[not_ready("10.1.0.11")]);
    assert_eq!(tcp(&m), ["10.96.0.10:80/TCP -> (none)"]);
}

#[test]
fn a_stale_remote_is_the_last_resort_before_terminating_backends() {
    let mut m = three_clusters(Affinity::None);
    // infra's mirror lost its watch 31 s ago (stale after 30 s).
    m.remote_status("infra", false, NOW - 31_000);
    assert_eq!(
        tcp(&m),
        ["10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local"]
    );
    // Disconnected, but not for long: still fresh.
    m.remote_status("infra", false, NOW - 5_000);
    assert_eq!(tcp(&m).len(), 3);
    // Stale, and no local backend ready (one draining): the stale remote's ready backends
    // come before the terminating one.
    m.remote_status("infra", false, NOW - 60_000);
    m.slice("apps", "demo/echo", "a", 8080, &[draining("10.1.0.11")]);
    assert_eq!(
        tcp(&m),
        [
            "10.96.0.10:80/TCP -> 10.2.0.21:9090 c2 ready,stale",
            "10.96.0.10:80/TCP -> 10.2.0.22:9090 c2 ready,stale",
        ]
    );
}

#[test]
fn backends_on_a_remote_node_that_answers_no_probe_are_a_last_resort() {
    let mut m = three_clusters(Affinity::None);
    // infra's pods 10.2.0.21 on node-1, 10.2.0.22 on node-2 (as the ipcache places them).
    m.node("infra", "node-1", "172.20.1.1")
        .node("infra", "node-2", "172.20.1.2")
        .pod_on("infra", "10.2.0.21", 100, "172.20.1.1")
        .pod_on("infra", "10.2.0.22", 100, "172.20.1.2");
    assert_eq!(tcp(&m).len(), 3);
    // node-1 answers no probe: its backend leaves the tier; node-2's stays.
    m.state.unreachable = crate::reach::Unreachable {
        nodes: BTreeMap::from([("infra".into(), BTreeSet::from(["node-1".into()]))]),
        ..Default::default()
    };
    assert_eq!(
        tcp(&m),
        [
            "10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local",
            "10.96.0.10:80/TCP -> 10.2.0.22:9090 c2 ready",
        ]
    );
    // The whole cluster answers none: local only; and with nothing local ready, the
    // unreachable backends rather than none.
    m.state.unreachable.clusters.insert("infra".into());
    m.state
        .unreachable
        .nodes
        .get_mut("infra")
        .unwrap()
        .insert("node-2".into());
    assert_eq!(
        tcp(&m),
        ["10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local"]
    );
    m.slice("apps", "demo/echo", "a", 8080, &[not_ready("10.1.0.11")]);
    assert_eq!(
        tcp(&m),
        [
            "10.96.0.10:80/TCP -> 10.2.0.21:9090 c2 ready,stale",
            "10.96.0.10:80/TCP -> 10.2.0.22:9090 c2 ready,stale",
        ]
    );
    // A host-network endpoint at the node's own address is on that node too.
    let mut m = three_clusters(Affinity::None);
    m.node("infra", "node-1", "10.2.0.21");
    m.state.unreachable.nodes =
        BTreeMap::from([("infra".into(), BTreeSet::from(["node-1".into()]))]);
    assert_eq!(
        tcp(&m),
        [
            "10.96.0.10:80/TCP -> 10.1.0.11:8080 c1 ready,local",
            "10.96.0.10:80/TCP -> 10.2.0.22:9090 c2 ready",
        ]
    );
}

#[test]
fn ipv6_is_skipped_and_counted() {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .service(
            "apps",
            "demo/echo",
            &["10.96.0.10", "fd00::10"],
            true,
            true,
            Affinity::None,
        )
        .slice(
            "apps",
            "demo/echo",
            "a",
            8080,
            &[ready("10.1.0.11"), ready("fd00:1::11")],
        );
    let lines = golden(&services(&m.state, &local(), NOW));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("10.96.0.10") && l.contains("10.1.0.11"))
    );
    assert_eq!(m.state.skipped.ipv6, 2);
}

#[test]
fn ipcache_maps_pods_and_nodes_with_cluster_ids() {
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    m.node("apps", "apps-1", "192.168.1.1")
        .node("apps", "apps-2", "192.168.1.2")
        .node("infra", "infra-1", "192.168.2.1")
        .pod("apps", "10.1.0.11", 1 << 16 | 300)
        .pod("infra", "10.2.0.21", 2 << 16 | 300);
    let got: Vec<String> = ipcache(&m.state, &local())
        .iter()
        .map(|(p, i)| {
            format!(
                "{}/{} {}/{} c{}",
                p.ip,
                p.len,
                i.identity >> 16,
                i.identity & 0xffff,
                i.cluster_id
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "10.1.0.11/32 1/300 c1",
            "10.2.0.21/32 2/300 c2",
            // This node: host (1); the others: their own cluster's remote-node (6).
            "192.168.1.1/32 1/1 c1",
            "192.168.1.2/32 1/6 c1",
            "192.168.2.1/32 2/6 c2",
        ]
    );
}

fn policy_mesh() -> Mesh {
    let ns = "io.kubernetes.pod.namespace=demo";
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    m.identity("apps", 1 << 16 | 6, &["reserved:remote-node"])
        .identity("infra", 2 << 16 | 6, &["reserved:remote-node"])
        .identity("apps", 1 << 16 | 300, &["app=db", ns])
        .identity("apps", 1 << 16 | 301, &["app=api", ns])
        .identity(
            "apps",
            1 << 16 | 302,
            &["app=api", "io.kubernetes.pod.namespace=other"],
        )
        .identity("infra", 2 << 16 | 300, &["app=api", ns])
        .identity("infra", 2 << 16 | 301, &["app=batch", ns])
        // infra has a policy too: it selects infra's endpoints, not this cluster's.
        .policy("infra", "demo/db", &[("app", "batch")], vec![]);
    m
}

fn rules_text(rules: &BTreeSet<Rule>) -> Vec<String> {
    let id = |i: u32| format!("{}/{}", i >> 16, i & 0xffff);
    rules
        .iter()
        .map(|r| {
            format!(
                "{} <- {} {}/{}",
                id(r.endpoint),
                id(r.peer),
                r.port,
                protocol_name(r.proto)
            )
        })
        .collect()
}

#[test]
fn policy_rules_follow_cluster_and_label_selectors() {
    let mut m = policy_mesh();
    m.policy(
        "apps",
        "demo/db",
        &[("app", "db")],
        vec![
            // app=api with no cluster named: this cluster's only.
            rule(&[], &[("app", "api")], &[(5432, "TCP")]),
            // app=api from every cluster, in the policy's namespace: apps' and infra's.
            rule(&["*"], &[("app", "api")], &[(8080, "TCP")]),
            // Anything in infra (but reserved identities) in this namespace, any port.
            rule(&["infra"], &[], &[]),
            // infra's nodes (a reserved identity, named): not apps' remote-node.
            rule(&["infra"], &[("reserved:remote-node", "")], &[(9100, "")]),
        ],
    );
    let (enforced, rules) = policy(&m.state, &local());
    assert_eq!(enforced, BTreeSet::from([1 << 16 | 300]));
    assert_eq!(
        rules_text(&rules),
        [
            "1/300 <- 1/1 0/any", // this node's host, always (kubelet probes)
            "1/300 <- 1/301 5432/TCP",
            "1/300 <- 1/301 8080/TCP",
            "1/300 <- 2/6 9100/any",
            "1/300 <- 2/300 0/any",
            "1/300 <- 2/300 8080/TCP",
            "1/300 <- 2/301 0/any",
        ]
    );
}

#[test]
fn a_policy_without_rules_denies_all_but_the_host() {
    let mut m = policy_mesh();
    m.policy("apps", "demo/db", &[("app", "db")], vec![]);
    let (enforced, rules) = policy(&m.state, &local());
    assert_eq!(enforced, BTreeSet::from([1 << 16 | 300]));
    assert_eq!(rules_text(&rules), ["1/300 <- 1/1 0/any"]);
    // A namespace label in the peer selector lifts the same-namespace default.
    m.policy(
        "apps",
        "demo/db",
        &[("app", "db")],
        vec![rule(
            &["apps"],
            &[("io.kubernetes.pod.namespace", "other")],
            &[(5432, "TCP")],
        )],
    );
    let (_, rules) = policy(&m.state, &local());
    assert_eq!(
        rules_text(&rules),
        ["1/300 <- 1/1 0/any", "1/300 <- 1/302 5432/TCP"]
    );
}

#[test]
fn a_remote_cannot_claim_this_clusters_addresses_or_identities() {
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    m.pod("apps", "10.1.0.11", 1 << 16 | 300)
        // infra claims our pod's address as one of its nodes…
        .node("infra", "infra-1", "10.1.0.11")
        // …maps its own pod to our identity number, another to its nodes' identity…
        .pod("infra", "10.2.0.21", 1 << 16 | 300)
        .pod("infra", "10.2.0.22", 2 << 16 | 6)
        // …and publishes an identity carrying our cluster id.
        .identity(
            "infra",
            1 << 16 | 999,
            &["app=api", "io.kubernetes.pod.namespace=demo"],
        )
        .identity(
            "apps",
            1 << 16 | 300,
            &["app=db", "io.kubernetes.pod.namespace=demo"],
        )
        .policy(
            "apps",
            "demo/db",
            &[("app", "db")],
            vec![rule(&[], &[("app", "api")], &[])],
        );
    let cache = ipcache(&m.state, &local());
    let entry = |ip: &str| {
        cache
            .get(&Prefix {
                ip: ip.parse().unwrap(),
                len: 32,
            })
            .copied()
    };
    assert_eq!(entry("10.1.0.11").map(|i| i.identity), Some(1 << 16 | 300));
    assert_eq!(entry("10.2.0.21"), None);
    assert_eq!(entry("10.2.0.22"), None, "a pod is no node");
    // The single-address path agrees with the full computation.
    for ip in ["10.1.0.11", "10.2.0.21", "10.2.0.22"] {
        assert_eq!(
            ipcache_entry(&m.state, &local(), ip.parse().unwrap()),
            entry(ip),
            "{ip}"
        );
    }
    let (_, rules) = policy(&m.state, &local());
    assert_eq!(
        rules_text(&rules),
        ["1/300 <- 1/1 0/any"],
        "infra's forged identity is no peer"
    );
}

/// Finding 3 of the trust review: a remote labels its reserved identities (and a pod identity)
/// with the labels of one of our namespaces' pods, or with reserved labels. Only the labels
/// this agent defines count.
#[test]
fn a_remote_cannot_relabel_reserved_identities() {
    let ns = "io.kubernetes.pod.namespace=demo";
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    m.identity("apps", 1 << 16 | 300, &["app=db", ns])
        // infra's remote-node and world, labelled as demo's frontends…
        .identity("infra", 2 << 16 | 6, &["app=frontend", ns])
        .identity("infra", 2 << 16 | 2, &["app=frontend", ns])
        // …an unused reserved number, labelled the same…
        .identity("infra", 2 << 16 | 200, &["app=frontend", ns])
        // …and a pod identity that claims to be infra's nodes.
        .identity("infra", 2 << 16 | 400, &["reserved:remote-node"])
        .policy(
            "apps",
            "demo/db",
            &[("app", "db")],
            vec![
                rule(&["*"], &[("app", "frontend")], &[(5432, "TCP")]),
                rule(
                    &["infra"],
                    &[("reserved:remote-node", "")],
                    &[(9100, "TCP")],
                ),
            ],
        );
    let (_, rules) = policy(&m.state, &local());
    assert_eq!(
        rules_text(&rules),
        [
            "1/300 <- 1/1 0/any",
            // infra's nodes by the agent's own label, whether or not a record says so.
            "1/300 <- 2/6 9100/TCP",
        ]
    );
    // The same with no reserved records at all: the agent knows them.
    let mut bare = Mesh::default();
    bare.cluster("apps", 1).cluster("infra", 2);
    bare.identity("apps", 1 << 16 | 300, &["app=db", ns])
        .policy(
            "apps",
            "demo/db",
            &[("app", "db")],
            vec![rule(
                &["infra"],
                &[("reserved:remote-node", "")],
                &[(9100, "TCP")],
            )],
        );
    let (_, rules) = policy(&bare.state, &local());
    assert_eq!(
        rules_text(&rules),
        ["1/300 <- 1/1 0/any", "1/300 <- 2/6 9100/TCP"]
    );
}

/// Finding 3: no `fromClusters` is this cluster only; a remote is admitted only when named or
/// by `"*"`.
#[test]
fn no_from_clusters_means_this_cluster_only() {
    let mut m = policy_mesh();
    m.policy(
        "apps",
        "demo/db",
        &[("app", "db")],
        vec![rule(&[], &[], &[])],
    );
    let (_, rules) = policy(&m.state, &local());
    assert_eq!(
        rules_text(&rules),
        [
            "1/300 <- 1/1 0/any",
            "1/300 <- 1/300 0/any",
            "1/300 <- 1/301 0/any"
        ]
    );
    m.policy(
        "apps",
        "demo/db",
        &[("app", "db")],
        vec![rule(&["*"], &[], &[])],
    );
    let (_, rules) = policy(&m.state, &local());
    assert_eq!(
        rules_text(&rules),
        [
            "1/300 <- 1/1 0/any",
            "1/300 <- 1/300 0/any",
            "1/300 <- 1/301 0/any",
            "1/300 <- 2/300 0/any",
            "1/300 <- 2/301 0/any",
        ]
    );
}

/// Finding 2 of the trust review: a remote's nodes claim addresses they may not — special
/// ones, this cluster's pod and service ranges, another remote's pod range — as InternalIP or
/// ExternalIP. None becomes a `remote-node` entry or a WireGuard endpoint; honest addresses
/// (an EKS-like node inside its own cluster's pod range too) still do.
#[test]
fn a_remote_node_cannot_claim_special_or_foreign_addresses() {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .cluster_cidrs("apps", 1, &["10.1.0.0/16"], &["10.96.0.0/12"]);
    m.cluster("infra", 2)
        .cluster_cidrs("infra", 2, &["10.2.0.0/16"], &[]);
    // hostile's pods and nodes share a VPC range, as with the AWS VPC CNI.
    m.cluster("hostile", 3)
        .cluster_cidrs("hostile", 3, &["192.168.30.0/24"], &[]);
    m.node("apps", "apps-1", "192.168.1.1")
        .node_with("infra", "infra-1", "192.168.2.1", None, &["10.2.1.0/24"])
        .node_with(
            "hostile",
            "h-honest",
            "192.168.30.5",
            Some("198.51.100.7"),
            &[],
        )
        .node_with("hostile", "h-loopback", "127.0.0.1", None, &[])
        .node_with(
            "hostile",
            "h-linklocal",
            "192.168.30.6",
            Some("169.254.169.254"),
            &[],
        )
        .node_with("hostile", "h-our-pod", "10.1.0.11", None, &[])
        .node_with("hostile", "h-our-service", "10.96.0.10", None, &[])
        .node_with("hostile", "h-infra-pod", "10.2.1.7", None, &[])
        .node_with("hostile", "h-multicast", "224.0.0.5", None, &[]);
    for (seed, node) in [
        "h-honest",
        "h-loopback",
        "h-linklocal",
        "h-our-pod",
        "h-our-service",
        "h-infra-pod",
        "h-multicast",
    ]
    .into_iter()
    .enumerate()
    {
        m.nodekey("hostile", node, seed as u8 + 100, 51871);
    }
    let cache = ipcache(&m.state, &local());
    let has = |ip: &str| {
        cache.contains_key(&Prefix {
            ip: ip.parse().unwrap(),
            len: 32,
        })
    };
    assert!(has("192.168.30.5") && has("198.51.100.7") && has("192.168.30.6"));
    for bad in [
        "127.0.0.1",
        "169.254.169.254",
        "10.1.0.11",
        "10.96.0.10",
        "10.2.1.7",
        "224.0.0.5",
    ] {
        assert!(!has(bad), "{bad} is refused");
        assert_eq!(
            ipcache_entry(&m.state, &local(), bad.parse().unwrap()),
            None,
            "{bad}"
        );
    }
    let refused: Vec<String> = refused_node_ips(&m.state, &local())
        .into_iter()
        .map(|(c, n, ip, why)| format!("{c}/{n} {ip}: {why}"))
        .collect();
    assert_eq!(
        refused,
        [
            "hostile/h-infra-pod 10.2.1.7: inside a pod or service range of infra",
            "hostile/h-linklocal 169.254.169.254: link-local",
            "hostile/h-loopback 127.0.0.1: loopback",
            "hostile/h-multicast 224.0.0.5: multicast",
            "hostile/h-our-pod 10.1.0.11: inside a pod or service range of apps",
            "hostile/h-our-service 10.96.0.10: inside a pod or service range of apps",
        ]
    );
    // As WireGuard endpoints: the honest one, and none of the others.
    let (peers, _) = crate::wg::peers::desired(&m.state, &local(), &test_key(1), false);
    let endpoints: BTreeMap<&str, Option<String>> = peers
        .values()
        .filter(|p| p.cluster == "hostile")
        .map(|p| (p.node.as_str(), p.endpoint.map(|e| e.ip().to_string())))
        .collect();
    assert_eq!(endpoints["h-honest"].as_deref(), Some("198.51.100.7"));
    for bad in [
        "h-loopback",
        "h-linklocal",
        "h-our-pod",
        "h-our-service",
        "h-infra-pod",
    ] {
        assert_eq!(endpoints[bad], None, "{bad}");
    }
}

/// Finding 2: a remote with more nodes or pod addresses than the limits has none of them
/// programmed (not some, by arrival order), and is back when within them.
#[test]
fn a_remote_over_the_limits_is_left_out_whole() {
    let mut m = Mesh::default();
    m.cluster("apps", 1).cluster("infra", 2);
    m.node("apps", "apps-1", "192.168.1.1")
        .node("apps", "apps-2", "192.168.1.2")
        .node("apps", "apps-3", "192.168.1.3")
        .pod("apps", "10.1.0.11", 1 << 16 | 300)
        .pod("apps", "10.1.0.12", 1 << 16 | 300)
        .pod("apps", "10.1.0.13", 1 << 16 | 300);
    m.node("infra", "infra-1", "192.168.2.1")
        .node("infra", "infra-2", "192.168.2.2")
        .pod("infra", "10.2.0.21", 2 << 16 | 300)
        .pod("infra", "10.2.0.22", 2 << 16 | 300);
    let mut tight = local();
    tight.limits = Limits { nodes: 2, pods: 2 };
    let count = |m: &Mesh, l: &Local, cluster: u16| {
        ipcache(&m.state, l)
            .values()
            .filter(|i| i.cluster_id == cluster)
            .count()
    };
    // At the limits: everything; this cluster is never limited.
    assert_eq!(count(&m, &tight, 2), 4);
    assert_eq!(count(&m, &tight, 1), 6);
    assert!(over_limits(&m.state, &tight).is_empty());
    m.pod("infra", "10.2.0.23", 2 << 16 | 300);
    assert_eq!(
        over_limits(&m.state, &tight),
        BTreeMap::from([(
            "infra",
            Over {
                nodes: false,
                pods: true
            }
        )])
    );
    assert_eq!(count(&m, &tight, 2), 2, "its nodes only");
    assert_eq!(
        ipcache_entry(&m.state, &tight, "10.2.0.21".parse().unwrap()),
        None
    );
    m.node_with("infra", "infra-3", "192.168.2.3", None, &["10.2.3.0/24"]);
    assert_eq!(count(&m, &tight, 2), 0);
    m.nodekey("infra", "infra-1", 11, 51871);
    let (peers, _) = crate::wg::peers::desired(&m.state, &tight, &test_key(1), false);
    assert!(peers.is_empty(), "no peer of a remote over the node limit");
    let (peers, _) = crate::wg::peers::desired(&m.state, &local(), &test_key(1), false);
    assert_eq!(peers.len(), 1, "within the default limits");
}

/// Finding 2: a remote claims another remote's node address (its name sorts first, and it
/// publishes later). The earlier node record keeps the address; the claim is refused for the
/// ipcache and as a WireGuard endpoint (handshakes would be aimed at infra's node).
#[test]
fn a_remote_cannot_take_another_remotes_node_address() {
    let mut m = Mesh::default();
    m.cluster("apps", 1)
        .cluster("infra", 2)
        .cluster("hostile", 3);
    m.node("infra", "infra-1", "192.168.2.1")
        .nodekey("infra", "infra-1", 11, 51871)
        .node("hostile", "evil", "192.168.2.1")
        .nodekey("hostile", "evil", 12, 51871);
    let entry = ipcache_entry(&m.state, &local(), "192.168.2.1".parse().unwrap());
    assert_eq!(entry.map(|i| i.cluster_id), Some(2));
    assert_eq!(
        ipcache(&m.state, &local())[&Prefix {
            ip: "192.168.2.1".parse().unwrap(),
            len: 32
        }]
            .cluster_id,
        2
    );
    let refused: Vec<String> = refused_node_ips(&m.state, &local())
        .into_iter()
        .map(|(c, n, ip, why)| format!("{c}/{n} {ip}: {why}"))
        .collect();
    assert_eq!(
        refused,
        ["hostile/evil 192.168.2.1: a node address of infra"]
    );
    let (peers, _) = crate::wg::peers::desired(&m.state, &local(), &test_key(1), false);
    assert_eq!(peers[&test_key(12)].endpoint, None);
    assert_eq!(
        peers[&test_key(11)].endpoint,
        Some("192.168.2.1:51871".parse().unwrap())
    );
}

/// apps (this node's, range 198.18.0.0/16) and infra; `demo/echo` exported by infra only,
/// with no Service of that name in apps.
fn exported_by_infra() -> Mesh {
    let mut m = Mesh::default();
    m.cluster_in_clusterset("apps", 1, "198.18.0.0/16")
        .cluster("infra", 2)
        .exported("infra", "demo/echo", &["10.100.0.10"], 100)
        .slice(
            "infra",
            "demo/echo",
            "x",
            9090,
            &[ready("10.2.0.21"), ready("10.2.0.22")],
        );
    m
}

fn clusterset_ip(m: &Mesh, name: &str) -> Ipv4Addr {
    m.state.clusterset.ips[name]
}

#[test]
fn an_import_is_programmed_at_its_clusterset_ip_with_no_local_service() {
    let mut m = exported_by_infra();
    let changed = m.state.refresh_clusterset("apps");
    assert_eq!(changed, BTreeSet::from(["demo/echo".to_owned()]));
    let ip = clusterset_ip(&m, "demo/echo");
    let keyed = BTreeMap::from([(("demo".to_owned(), "echo".to_owned()), 100)]);
    let range = "198.18.0.0/16".parse().unwrap();
    assert_eq!(
        ip,
        mesh_api::clusterset::allocate(&range, &keyed)[&("demo".to_owned(), "echo".to_owned())]
    );
    assert_eq!(
        tcp(&m),
        [
            format!("{ip}:80/TCP -> 10.2.0.21:9090 c2 ready"),
            format!("{ip}:80/TCP -> 10.2.0.22:9090 c2 ready"),
        ]
    );
    // Nothing changed: nothing to recompute.
    assert!(m.state.refresh_clusterset("apps").is_empty());
}

#[test]
fn exported_in_both_the_import_has_both_and_the_local_vip_stays_global() {
    let mut m = exported_by_infra();
    m.exported("apps", "demo/echo", &["10.96.0.10"], 200).slice(
        "apps",
        "demo/echo",
        "a",
        8080,
        &[ready("10.1.0.11")],
    );
    m.state.refresh_clusterset("apps");
    let ip = clusterset_ip(&m, "demo/echo");
    let lines = tcp(&m);
    for vip in [ip.to_string(), "10.96.0.10".to_owned()] {
        for backend in ["10.1.0.11:8080 c1 ready,local", "10.2.0.21:9090 c2 ready"] {
            let line = format!("{vip}:80/TCP -> {backend}");
            assert!(lines.contains(&line), "{line} not in {lines:#?}");
        }
    }
    // Unexported in infra: only apps' backends remain behind the ClusterSetIP.
    m.service(
        "infra",
        "demo/echo",
        &["10.100.0.10"],
        false,
        true,
        Affinity::None,
    );
    let changed = m.state.refresh_clusterset("apps");
    assert!(changed.contains("demo/echo"));
    assert_eq!(
        clusterset_ip(&m, "demo/echo"),
        ip,
        "a surviving import keeps its address"
    );
    let lines: Vec<String> = tcp(&m)
        .into_iter()
        .filter(|l| l.starts_with(&ip.to_string()))
        .collect();
    assert_eq!(
        lines,
        [format!("{ip}:80/TCP -> 10.1.0.11:8080 c1 ready,local")]
    );
    // Unexported everywhere: no import, no frontend at the ClusterSetIP.
    m.service(
        "apps",
        "demo/echo",
        &["10.96.0.10"],
        false,
        true,
        Affinity::None,
    );
    m.state.refresh_clusterset("apps");
    assert!(m.state.clusterset.imports.is_empty() && m.state.clusterset.ips.is_empty());
    assert!(
        !tcp(&m).iter().any(|l| l.starts_with(&ip.to_string())),
        "{:#?}",
        tcp(&m)
    );
}

#[test]
fn a_headless_import_and_a_cluster_without_a_range_get_no_clusterset_ip() {
    let mut m = Mesh::default();
    m.cluster_in_clusterset("apps", 1, "198.18.0.0/16")
        .cluster("infra", 2);
    m.export_with(
        "infra",
        "demo/db",
        &[],
        100,
        true,
        vec![port("pg", 5432, "TCP")],
    );
    m.state.refresh_clusterset("apps");
    assert_eq!(
        m.state.clusterset.imports["demo/db"].type_,
        mesh_api::clusterset::ImportType::Headless
    );
    assert!(m.state.clusterset.ips.is_empty());

    let mut m = exported_by_infra();
    m.cluster("apps", 1); // The cluster record again, without the range.
    m.state.refresh_clusterset("apps");
    assert!(m.state.clusterset.imports.contains_key("demo/echo"));
    assert!(m.state.clusterset.ips.is_empty());
    assert!(tcp(&m).is_empty(), "{:#?}", tcp(&m));
}

#[test]
fn a_stale_exporting_remote_is_the_last_resort_behind_the_clusterset_ip() {
    let mut m = exported_by_infra();
    m.exported("apps", "demo/echo", &[], 200)
        .slice("apps", "demo/echo", "a", 8080, &[ready("10.1.0.11")])
        .remote_status("infra", false, NOW - 60_000);
    m.state.refresh_clusterset("apps");
    let ip = clusterset_ip(&m, "demo/echo");
    assert_eq!(
        tcp(&m),
        [format!("{ip}:80/TCP -> 10.1.0.11:8080 c1 ready,local")]
    );
}
