//! Acceptance 5: `node-agent maps -o json` shows the programmed state; `--uninstall` leaves no
//! pin, link or map (checked with bpftool).

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn bpftool_id(kind: &str, pin: &std::path::Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", kind, "show", "pinned"])
        .arg(pin)
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("bpftool {kind} show pinned {}: {out:?}", pin.display()));
    v["id"].as_u64().expect("id")
}

fn exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("bpftool")
        .status
        .success()
}

#[test]
fn maps_shows_the_state_and_uninstall_leaves_nothing() {
    maps_and_uninstall("tcx");
}

/// The same with legacy tc filters: `--uninstall` removes our filters from every interface
/// (checked with iproute2's `tc`), and only ours.
#[test]
fn maps_shows_the_state_and_uninstall_leaves_nothing_in_tc_mode() {
    maps_and_uninstall("tc");
}

fn maps_and_uninstall(mode: &'static str) {
    let mut node = Node::new(&[("b1", "10.244.1.11"), ("b2", "10.244.1.12")]);
    let ip = |p: &str| node.pods[p].ip;
    let (b1, b2) = (ip("b1"), ip("b2"));
    node.policy_attach = mode;
    node.start_with_echo(
        &[b1, b2],
        vec![
            identity(CLUSTER, 1 << 16 | 300, &["app=echo"]),
            ipcache(CLUSTER, b1, 1 << 16 | 300),
        ],
    );
    // b1's entry, and b2's as the publisher gives every pod one.
    node.wait_maps("programmed", |t| t.ipcache.len() == 2);
    let modes = eventually(
        "policy programs on both pod interfaces",
        Duration::from_secs(10),
        || {
            let a = node.attachments();
            (a.len() == 2).then_some(a)
        },
    );
    assert!(modes.values().all(|m| m == mode), "{modes:?}");
    // Someone else's filter on a pod interface (as a CNI would have): uninstall keeps it.
    let foreign = |node: &Node| node.tc_filters("b1", "ingress").contains("pref 7 u32");
    if mode == "tc" {
        let out = node
            .ns
            .command("tc")
            .args([
                "filter",
                "add",
                "dev",
                &node.host_ifs["b1"],
                "ingress",
                "pref",
                "7",
            ])
            .args([
                "protocol",
                "ip",
                "u32",
                "match",
                "ip",
                "dst",
                "192.0.2.1/32",
                "classid",
                "ffff:1",
            ])
            .output()
            .expect("tc filter add");
        assert!(out.status.success(), "{out:?}");
        assert!(foreign(&node));
    }

    let bin = env!("CARGO_BIN_EXE_node-agent");
    let out = node
        .ns
        .command(bin)
        .args(["maps", "-o", "json", "--bpffs"])
        .arg(node.pins.0.root())
        .output()
        .expect("node-agent maps");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        v["policyAttach"]["modes"],
        format!("{mode} (2 interfaces)"),
        "{}",
        v["policyAttach"]
    );
    let services = v["services"].as_array().expect("services");
    let tcp = services
        .iter()
        .find(|s| s["frontend"] == "10.96.0.10:80" && s["protocol"] == "TCP")
        .expect("the TCP frontend");
    let mut backends: Vec<&str> = tcp["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["address"].as_str().expect("address"))
        .collect();
    backends.sort();
    assert_eq!(backends, ["10.244.1.11:8080", "10.244.1.12:8080"]);
    assert_eq!(
        tcp["backends"][0]["flags"],
        serde_json::json!(["ready", "local"])
    );
    assert!(
        services
            .iter()
            .any(|s| s["frontend"] == "10.96.0.10:53" && s["protocol"] == "UDP")
    );
    assert_eq!(v["ipcache"][0]["prefix"], "10.244.1.11/32");
    assert_eq!(v["ipcache"][0]["identity"], 1 << 16 | 300);
    let table = node
        .ns
        .command(bin)
        .args(["maps", "--bpffs"])
        .arg(node.pins.0.root())
        .output()
        .expect("node-agent maps");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("10.96.0.10:80"), "{table}");
    assert!(
        table.starts_with(&format!("POLICY ATTACH: {mode} (2 interfaces)")),
        "{table}"
    );

    // What exists before, by id, as the kernel (bpftool) sees it.
    let pins = &node.pins.0;
    let maps: Vec<u64> = ["lb_services", "lb_backends", "ipcache", "pol_rules"]
        .iter()
        .map(|m| bpftool_id("map", &pins.map(m)))
        .collect();
    let mut links = vec![bpftool_id("link", &pins.link("lb_connect4"))];
    for e in std::fs::read_dir(pins.links()).expect("links").flatten() {
        if e.file_name().to_string_lossy().starts_with("tc-") {
            links.push(bpftool_id("link", &e.path()));
        }
    }
    assert!(maps.iter().chain(&links).all(|id| *id > 0));

    assert!(
        node.agent.as_mut().expect("agent").terminate(),
        "agent exits 0 on SIGTERM"
    );
    let out = node
        .ns
        .command(bin)
        .args(["--uninstall", "--wg-backend", "none", "--bpffs"])
        .arg(pins.root())
        .output()
        .expect("node-agent --uninstall");
    assert!(out.status.success(), "{out:?}");
    for pod in ["b1", "b2"] {
        for direction in ["ingress", "egress"] {
            let left = node.tc_filters(pod, direction);
            assert!(!left.contains("pol_"), "{pod} {direction}: {left}");
        }
    }
    if mode == "tc" {
        assert!(foreign(&node), "uninstall removed another's filter");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("removed the policy tc filters"),
            "{out:?}"
        );
    }
    assert!(!pins.root().exists(), "pin directory left behind");
    eventually("maps and links freed", Duration::from_secs(10), || {
        (!maps.iter().any(|id| exists("map", *id)) && !links.iter().any(|id| exists("link", *id)))
            .then_some(())
    });
    let cg = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(node.cgroup.path())
        .output()
        .expect("bpftool cgroup show");
    assert!(
        !String::from_utf8_lossy(&cg.stdout).contains("lb_"),
        "programs still attached: {cg:?}"
    );
}

