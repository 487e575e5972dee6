//! mesh-echo on loopback: the workload answers TCP and UDP with its name, and the probe
//! reports the reply and the peer address it saw (unprivileged; also builds the binary the
//! privileged tests and the lab run).

use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use lab::process::Process;
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_mesh-echo");

/// A port free for both TCP and UDP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn probe(args: &[&str]) -> (bool, Vec<Value>) {
    let out = Command::new(ECHO).arg("probe").args(args).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.success(), lines)
}

#[test]
fn the_workload_answers_with_its_name_and_the_probe_reports_the_peer() {
    let port = free_port();
    let p = port.to_string();
    let mut serve = Command::new(ECHO);
    serve.args(["serve", "--name", "apps/echo-1", "--tcp", &p, "--udp", &p]);
    let _server = Process::spawn(serve, None).unwrap();
    let target = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe(&["--tcp", &target]).0 {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(50));
    }

    for mode in ["--tcp", "--udp", "--udp-connected"] {
        let (ok, lines) = probe(&[mode, &target, "--count", "3"]);
        assert!(ok, "{mode}: {lines:?}");
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert_eq!(l["reply"], "apps/echo-1", "{mode}: {l}");
            assert_eq!(l["peer"], target, "{mode}: {l}");
        }
    }
    let (ok, lines) = probe(&[
        "--tcp",
        &target,
        "--count",
        "20",
        "--connect-only",
        "--summary",
    ]);
    assert!(ok);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["attempts"], 20);
    assert_eq!(lines[0]["failures"], 0);

    // Nothing listens on the next port: the probe says so and exits 1.
    let closed = format!("127.0.0.1:{}", free_port());
    let (ok, lines) = probe(&["--tcp", &closed, "--timeout-ms", "500"]);
    assert!(!ok);
    assert_eq!(lines[0]["ok"], false);
    assert!(
        lines[0]["error"].as_str().unwrap().contains("refused"),
        "{lines:?}"
    );
}

#[test]
fn bad_usage_exits_64() {
    let out = Command::new(ECHO)
        .args(["probe", "--tcp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(ECHO).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
