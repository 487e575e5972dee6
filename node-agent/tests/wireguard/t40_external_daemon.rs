//! boringtun run beside the agent (`--wg-userspace-daemon external`, the chart's `wireguard`
//! container): killing the agent leaves the tunnels carrying traffic — a ping every 100 ms
//! across the clusters sees no gap longer than a second — and a daemon that restarts (the
//! kubelet restarting its container) is configured again by the agent.

use std::time::Duration;

use crate::support::*;

/// The largest gap between consecutive answered pings of `ping -D` output, in seconds, and
/// how many were answered.
fn gaps(output: &str) -> (f64, usize) {
    let stamps: Vec<f64> = output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let largest = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    (largest, stamps.len())
}

#[test]
fn the_tunnels_outlive_the_agent_and_a_restarted_daemon_is_configured_again() {
    let mut mesh = mesh();
    mesh.external_wireguard = true;
    mesh.start_agents();
    mesh.wait_full_mesh();
    let infra_pod = mesh.pod_ip("infra", "node-1");
    mesh.wait_ping("apps", "node-1", infra_pod);
    // The agent did not start the daemon: it is the mesh's process, and the agent says so.
    let log = std::fs::read_to_string(&mesh.agent("apps", "node-1").log).unwrap();
    assert!(log.contains("WireGuard interface ready"), "{log}");

    // 6 s of pings every 100 ms from apps/node-1's pod to infra's, while both ends' agents are
    // killed and, 3 s later, started again.
    let pinger = mesh.node("apps", "node-1").pods[0]
        .ns
        .command("ping")
        .args([
            "-D",
            "-i",
            "0.1",
            "-W",
            "1",
            "-w",
            "6",
            &infra_pod.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    mesh.kill_agent("apps", "node-1");
    mesh.kill_agent("infra", "node-1");
    std::thread::sleep(Duration::from_secs(3));
    mesh.start_agent("apps", "node-1");
    mesh.start_agent("infra", "node-1");
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (largest, answered) = gaps(&text);
    assert!(answered >= 50, "{answered} answers in 6 s: {text}");
    assert!(
        largest <= 1.0,
        "a gap of {largest:.2} s in the pings: {text}"
    );

    // The daemon dies and comes back empty (no key, port or peers): the agent notices at its
    // next tick and configures it again.
    mesh.kill_wireguard_daemon("apps", "node-1");
    mesh.start_wireguard_daemon("apps", "node-1");
    mesh.wait_ping("apps", "node-1", infra_pod);
    let log = std::fs::read_to_string(&mesh.agent("apps", "node-1").log).unwrap();
    assert!(
        log.contains("setting the interface up again")
            || log.contains("the interface's peers changed under us"),
        "{log}"
    );
}
