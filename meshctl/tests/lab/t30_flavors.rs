//! The default lab's platform flavors (issue 25): apps is built like Talos (Flannel's `cni0`
//! bridge, `veth…` ports, nftables masquerade), infra like EKS (the VPC CNI's `eni…` veths,
//! /32 routes, a secondary ENI's table, its SNAT chain, legacy tc as on Linux 6.1). Judged with
//! tools we did not write: nft and ip in the nodes' namespaces, curl for the agents' health, and
//! the receiving agent's own record of the identity it judged (`node-agent maps`).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::support::{PATIENCE, TestLab, eventually, in_ns, sibling};

const ECHO: &str = "10.255.1.10:80";
const INFRA_ECHO: &str = "10.255.2.10:80";
const DB_VIP: &str = "10.255.1.11:5432";
/// infra/db's own address (node-2's third pod) and apps/echo-1's.
const DB: &str = "10.2.2.12:8080";
const APPS_ECHO_1: &str = "10.1.1.10:8080";

struct Flavored {
    lab: TestLab,
    tag: String,
}

impl Flavored {
    fn node(&self, cluster: &str, node: &str) -> String {
        format!("{}-{cluster}-{node}", self.tag)
    }

    /// `node-agent maps -o json` of a node's pins.
    fn maps(&self, cluster: &str, node: &str) -> Value {
        let pins = format!("/sys/fs/bpf/raftmesh-lab-{}/{cluster}-{node}", self.tag);
        let out = in_ns(
            &self.node(cluster, node),
            sibling("node-agent"),
            &["maps", "-o", "json", "--bpffs", &pins],
        );
        serde_json::from_str(&out).unwrap()
    }

    /// The agent's `/healthz` body and its metrics.
    fn health(&self, cluster: &str, node: &str) -> (String, String) {
        let ns = self.node(cluster, node);
        let body = in_ns(&ns, "curl", &["-s", "127.0.0.1:9964/healthz"]);
        let metrics = in_ns(&ns, "curl", &["-s", "127.0.0.1:9964/metrics"]);
        (body, metrics)
    }

    /// Packets the fabric saw between the clusters' pod ranges in the clear, both ways.
    fn clear(&self) -> u64 {
        let text = in_ns(
            &format!("{}-fabric", self.tag),
            "nft",
            &["list", "table", "ip", "raftmesh_lab_watch"],
        );
        ["clear apps infra", "clear infra apps"]
            .iter()
            .map(|c| lab::nft_packets(&text, c).unwrap_or_else(|| panic!("{c}: {text}")))
            .sum()
    }
}

/// The identity infra's agent on node-2 gives `ip` (ipcache), and the flows it judged for
/// infra/db: (source identity, verdict) → flows.
fn identity_of(maps: &Value, ip: &str) -> u64 {
    maps["ipcache"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == format!("{ip}/32").as_str())
        .unwrap_or_else(|| panic!("{ip} not in {}", maps["ipcache"]))["identity"]
        .as_u64()
        .unwrap()
}

