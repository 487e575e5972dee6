//! `--wg-backend kernel` and `auto` find out whether the kernel has WireGuard by creating the
//! interface (the kernel loads a module on demand), never by looking for the module: `kernel`
//! exits 64 with the kernel's error where it refuses; `auto` falls back to userspace and says
//! so in its log and metrics. Both are judged against what the kernel does with iproute2.

use std::path::PathBuf;
use std::time::Duration;

use lab::cgroup::Cgroup;
use lab::netns::Netns;
use lab::process::Process;

use crate::support::*;

/// A namespace, cgroup, pin directory and state directory for one agent that never gets a
/// store (its endpoint refuses), removed on drop.
struct Scratch {
    ns: Netns,
    cgroup: Cgroup,
    pins: PathBuf,
    dir: tempfile::TempDir,
    interface: String,
}

impl Scratch {
    fn new() -> Scratch {
        lab::ensure_bpffs().expect("bpffs");
        let id = lab::unique("wb");
        Scratch {
            ns: Netns::new(&format!("{id}-n")).expect("netns"),
            cgroup: Cgroup::new(&lab::cgroup2_root().expect("cgroup2"), &id).expect("cgroup"),
            pins: PathBuf::from("/sys/fs/bpf").join(&id),
            dir: lab::workdir(&id).expect("dir"),
            interface: format!("{id}w"),
        }
    }

    fn agent(&self, backend: &str) -> std::process::Command {
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_node-agent"));
        cmd.args(["--node", "n1", "--cluster", "apps"])
            .args(["--endpoints", "http://127.0.0.1:1", "--insecure-plaintext"])
            .arg("--cgroup-root")
            .arg(self.cgroup.path())
            .arg("--bpffs")
            .arg(&self.pins)
            .arg("--state-dir")
            .arg(self.dir.path().join("agent"))
            .args(["--listen-metrics", "127.0.0.1:9964"])
            .args(["--wg-backend", backend, "--wg-interface", &self.interface])
            .arg("--wg-userspace-program")
            .arg(lab::binaries::find_boringtun().expect("boringtun-cli"));
        cmd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command(env!("CARGO_BIN_EXE_node-agent"))
            .args(["--uninstall", "--wg-backend", "none", "--bpffs"])
            .arg(&self.pins)
            .output();
        let _ = self.ns.ip(&["link", "del", &self.interface]);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.interface));
    }
}

/// What the kernel says to a WireGuard link, through iproute2: `None` if it makes one.
fn kernel_refusal(ns: &Netns) -> Option<String> {
    let out = ns
        .command("ip")
        .args(["link", "add", "probe0", "type", "wireguard"])
        .output()
        .expect("ip");
    if out.status.success() {
        let _ = ns.ip(&["link", "del", "probe0"]);
        None
    } else {
        Some(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn kernel_backend_exits_64_with_the_kernel_s_error_where_the_kernel_has_no_wireguard() {
    let s = Scratch::new();
    let refused = kernel_refusal(&s.ns);
    let mut cmd = s.agent("kernel");
    match refused {
        Some(ip_says) => {
            let out = cmd.output().expect("node-agent");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{stderr}");
            // iproute2 prints the kernel's extended message ("Unknown device type"); the
            // agent, the errno it comes with.
            eprintln!("ip: {ip_says}\nnode-agent: {stderr}");
            assert!(
                stderr.contains("creating the WireGuard interface")
                    && stderr.contains("Operation not supported (os error 95)"),
                "{stderr}"
            );
            assert!(
                s.ns.ip(&["link", "show", &s.interface]).is_err(),
                "an interface was left"
            );
        }
        None => {
            // A kernel with WireGuard (built in, or a module loaded on demand): the agent
            // makes a kernel interface, no module check stands in the way.
            let _agent = Process::spawn(cmd, Some(&s.dir.path().join("agent.log"))).expect("agent");
            eventually("a kernel WireGuard interface", PATIENCE, || {
                s.ns.ip(&["-d", "link", "show", &s.interface])
                    .ok()
                    .filter(|l| l.contains("wireguard"))
            });
        }
    }
}

#[test]
fn auto_falls_back_to_userspace_and_says_so() {
    let s = Scratch::new();
    let refused = kernel_refusal(&s.ns);
    let log = s.dir.path().join("agent.log");
    let _agent = Process::spawn(s.agent("auto"), Some(&log)).expect("agent");
    let metrics = |ns: &Netns| {
        let out = ns
            .command("curl")
            .args(["-sf", "http://127.0.0.1:9964/metrics"])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = if refused.is_some() {
        r#"raftmesh_agent_wg_backend{backend="userspace",fallback="true"} 1"#
    } else {
        r#"raftmesh_agent_wg_backend{backend="kernel",fallback="false"} 1"#
    };
    eventually(want, Duration::from_secs(30), || {
        metrics(&s.ns).contains(want).then_some(())
    });
    let text = std::fs::read_to_string(&log).expect("log");
    if refused.is_some() {
        assert!(
            text.contains("the kernel refused a WireGuard interface: using userspace")
                && text.contains("Operation not supported"),
            "{text}"
        );
        // boringtun serves the interface: its UAPI socket answers.
        assert!(
            std::os::unix::net::UnixStream::connect(format!(
                "/var/run/wireguard/{}.sock",
                s.interface
            ))
            .is_ok(),
            "no userspace interface"
        );
    }
}
