//! Acceptance 2 and 3: a restarted agent keeps its key; a wiped state directory means a new
//! key every peer follows; a node removed from its cluster's records leaves every peer; a
//! remote whose API server is stopped keeps its peers.

use crate::support::*;

#[test]
fn keys_survive_restarts_and_peers_follow_the_records() {
    let mut mesh = mesh();
    // Short, so the frozen remote below is surely stale while it is checked.
    mesh.remote_stale_after = Some(std::time::Duration::from_secs(2));
    mesh.start_agents();
    mesh.wait_full_mesh();
    let infra1 = mesh.pod_ip("infra", "node-1");
    let infra2 = mesh.pod_ip("infra", "node-2");
    mesh.wait_ping("apps", "node-1", infra1);

    // A restart keeps the key, and traffic flows.
    let before = mesh.published_key("apps", "apps", "node-1").unwrap();
    mesh.kill_agent("apps", "node-1");
    mesh.start_agent("apps", "node-1");
    eventually("the restarted agent's interface", PATIENCE, || {
        (mesh.wg_peers("apps", "node-1").len() == 2).then_some(())
    });
    assert_eq!(
        mesh.published_key("apps", "apps", "node-1").unwrap(),
        before
    );
    assert_eq!(
        mesh.published_key("infra", "apps", "node-1").unwrap(),
        before
    );
    mesh.wait_ping("apps", "node-1", infra1);

    // A wiped state directory: a new key, published, and every peer follows.
    let old = mesh.published_key("apps", "infra", "node-1").unwrap();
    mesh.kill_agent("infra", "node-1");
    std::fs::remove_dir_all(&mesh.agent("infra", "node-1").state_dir).unwrap();
    mesh.start_agent("infra", "node-1");
    let new = eventually("a new key for infra/node-1", PATIENCE, || {
        mesh.published_key("apps", "infra", "node-1")
            .filter(|k| *k != old)
    });
    for node in ["node-1", "node-2"] {
        eventually(&format!("apps/{node} on the new key"), PATIENCE, || {
            let peers = mesh.wg_peers("apps", node);
            (peers.contains_key(&new) && !peers.contains_key(&old)).then_some(())
        });
    }
    mesh.wait_ping("apps", "node-2", infra1);
    mesh.wait_ping("infra", "node-1", mesh.pod_ip("apps", "node-1"));

    // infra/node-2 leaves its cluster's records: gone from every apps peer list.
    let gone = mesh.published_key("apps", "infra", "node-2").unwrap();
    mesh.write_nodes("infra", &["node-1"]);
    for node in ["node-1", "node-2"] {
        eventually(
            &format!("apps/{node} without infra/node-2"),
            PATIENCE,
            || {
                let peers = mesh.wg_peers("apps", node);
                (!peers.contains_key(&gone) && peers.len() == 1).then_some(())
            },
        );
    }
    assert!(!mesh.ping("apps", "node-1", infra2));

    // infra's API server stops: apps keeps infra's peers (its mirror keeps the records),
    // past the agents' staleness, and traffic still flows.
    mesh.kill_apiserver("infra");
    let keys_before: Vec<String> = mesh.wg_peers("apps", "node-1").into_keys().collect();
    for node in ["node-1", "node-2"] {
        eventually(&format!("apps/{node} calls infra stale"), PATIENCE, || {
            let m = mesh.metrics("apps", node);
            m.lines()
                .any(|l| l == "raftmesh_agent_remote_stale{cluster=\"infra\"} 1")
                .then_some(())
        });
    }
    for node in ["node-1", "node-2"] {
        let keys: Vec<String> = mesh.wg_peers("apps", node).into_keys().collect();
        assert_eq!(
            keys, keys_before,
            "apps/{node} changed its peers for a frozen remote"
        );
    }
    mesh.wait_ping("apps", "node-1", infra1);
}
