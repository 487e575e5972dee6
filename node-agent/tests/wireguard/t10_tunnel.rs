//! Acceptance 1 and 4: pod traffic between clusters crosses the fabric only as WireGuard UDP;
//! the private key file is 0600 and appears in no log, metric or store key.

use std::os::unix::fs::PermissionsExt as _;

use crate::support::*;

#[test]
fn pods_of_two_clusters_talk_through_the_tunnels_only() {
    let mut mesh = mesh();
    let apps_pod = mesh.pod_ip("apps", "node-1");
    let infra_pods = [
        mesh.pod_ip("infra", "node-1"),
        mesh.pod_ip("infra", "node-2"),
    ];

    // Without tunnels the flat fabric carries pod traffic in the clear; the fabric filter
    // (only UDP to the WireGuard port between nodes, and API server traffic) stops it. So
    // what works afterwards went through the tunnels.
    mesh.wait_ping("apps", "node-1", infra_pods[0]);
    mesh.topo
        .only_tunnels_and_api_servers(WG_PORT, PROBE_PORT)
        .expect("fabric filter");
    assert!(
        !mesh.ping("apps", "node-1", infra_pods[0]),
        "the fabric filter lets plaintext pod traffic through"
    );
    let (_, dropped_before) = mesh.topo.fabric_counters().unwrap();
    assert!(
        dropped_before > 0,
        "the plaintext ping was not dropped at the fabric"
    );

    mesh.start_agents();
    mesh.wait_full_mesh();
    for ip in infra_pods {
        mesh.wait_ping("apps", "node-1", ip);
        mesh.wait_ping("apps", "node-2", ip);
    }
    mesh.wait_ping("infra", "node-2", apps_pod);
    // A host-network client (the node itself) gets replies too: its packets leave with the
    // node's pod-CIDR address, which the remote accepts from this peer.
    let from_host = mesh
        .node("apps", "node-1")
        .ns
        .command("ping")
        .args(["-c", "1", "-W", "2", &infra_pods[1].to_string()])
        .output()
        .unwrap();
    assert!(from_host.status.success(), "{from_host:?}");

    // TCP, both ways.
    mesh.serve("infra", "node-2");
    mesh.serve("apps", "node-1");
    let replies = eventually("TCP from apps to infra", PATIENCE, || {
        let r = mesh.tcp("apps", "node-2", infra_pods[1]);
        (r.len() == 3).then_some(r)
    });
    assert!(replies.iter().all(|r| r == "infra-node-2"), "{replies:?}");
    let replies = mesh.tcp("infra", "node-1", apps_pod);
    assert_eq!(replies, ["apps-node-1"; 3]);

    // Between nodes and pods, the fabric saw tunnel packets only: nothing more was dropped.
    let (tunnel, dropped) = mesh.topo.fabric_counters().unwrap();
    assert!(tunnel > 0, "no WireGuard UDP crossed the fabric");
    assert_eq!(
        dropped, dropped_before,
        "plaintext between nodes reached the fabric"
    );

    // Transfer counters grew on both ends, and the peers carry the nodes' pod CIDRs with
    // their endpoints.
    let infra1_key = mesh.published_key("apps", "infra", "node-1").unwrap();
    let peer = &mesh.wg_peers("apps", "node-1")[&infra1_key];
    assert!(peer.rx > 0 && peer.tx > 0, "{peer:?}");
    assert_eq!(peer.allowed_ips, "10.2.1.0/24");
    assert_eq!(peer.endpoint, format!("192.168.2.1:{WG_PORT}"));
    let link = mesh
        .node("apps", "node-1")
        .ns
        .ip(&["link", "show", &mesh.agent("apps", "node-1").interface])
        .unwrap();
    assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");

    // `node-agent wg -o json` names the peers and ages their counters; the metrics count
    // peers and bytes per cluster.
    let a = mesh.agent("apps", "node-1");
    let shown = |a: &Agent| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_node-agent"))
            .args([
                "wg",
                "-o",
                "json",
                "--wg-backend",
                "userspace",
                "--wg-interface",
            ])
            .arg(&a.interface)
            .arg("--state-dir")
            .arg(&a.state_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The names come from the agent's notes, written at its next tick.
    eventually("node-agent wg naming both peers", PATIENCE, || {
        let names: Vec<String> = shown(a)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["cluster"].as_str().unwrap(),
                    p["node"].as_str().unwrap()
                )
            })
            .collect();
        (names == ["infra/node-1", "infra/node-2"] || names == ["infra/node-2", "infra/node-1"])
            .then_some(())
    });
    let peer = shown(a)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "node-1")
        .cloned()
        .unwrap();
    assert_eq!(peer["publicKey"], infra1_key.as_str());
    assert_eq!(peer["allowedIps"], serde_json::json!(["10.2.1.0/24"]));
    assert!(peer["rxBytes"].as_u64().unwrap() > 0);
    // The age appears once the agent has seen the counters change between two of its ticks,
    // so keep traffic flowing while waiting (boringtun 0.7.1 sends no persistent keepalives:
    // an idle tunnel's counters stand still).
    let metrics = eventually("the WireGuard metrics", PATIENCE, || {
        mesh.ping("apps", "node-1", infra_pods[0]);
        let m = mesh.metrics("apps", "node-1");
        m.contains("raftmesh_agent_wg_transfer_age_seconds{cluster=\"infra\",node=\"node-1\"}")
            .then_some(m)
    });
    assert!(metrics.contains("raftmesh_agent_wg_peers 2"), "{metrics}");
    // Both infra nodes answer apps/node-1's reachability probes, as `node-agent wg` and the
    // metrics say.
    eventually("both peers shown answering probes", PATIENCE, || {
        let peers = shown(a)["peers"].as_array().unwrap().clone();
        peers.iter().all(|p| p["reachable"] == true).then_some(())
    });
    let m = mesh.metrics("apps", "node-1");
    for line in [
        "raftmesh_agent_remote_nodes_probed{cluster=\"infra\"} 2",
        "raftmesh_agent_remote_nodes_unreachable{cluster=\"infra\"} 0",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    assert!(
        metrics.contains("raftmesh_agent_wg_transfer_bytes{cluster=\"infra\",direction=\"rx\"}"),
        "{metrics}"
    );

    // Acceptance 4: the private key is 0600 and nowhere else.
    let mut store = mesh.etcdctl("apps", &["get", "", "--prefix"]).stdout;
    store.extend(mesh.etcdctl("infra", &["get", "", "--prefix"]).stdout);
    assert!(!store.is_empty());
    for a in mesh.agents.values() {
        let file = a.state_dir.join("wireguard.key");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        let private = std::fs::read_to_string(&file).unwrap().trim().to_owned();
        let raw = wireguard_key_bytes(&private);
        let metrics = mesh.metrics(&a.cluster, &a.node);
        let mut logs = std::fs::read(&a.log).unwrap();
        logs.extend(std::fs::read(a.state_dir.join("boringtun.log")).unwrap_or_default());
        for (what, haystack) in [
            ("log", logs.as_slice()),
            ("metrics", metrics.as_bytes()),
            ("store", store.as_slice()),
        ] {
            assert!(
                !contains(haystack, private.as_bytes()) && !contains(haystack, &raw),
                "{}/{}'s private key appears in the {what}",
                a.cluster,
                a.node
            );
        }
        // The public key is published (a check that the search above can find a key).
        let public = mesh.published_key("apps", &a.cluster, &a.node).unwrap();
        assert!(contains(&store, public.as_bytes()));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A base64 key's 32 bytes (decoded here so the test does not share the agent's decoder).
fn wireguard_key_bytes(base64: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in base64.bytes().take_while(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    assert_eq!(out.len(), 32);
    out
}