fn verdicts(maps: &Value, endpoint: u64) -> BTreeMap<(u64, String), u64> {
    maps["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["endpoint"] == endpoint)
        .map(|v| {
            (
                (
                    v["peer"].as_u64().unwrap(),
                    v["verdict"].as_str().unwrap().to_owned(),
                ),
                v["flows"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn talos_and_eks_flavored_clusters_carry_pods_policy_and_tunnels() {
    let mut lab = TestLab::new("f");
    lab.up(&[]);
    let status = lab.status();
    let tag = format!("rl{}", status["slot"]);
    let f = Flavored { lab, tag };
    let lab = &f.lab;

    // The nodes are built as the platforms build them.
    assert_eq!(status["clusters"][0]["flavor"], "talos");
    assert_eq!(status["clusters"][1]["flavor"], "eks");
    let interfaces = |i: usize| -> Vec<String> {
        status["clusters"][i]["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["interface"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        interfaces(0).iter().all(|i| i.starts_with("veth")),
        "{:?}",
        interfaces(0)
    );
    assert!(
        interfaces(1).iter().all(|i| i.starts_with("eni")),
        "{:?}",
        interfaces(1)
    );
    let apps1 = f.node("apps", "node-1");
    let ruleset = in_ns(&apps1, "nft", &["list", "ruleset"]);
    assert!(
        ruleset.contains("table ip flannel-ipv4") && ruleset.contains("masquerade"),
        "{ruleset}"
    );
    let infra2 = f.node("infra", "node-2");
    let snat = in_ns(
        &infra2,
        "iptables",
        &["-w", "-t", "nat", "-S", "AWS-SNAT-CHAIN-0"],
    );
    assert!(snat.contains("-j SNAT --to-source 192.168.2.2"), "{snat}");
    let rules = in_ns(&infra2, "ip", &["rule"]);
    assert!(rules.contains("1536:\tfrom 10.2.2.11 lookup 2"), "{rules}");
    // ...and the agents attach and say so: tcx on Talos, legacy tc on the EKS (6.1) nodes;
    // every pod of every node is enforced; no node is degraded.
    for (cluster, mode) in [("apps", "tcx"), ("infra", "tc")] {
        for node in ["node-1", "node-2"] {
            let (body, metrics) = eventually("a healthy agent", PATIENCE, || {
                let (body, metrics) = f.health(cluster, node);
                (body == "ok\n").then_some((body, metrics))
            });
            assert_eq!(body, "ok\n");
            assert!(
                metrics.contains(&format!(
                    "raftmesh_agent_policy_attach{{mode=\"{mode}\"}} 1"
                )),
                "{cluster}/{node}: {metrics}"
            );
            assert!(
                metrics.contains("raftmesh_agent_pods_unenforced 0"),
                "{metrics}"
            );
            assert!(
                metrics.contains("raftmesh_agent_masquerade_exemption_ok 1"),
                "{metrics}"
            );
            let maps = f.maps(cluster, node);
            assert!(
                maps["policyAttach"]["modes"]
                    .as_str()
                    .unwrap()
                    .starts_with(mode),
                "{cluster}/{node}: {}",
                maps["policyAttach"]
            );
        }
    }

    // 1. Every client reaches demo/echo answered by both clusters, and no pod traffic crosses
    //    the fabric in the clear (it all goes through the tunnels: through the secondary ENI
    //    pod infra/client's too).
    let clear_before = f.clear();
    for (client, vip) in [
        ("apps/client", ECHO),
        ("apps/other", ECHO),
        ("infra/client", INFRA_ECHO),
    ] {
        let (answers, failures) =
            eventually(&format!("{client} answered by both"), PATIENCE, || {
                let (a, f) = lab.clusters_answering(client, vip, 20);
                (f == 0 && a.len() == 2).then_some((a, f))
            });
        assert_eq!(failures, 0, "{client}: {answers:?}");
    }
    assert_eq!(
        f.clear(),
        clear_before,
        "pod traffic crossed the fabric in the clear"
    );

    // infra's policy admits apps' client and denies apps' other: judged on infra/db's node by
    // the identity each flow arrived with, not only by a timeout.
    let (db, failures) = lab.probe("apps/client", DB_VIP, 3);
    assert_eq!((db.get("infra/db"), failures), (Some(&3), 0), "{db:?}");
    let (db, failures) = lab.probe("apps/other", DB_VIP, 2);
    assert_eq!(
        (db.len(), failures),
        (0, 2),
        "apps/other reached infra/db: {db:?}"
    );
    let maps = f.maps("infra", "node-2");
    let db_id = identity_of(&maps, "10.2.2.12");
    let client_id = identity_of(&maps, "10.1.1.11");
    let other_id = identity_of(&maps, "10.1.2.11");
    let judged = verdicts(&maps, db_id);
    assert!(
        judged.get(&(client_id, "allowed".into())) >= Some(&3),
        "{judged:?}"
    );
    assert!(
        judged.get(&(other_id, "denied".into())) >= Some(&2),
        "{judged:?}"
    );
    assert_eq!(
        judged.get(&(client_id, "denied".into())),
        None,
        "{judged:?}"
    );
    assert_eq!(f.clear(), clear_before);

    // 2a. The exemption and the routing rules, removed by hand, are back at the next
    //     reconcile.
    in_ns(&apps1, "nft", &["delete", "table", "ip", "raftmesh"]);
    eventually("the masquerade exemption restored", PATIENCE, || {
        let (_, metrics) = f.health("apps", "node-1");
        let table = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{apps1}"))
            .args(["nft", "list", "table", "ip", "raftmesh"])
            .output()
            .unwrap();
        (String::from_utf8_lossy(&table.stdout).contains("snat to ip saddr")
            && metrics.contains("raftmesh_agent_masquerade_exemption_restored_total 1"))
        .then_some(())
    });
    for cidr in ["10.1.1.0/24", "10.1.2.0/24"] {
        in_ns(
            &infra2,
            "ip",
            &[
                "rule", "del", "to", cidr, "lookup", "main", "priority", "100",
            ],
        );
    }
    eventually("the routing rules restored", PATIENCE, || {
        let rules = in_ns(&infra2, "ip", &["rule"]);
        (rules.matches("lookup main proto 109").count() == 2).then_some(())
    });
    let (db, failures) = lab.probe("apps/client", DB, 2);
    assert_eq!((db.get("infra/db"), failures), (Some(&2), 0), "{db:?}");

    // 2b. What breaks without the exemption: with apps/node-1's agent stopped and the table
    //     gone, Flannel masquerades apps/client to its node's address on the way into the
    //     tunnel (counted after NAT), infra's WireGuard drops what is not from apps' pod
    //     addresses, and infra's policy never sees apps/client: the connection fails.
    lab.ok(&["lab", "kill", "apps/node-1"]);
    in_ns(&apps1, "nft", &["delete", "table", "ip", "raftmesh"]);
    let watch = "table ip labwatch {\n\tchain post {\n\t\ttype filter hook postrouting priority srcnat + 10; policy accept;\n\t\tip saddr 192.168.1.1 ip daddr 10.2.2.12 counter comment \"masqueraded\"\n\t}\n}\n";
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{apps1}"))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), watch.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let allowed_before = judged
        .get(&(client_id, "allowed".into()))
        .copied()
        .unwrap_or(0)
        + 2;
    let (db, failures) = lab.probe("apps/client", DB, 2);
    assert_eq!(
        (db.len(), failures),
        (0, 2),
        "reached infra/db masqueraded: {db:?}"
    );
    let counted = in_ns(&apps1, "nft", &["list", "table", "ip", "labwatch"]);
    assert!(
        lab::nft_packets(&counted, "masqueraded").unwrap_or(0) >= 2,
        "apps/client's SYNs did not leave with the node's address: {counted}"
    );
    let judged = verdicts(&f.maps("infra", "node-2"), db_id);
    assert_eq!(
        judged
            .get(&(client_id, "allowed".into()))
            .copied()
            .unwrap_or(0),
        allowed_before,
        "{judged:?}"
    );
    in_ns(&apps1, "nft", &["delete", "table", "ip", "labwatch"]);
    lab.ok(&["lab", "start", "apps/node-1"]);
    eventually("apps/client reaching infra/db again", PATIENCE, || {
        let (db, failures) = lab.probe("apps/client", DB, 1);
        (failures == 0 && db.contains_key("infra/db")).then_some(())
    });

    // 2c. What breaks without the routing rules: infra/client is on node-2's secondary ENI,
    //     whose `from <pod> lookup 2` sends its traffic out of the node before the tunnel's
    //     routes are seen — in the clear across the fabric.
    lab.ok(&["lab", "kill", "infra/node-2"]);
    for cidr in ["10.1.1.0/24", "10.1.2.0/24"] {
        in_ns(
            &infra2,
            "ip",
            &[
                "rule", "del", "to", cidr, "lookup", "main", "priority", "100",
            ],
        );
    }
    let clear = f.clear();
    let _ = lab.probe("infra/client", APPS_ECHO_1, 2);
    assert!(
        f.clear() > clear,
        "the secondary ENI's traffic did not leave in the clear"
    );
    lab.ok(&["lab", "start", "infra/node-2"]);
    eventually("the rules back after the agent's restart", PATIENCE, || {
        let rules = in_ns(&infra2, "ip", &["rule"]);
        (rules.matches("lookup main proto 109").count() == 2).then_some(())
    });
    let clear = f.clear();
    let (echo, failures) = lab.probe("infra/client", APPS_ECHO_1, 3);
    assert_eq!(
        (echo.get("apps/echo-1"), failures),
        (Some(&3), 0),
        "{echo:?}"
    );
    assert_eq!(f.clear(), clear, "in the clear with the rules in place");
}
