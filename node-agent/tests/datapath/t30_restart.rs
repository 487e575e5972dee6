//! Acceptance 4: kill -9 and restart of the agent while a client connects to a VIP in a loop:
//! no connection fails, and a change made while the agent was down is applied after.

use std::time::Duration;

use lab::process::Process;

use crate::support::*;

fn patience() -> Duration {
    Duration::from_secs(30)
}

fn lines_in(path: &std::path::Path) -> Vec<serde_json::Value> {
    parse_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

#[test]
fn agent_restart_drops_no_connection_and_applies_what_changed_meanwhile() {
    restart("tcx");
}

/// The same with legacy tc filters: the restarted agent adopts them as they are (the same
/// programs stay attached: no gap in policy either).
#[test]
fn agent_restart_drops_no_connection_and_applies_what_changed_meanwhile_in_tc_mode() {
    restart("tc");
}

fn restart(mode: &'static str) {
    let mut node = Node::new(&[
        ("client", "10.244.0.10"),
        ("b1", "10.244.1.11"),
        ("b2", "10.244.1.12"),
        ("b3", "10.244.1.13"),
    ]);
    node.serve(&["b1", "b2", "b3"]);
    let ip = |p: &str| node.pods[p].ip;
    let (b1, b2, b3) = (ip("b1"), ip("b2"), ip("b3"));
    node.policy_attach = mode;
    node.start_with_echo(&[b1, b2], vec![]);
    let attached = |node: &Node| -> Vec<String> {
        if mode == "tc" {
            node.attached_programs()
        } else {
            let mut ids: Vec<String> = std::fs::read_dir(node.pins.0.links())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("tc-"))
                .map(|e| {
                    let out = std::process::Command::new("bpftool")
                        .args(["-j", "link", "show", "pinned"])
                        .arg(e.path())
                        .output()
                        .expect("bpftool");
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                    format!("{} {}", e.file_name().to_string_lossy(), v["id"])
                })
                .collect();
            ids.sort();
            ids
        }
    };
    let before_restart = eventually(
        "policy programs on the 4 pod interfaces",
        patience(),
        || {
            let a = attached(&node);
            (a.len() == 8).then_some(a)
        },
    );

    let out = node.log("client-loop");
    let stop = node.dir.path().join("stop");
    let mut cmd = node.probe_command(
        "client",
        &[
            "--tcp",
            "10.96.0.10:80",
            "--interval-ms",
            "5",
            "--timeout-ms",
            "3000",
            "--until",
        ],
    );
    cmd.arg(&stop);
    let mut client = Process::spawn(cmd, Some(&out)).expect("client loop");
    let at_least = |n: usize| {
        eventually(&format!("{n} attempts"), patience(), || {
            let l = lines_in(&out);
            (l.len() >= n).then_some(l.len())
        })
    };
    let before = at_least(20);

    node.agent.as_mut().expect("agent").kill();
    // While the agent is down: b3 joins (its slice entry and its identity, as the publisher
    // writes them), and connections keep working on the old maps.
    node.write(vec![
        slice(CLUSTER, "echo-a", &[(b1, true), (b2, true), (b3, true)]),
        ipcache(CLUSTER, b3, 1 << 16 | 903),
    ]);
    let down = at_least(before + 50);
    assert_eq!(
        node.tables().expect("maps").backends(),
        4,
        "nothing programs while down"
    );

    assert_eq!(
        attached(&node),
        before_restart,
        "attachments while the agent is down"
    );

    node.start_agent();
    node.wait_maps("b3 programmed after the restart", |t| {
        t.services.values().all(|b| b.iter().any(|b| b.ip == b3))
    });
    eventually(
        "the restarted agent's first interface scan",
        patience(),
        || (metric(&node.metrics()?, "raftmesh_agent_pod_interfaces")? >= 4.0).then_some(()),
    );
    assert_eq!(
        attached(&node),
        before_restart,
        "the restarted agent adopted the attached programs as they were"
    );
    at_least(down + 150);
    std::fs::write(&stop, "").expect("stop file");
    let status = client.wait().expect("client exit");

    let lines = lines_in(&out);
    let failed: Vec<_> = lines.iter().filter(|l| l["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        lines.len()
    );
    assert!(status.success());
    assert!(
        lines.iter().any(|l| l["reply"] == "b3"),
        "b3 got no connection"
    );
    let log = std::fs::read_to_string(node.log("agent")).expect("agent log");
    assert!(
        log.contains(r#"adopted=["lb_connect4", "lb_sendmsg4", "lb_recvmsg4", "lb_getpeername4"] attached=[]"#),
        "the restarted agent adopted the pinned links: {log}"
    );
}
