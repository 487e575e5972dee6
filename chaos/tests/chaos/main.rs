//! The short, fixed-seed version of every chaos scenario (root: the lab). Each runs
//! `mesh-chaos run` as a user would, with faults of a few seconds, and fails on any violation
//! with the scenario's report. `scripts/chaos` runs the full versions.
//!
//! One run must fail: with an API server that loses an acknowledged write (built with the
//! `fault-injection` feature, which `scripts/test` does), the checkers must say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a short run of `scenario` left: how `mesh-chaos` exited, its JSON report, and the
/// markdown report (for failure messages).
fn short_run(
    scenario: &str,
    apiserver: Option<&PathBuf>,
    fault: Option<&str>,
    agent_args: &[&str],
) -> (Output, serde_json::Value, String) {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("the chaos scenarios need root (the lab); CI runs as root");
    }
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-chaos"));
    command
        .args([
            "run",
            "--scenario",
            scenario,
            "--seed",
            "7",
            "--duration",
            // Long enough for the agents to call infra stale (the mirror's 3 s of silence,
            // their tick) and still see some connections before the heal.
            if scenario == "long-disconnect" {
                "9s"
            } else {
                "4s"
            },
            "--settle",
            "1s",
            "--converge-within",
            "45s",
            "--out",
        ])
        .arg(out.path())
        .env_remove("RAFTMESH_TEST_FAULT");
    if let Some(a) = apiserver {
        command.arg("--apiserver").arg(a);
    }
    if let Some(f) = fault {
        command.env("RAFTMESH_TEST_FAULT", f);
    }
    for a in agent_args {
        command.arg(format!("--agent-arg={a}"));
    }
    let run = command.output().unwrap();
    let report = std::fs::read_to_string(out.path().join(format!("{scenario}.md")))
        .unwrap_or_else(|e| format!("(no report: {e})"));
    let json = std::fs::read_to_string(out.path().join(format!("{scenario}.json")))
        .map(|j| serde_json::from_str(&j).unwrap())
        .unwrap_or_else(|e| {
            panic!(
                "{scenario}: no JSON report ({e}); exit {:?}\nstderr:\n{}",
                run.status.code(),
                String::from_utf8_lossy(&run.stderr)
            )
        });
    (run, json, report)
}

fn run_short(scenario: &str) {
    let (run, json, report) = short_run(scenario, None, None, &[]);
    assert!(
        run.status.success(),
        "{scenario}: exit {:?}\n{report}\nstderr:\n{}",
        run.status.code(),
        String::from_utf8_lossy(&run.stderr)
    );
    // The run did something: operations were answered in both clusters and a fault was made.
    for cluster in ["apps", "infra"] {
        let answered = json["operations"][cluster]["kv_answered"].as_u64().unwrap();
        assert!(
            answered > 20,
            "{scenario}: only {answered} KV answers in {cluster}\n{report}"
        );
    }
    // …and the scenario's own faults were made.
    let faults: Vec<&str> = json["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["what"].as_str().unwrap())
        .collect();
    for want in expected_faults(scenario) {
        assert!(
            faults.iter().any(|f| f.starts_with(want)),
            "{scenario}: no {want:?} among the faults {faults:?}\n{report}"
        );
    }
    assert!(json["convergence_s"].is_number(), "{report}");
    if matches!(scenario, "partition" | "node-down") {
        // The failover was measured: connections were made after its window (none failed,
        // or the run would have exited 1).
        let f = &json["availability"]["apps"]["failover"];
        assert!(f["after"].as_u64().unwrap_or(0) > 0, "{report}");
    }
    if scenario == "hostile-remote" {
        // The attack ran: hostile rewrote its record, and apps paused it.
        let h = &json["availability"]["apps"]["hostile"];
        assert!(h["rewrites"].as_u64().unwrap_or(0) > 20, "{report}");
        assert_eq!(h["paused"], true, "{report}");
    }
}

/// The faults each scenario must have made (prefixes of the report's lines).
fn expected_faults(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "partition" | "long-disconnect" => &["partition apps infra", "heal apps infra"],
        "partition-leader-kill" => &[
            "partition apps infra",
            "kill -9 apps/",
            "kill -9 infra/",
            "start apps/",
            "start infra/",
            "heal apps infra",
        ],
        "isolate-member" => &["isolate apps/", "rejoin apps/"],
        "remote-compacted" => &[
            "partition apps infra",
            "compact apps at revision",
            "compact infra at revision",
            "heal apps infra",
        ],
        "agent-kill" => &["kill -9 apps/node-1", "start apps/node-1"],
        "node-down" => &["unplug infra/node-1", "plug infra/node-1 back in"],
        "degraded" => &["degrade apps infra", "heal apps infra"],
        "hostile-remote" => &["hostile: claims", "hostile stops"],
        other => panic!("no expected faults for {other}"),
    }
}

#[test]
fn partition() {
    run_short("partition");
}

#[test]
fn partition_leader_kill() {
    run_short("partition-leader-kill");
}

#[test]
fn isolate_member() {
    run_short("isolate-member");
}

#[test]
fn remote_compacted() {
    run_short("remote-compacted");
}

#[test]
fn long_disconnect() {
    run_short("long-disconnect");
}

#[test]
fn node_down() {
    run_short("node-down");
}

#[test]
fn agent_kill() {
    run_short("agent-kill");
}

#[test]
fn degraded() {
    run_short("degraded");
}

#[test]
fn hostile_remote() {
    run_short("hostile-remote");
}

/// The suite can fail: apps' and infra's API servers each acknowledge their 20th put under the
/// partition scenario's prefix without writing it, and the checkers must report it (a
/// watcher never gets the write, and the key does not keep it), while the run was otherwise
/// judged (active, no broken workload).
#[test]
fn a_lost_acknowledged_write_is_reported() {
    let faulty = testkit::localcluster::flavor::fault_injection_server(Path::new(env!(
        "CARGO_BIN_EXE_mesh-chaos"
    )));
    let (run, json, report) = short_run(
        "partition",
        Some(&faulty),
        Some("lose-acked-put:chaos/partition/:20"),
        &[],
    );
    assert_eq!(run.status.code(), Some(1), "{report}");
    let count = |checker: &str| json["violations"][checker].as_array().map_or(0, Vec::len);
    let caught = count("watch") + count("lost-writes") + count("linearizable");
    assert!(caught > 0, "the lost write went unnoticed\n{report}");
    assert_eq!(count("inactive") + count("workload"), 0, "{report}");
}

/// The failover checker can fail: with the agents' reachability probes off, apps' connections
/// to infra's backends keep failing through the partition (until --remote-stale-after, 10 s,
/// longer than the short fault), and the run must report them, otherwise judged (active, no
/// broken workload).
#[test]
fn failover_without_probes_is_reported() {
    let (run, json, report) = short_run("partition", None, None, &["--reachability-port=0"]);
    assert_eq!(run.status.code(), Some(1), "{report}");
    let count = |checker: &str| json["violations"][checker].as_array().map_or(0, Vec::len);
    assert!(
        count("failover") > 0,
        "the failed connections went unnoticed\n{report}"
    );
    let f = &json["availability"]["apps"]["failover"];
    assert!(f["failed_after"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(count("inactive") + count("workload"), 0, "{report}");
}