/// A bpffs mounted at a scratch directory, unmounted on drop.
struct ScratchBpffs(tempfile::TempDir);

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_bpffs_mount_point_is_refused_as_the_pin_directory_and_never_removed() {
    let node = Node::new(&[]);
    // The mount point itself as --bpffs: refused at start, exit 64, nothing made.
    let out = node
        .ns
        .command(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--node", "n1", "--cluster", CLUSTER])
        .args([
            "--endpoints",
            "http://127.0.0.2:2379",
            "--insecure-plaintext",
        ])
        .arg("--cgroup-root")
        .arg(node.cgroup.path())
        .args(["--bpffs", "/sys/fs/bpf", "--wg-backend", "none"])
        .arg("--state-dir")
        .arg(node.dir.path().join("agent"))
        .output()
        .expect("node-agent");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--bpffs: /sys/fs/bpf is a mount point")
            && stderr.contains("/sys/fs/bpf/raftmesh/n1"),
        "{stderr}"
    );
    // --uninstall on a bpffs mount holding another tool's pin (and, from an old agent given
    // the mount point, ours): ours go, theirs and the mount stay.
    let mount = ScratchBpffs(tempfile::tempdir().expect("tempdir"));
    let dir = mount.0.path();
    lab::run("mount", &["-t", "bpf", "bpf", dir.to_str().unwrap()]).expect("mount bpffs");
    // A map pinned at `path` under the name `name`, as bpftool makes one.
    let pin_map = |path: &std::path::Path, name: &str| {
        let args = [
            "map",
            "create",
            path.to_str().unwrap(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "8",
            "name",
            name,
        ];
        lab::run("bpftool", &args).expect("bpftool map create");
    };
    let theirs = dir.join("theirs");
    pin_map(&theirs, "theirs");
    std::fs::create_dir(dir.join("maps")).unwrap();
    let ours = dir.join("maps/ipcache");
    pin_map(&ours, "ipcache");
    let out = node
        .ns
        .command(env!("CARGO_BIN_EXE_node-agent"))
        .args(["--uninstall", "--wg-backend", "none", "--bpffs"])
        .arg(dir)
        .output()
        .expect("node-agent --uninstall");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !ours.exists() && !dir.join("maps").exists(),
        "our pin stayed"
    );
    assert!(theirs.exists(), "another tool's pin was removed");
    assert!(dir.exists(), "the mount point was removed");
}
